"""A real `manage.py serve` process on the test database, a raw HTTP client that streams huge bodies,
and a sampler of the server's RSS (the process's own figure and its upload helper's, psutil)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, *, log_path: Path, database_url: str, redis_url: str, extra_env: dict | None = None):
        self.port = free_port()
        self.log_path = log_path
        env = {
            **{key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"},
            "DJANGO_SETTINGS_MODULE": "rftweb.settings.test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        command = [sys.executable, "-m", "django", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start:\n{log_path.read_text()}")

    def rss(self) -> int:
        return tree_rss(psutil.Process(self.process.pid))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def tree_rss(process: psutil.Process) -> int:
    """The RSS of a process and of every process under it (the server's upload helper does the imports)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss:
    """Samples the RSS of a process and its children every few milliseconds while the block runs; .peak
    is the largest."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = tree_rss(self.process)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.process))
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.process))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent_bytes: int
    seconds: float


def stream_request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    body_parts,
    content_length: int | None,
    timeout_s: float = 300.0,
) -> Answer:
    """Send a request whose body comes from an iterable of byte strings, the way a client streams a
    file: Content-Length framing if given, else chunked. Stops sending as soon as the server answers
    (a server that refuses from the headers answers before the body is sent) and reads the answer."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(
        f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked"
    )
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    sock.setblocking(False)
    parts = iter(body_parts)
    pending = b""
    finished_body = False
    sent = 0
    received = b""
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        want_write = [sock] if not finished_body else []
        readable, writable, _ = select.select([sock], want_write, [], 1.0)
        if readable:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                break
            received += data
            if _complete(received):
                break
            continue
        if writable:
            if not pending:
                try:
                    part = next(parts)
                    pending = part if content_length is not None else b"%x\r\n%s\r\n" % (len(part), part)
                except StopIteration:
                    pending = b"" if content_length is not None else b"0\r\n\r\n"
                    finished_body = not pending
                    if finished_body:
                        continue
            try:
                count = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                finished_body = True  # the server closed: read what it answered
                continue
            except BlockingIOError:
                continue
            sent += count
            pending = pending[count:]
    sock.close()
    seconds = time.monotonic() - started
    if not received:
        raise AssertionError(f"no answer after sending {sent:,} bytes in {seconds:.1f} s")
    return _parse(received, sent, seconds)


def _complete(data: bytes) -> bool:
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def _parse(data: bytes, sent: int, seconds: float) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status=status, headers=headers, body=body, sent_bytes=sent, seconds=seconds)


def repeated(block: bytes, total: int):
    """`total` bytes made of `block` repeated (the last part cut to fit)."""
    left = total
    while left > 0:
        part = block if left >= len(block) else block[:left]
        left -= len(part)
        yield part


@contextmanager
def server_with_uploader(django_db_blocker, redis_url, log_dir: Path, *, username: str, extra_env=None):
    """A real server on the test database, and a user of it with an API token (`.token`); the user is
    deleted afterwards."""
    from experiments.services.api_tokens import create_token
    from tests.conftest import database_url_for_subprocesses
    from tests.factories import UserFactory

    with django_db_blocker.unblock():
        user = UserFactory(username=username)
        key = create_token(user=user, name=f"{username} token").key
        database_url = database_url_for_subprocesses()
    process = ServerProcess(
        log_path=log_dir / "server.log", database_url=database_url, redis_url=redis_url, extra_env=extra_env
    )
    process.token = key
    try:
        yield process
    finally:
        process.stop()
        with django_db_blocker.unblock():
            user.delete()
