"""Fixtures for the trainer's tests: the tiny local model (built once, cached), reporters, executors."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Without pytest-django (which puts the project root on sys.path), tests/ is on sys.path first and
# this very directory would shadow the `trainer` package as a namespace package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainer.interfaces import TrajectoryRecord  # noqa: E402

MODEL_CACHE = Path(os.environ.get("RFTWEB_TEST_MODEL_CACHE", ROOT / ".pytest_cache" / "rftweb-models"))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from trainer.tiny import build_tiny_model

    return build_tiny_model(MODEL_CACHE / "tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class RecordingReporter:
    """Keeps everything the trainer reports, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float], list[TrajectoryRecord]]] = []
        self.checkpoints: list[tuple[int, str]] = []
        self.logs: list[tuple[str, str]] = []

    def report_step(
        self, step: int, metrics: Mapping[str, float], trajectories: Sequence[TrajectoryRecord]
    ) -> None:
        self.steps.append((step, dict(metrics), list(trajectories)))

    def report_checkpoint(self, step: int, path: str, metrics: Mapping[str, float]) -> None:
        self.checkpoints.append((step, path))

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def metrics_at(self, step: int) -> dict[str, float]:
        return next(metrics for s, metrics, _ in self.steps if s == step)

    def trajectories_at(self, step: int, split: str = "train") -> list[TrajectoryRecord]:
        return [t for s, _, records in self.steps if s == step for t in records if t.split == split]


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def reporter_factory() -> type[RecordingReporter]:
    return RecordingReporter


@pytest.fixture
def toy_tool_server():
    """A real HTTP tool server on 127.0.0.1 speaking the agent-RFT wire format for the toy tool.

    Yields (base_url, received) where `received` lists (headers, body) of every call.
    """
    import json

    from trainer.toy import toy_tool_output

    received: list[tuple[dict[str, str], dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((dict(self.headers), body))
            name = self.path.rstrip("/").rsplit("/", 1)[-1]
            status, text = toy_tool_output(name=name, item=body.get("item", {}))
            payload = json.dumps({"type": "function_call_output", "call_id": body["call_id"], "output": text})
            encoded = payload.encode() if status < 400 else text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status < 400 else "text/plain")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # a whole step's calls arrive at once; the default backlog is 5
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread: on a shared 2-core machine, torch's spinning thread pool slows these
    small models down several-fold under load, and one thread is as fast when the machine is idle."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
