"""A real HTTP server on 127.0.0.1 whose behaviour each test scripts per path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterator[bytes] = b""
    headers: dict[str, str] | None = None
    content_type: str = "application/json"
    delay_s: float = 0.0


Handler = Callable[[ReceivedRequest], Reply]


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many concurrent connects must not hit the default backlog of 5
    daemon_threads = True


class ScriptedServer:
    """Records every request and answers with the handler registered for its path."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[ReceivedRequest] = []
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = ReceivedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    received_at=time.perf_counter(),
                )
                with server._lock:
                    server.requests.append(request)
                handler = server.routes.get(self.path.split("?")[0])
                reply = handler(request) if handler else Reply(status=404, body=b'{"error": "no route"}')
                if reply.delay_s:
                    server.stop_event.wait(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    for key, value in (reply.headers or {}).items():
                        self.send_header(key, value)
                    if isinstance(reply.body, bytes):
                        self.send_header("Content-Length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                    else:
                        # Streamed without a length: the body ends when the connection closes.
                        self.send_header("Connection", "close")
                        self.close_connection = True
                        self.end_headers()
                        for chunk in reply.body:
                            self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = _handle
            do_POST = _handle

        self.httpd = _Server(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/", *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
