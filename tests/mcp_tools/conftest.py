from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "mcp_test_server.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class McpServerProcess:
    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path

    def calls(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    """The SDK-built MCP server of tests/mcp_test_server.py, in its own process."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("mcp") / "calls.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), str(port), str(log_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the MCP test server did not start") from None
            time.sleep(0.1)
    yield McpServerProcess(f"http://127.0.0.1:{port}/mcp", log_path)
    process.terminate()
    process.wait(timeout=10)
