"""Server memory under large request bodies: uvicorn (`manage.py serve`, the server now) against Daphne
(the server before), the same ASGI app, the same requests, one after the other in this run.

For each server and each request, the server process's RSS is sampled every 10 ms while the body
streams in; printed: the answer, how much of the body the server took before answering, and the
RSS growth. Requests: 200 MB without credentials to POST /api/v1/datasets/ (Content-Length, then
chunked), 200 MB to the login page, 1 GB with a valid-looking but unknown token (chunked).

    .venv/bin/python bench/bench_request_bodies.py

Daphne is only the baseline here: if it is not installed (`pip install daphne`), its rows are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.hardening.server import PeakRss, free_port, repeated, stream_request  # noqa: E402

MB = 1024 * 1024
BLOCK = b"x" * MB

REQUESTS = [
    ("anonymous POST /api/v1/datasets/, 200 MB, Content-Length", "/api/v1/datasets/", {}, 200, False),
    ("anonymous POST /api/v1/datasets/, 200 MB, chunked", "/api/v1/datasets/", {}, 200, True),
    ("anonymous POST /accounts/login/, 200 MB, Content-Length", "/accounts/login/", {}, 200, False),
    (
        "unknown token POST /api/v1/datasets/, 200 MB, chunked",
        "/api/v1/datasets/",
        {"Authorization": "Token rft_unknown"},
        200,
        True,
    ),
]
# uvicorn only: Daphne took 12 GB for it in a first run (it holds the whole body in memory, several
# times over), too much for a shared machine.
LARGE = (
    "unknown token POST /api/v1/datasets/, 1 GB, chunked",
    "/api/v1/datasets/",
    {"Authorization": "Token rft_unknown"},
    1024,
    True,
)


ENV: dict[str, str] = {}


def start(command: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[2]} did not start")


def measure(name: str, command: list[str], port: int, requests: list[tuple]) -> list[tuple]:
    process = start(command, port)
    rows = []
    try:
        for label, path, headers, size_mb, chunked in requests:
            time.sleep(1)
            with PeakRss(process.pid) as peak:
                baseline = peak.peak
                try:
                    answer = stream_request(
                        port,
                        "POST",
                        path,
                        headers={"Content-Type": "multipart/form-data; boundary=b", **headers},
                        body_parts=repeated(BLOCK, size_mb * MB),
                        content_length=None if chunked else size_mb * MB,
                        timeout_s=300,
                    )
                    status, sent, seconds = answer.status, answer.sent_bytes, answer.seconds
                except AssertionError as error:
                    status, sent, seconds = f"none ({error})", 0, 0.0
            rows.append((name, label, status, sent / MB, seconds, baseline / MB, (peak.peak - baseline) / MB))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return rows


def main() -> None:
    from bench_live_latency import drop_database, scratch_database

    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"rftweb_bodies_{os.getpid()}"
    ENV.update(
        DJANGO_SETTINGS_MODULE="rftweb.settings.test",
        DATABASE_URL=scratch_database(admin_url, name),
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, **ENV},
        check=True,
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared: figures are noisy)"
    )
    rows = []
    try:
        port = free_port()
        uvicorn = [sys.executable, "-m", "django", "serve", "--host", "127.0.0.1", "--port", str(port)]
        rows += measure("uvicorn", uvicorn, port, [*REQUESTS, LARGE])
        if importlib.util.find_spec("daphne") is not None:
            port = free_port()
            daphne = [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "rftweb.asgi:application",
            ]
            rows += measure("daphne", daphne, port, REQUESTS)
        else:
            print("daphne is not installed: no baseline rows")
    finally:
        drop_database(admin_url, name)
    print(f"{'server':<9}{'request':<58}{'status':>7}{'taken MB':>10}{'s':>6}{'rss MB':>8}{'growth MB':>11}")
    for server, label, status, taken, seconds, base, growth in rows:
        print(f"{server:<9}{label:<58}{status!s:>7}{taken:>10.0f}{seconds:>6.1f}{base:>8.0f}{growth:>11.0f}")
    worst = {server: max(row[6] for row in rows if row[0] == server) for server in {row[0] for row in rows}}
    print(
        "request bodies: worst rss growth "
        + ", ".join(f"{server} {value:.0f} MB" for server, value in sorted(worst.items()))
    )


if __name__ == "__main__":
    main()
