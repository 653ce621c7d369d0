"""Fixtures for the grader pages and API: the real demo grader server and a local judge/recorder."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from experiments.demo_servers import DemoServer
from tests.factories import UserFactory


class RecordingGradeServer:
    """A real HTTP server on 127.0.0.1 that records each request. `/grade` answers {"score": 0.75};
    `/v1/chat/completions` answers like an OpenAI-compatible judge ("Score: 0.8"). Both echo the
    request headers in an extra field, as a careless server might."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                recorder.requests.append({"path": self.path, "headers": headers, "body": body})
                if self.path.endswith("/chat/completions"):
                    answer = {
                        "choices": [{"message": {"role": "assistant", "content": "Score: 0.8"}}],
                        "echo": headers,
                    }
                else:
                    answer = {"score": 0.75, "echo": headers}
                payload = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def grade_recorder() -> Iterator[RecordingGradeServer]:
    server = RecordingGradeServer()
    yield server
    server.close()


@pytest.fixture
def demo_server() -> Iterator[DemoServer]:
    with DemoServer() as server:
        yield server


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")
