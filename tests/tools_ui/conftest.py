"""Fixtures for the tool pages and API: the real demo server and a recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from experiments.demo_servers import DemoServer
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple"


class RecordingServer:
    """Records each request (headers and body) and answers {"output": <text>} chosen by the test.

    With `echo_headers` the output repeats every received header, as a careless server might: what
    rftweb shows must still not contain the secret values.
    """

    def __init__(self, *, echo_headers: bool = False) -> None:
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                recorder.requests.append({"headers": headers, "body": json.loads(body), "raw": body})
                output = json.dumps(headers) if echo_headers else "recorded"
                payload = json.dumps({"output": output}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/call"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    server = RecordingServer(echo_headers=True)
    yield server
    server.close()


@pytest.fixture
def demo_server() -> Iterator[DemoServer]:
    with DemoServer() as server:
        yield server


@pytest.fixture
def signed_demo_server() -> Iterator[DemoServer]:
    with DemoServer(signing_secret="whsec_demo_signing_secret_0042") as server:
        yield server


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")
