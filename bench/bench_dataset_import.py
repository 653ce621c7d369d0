"""Benchmark: upload-and-store of generated JSONL datasets (10,000 and 100,000 lines of ~1 KB).

For each database (SQLite, and PostgreSQL when it answers) and each size, a fresh worker process
(scratch database, migrated) runs `services.datasets.upload_dataset` on the file: copy + SHA-256,
then the streaming validation and the batched inserts in one transaction. It prints rows/s and the
peak memory: the process's peak RSS (VmHWM, which includes Django itself, shown next to the RSS
before the import) and, in a second import of the same file, the peak of Python allocations traced
by tracemalloc (tracing slows Python down, so rows/s come from the first, untraced import).
Rows per CPU-second of the importing process and the load average are printed too: on a shared
machine the wall-clock rate depends on what else runs (PostgreSQL's own CPU time is not counted).
"store-only" is the floor set by the database: the same lines written by the import's writer with
no parsing, checks or statistics.

    .venv/bin/python bench/bench_dataset_import.py [--sizes 10000 100000] [--no-postgres]

PostgreSQL: BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres); a scratch
database is created and dropped. Goal: >= 20,000 rows/s on both databases, and peak memory that does
not grow with the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = (
    "cart total price invoice checkout tax currency discount file module function rename refactor test "
    "repository search pattern return value line order product widget gadget bolt wire strip"
).split()
GREP_TOOL = {
    "type": "function",
    "function": {
        "name": "grep",
        "description": "Search every file of the repository for a regular expression.",
        "parameters": {
            "type": "object",
            "properties": {"pattern": {"type": "string", "description": "a regular expression"}},
            "required": ["pattern"],
            "additionalProperties": False,
        },
    },
}


def generate(path: Path, lines: int, *, seed: int = 0) -> int:
    """Write `lines` items of about 1 KB each; return the file size."""
    import orjson

    rng = random.Random(seed)
    with open(path, "wb") as out:
        for index in range(lines):
            words = " ".join(rng.choices(WORDS, k=55 + rng.randrange(30)))
            row = {
                "messages": [
                    {
                        "role": "system",
                        "content": "You are a coding agent. Use grep to find the files to edit.",
                    },
                    {"role": "user", "content": f"Task {index}: {words}?"},
                ],
                "tools": [GREP_TOOL],
                "reference_files": [
                    f"src/shop/module_{rng.randrange(50)}.py" for _ in range(1 + rng.randrange(4))
                ],
                "id": f"task-{index:06d}",
            }
            out.write(orjson.dumps(row) + b"\n")
    return path.stat().st_size


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(file_path: str, media_root: str) -> None:
    """One import (timed) and one traced import of the same file, in this fresh process."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rftweb.settings.test")
    import django

    django.setup()
    import tracemalloc

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from experiments.services.datasets import delete_dataset, upload_dataset

    settings.MEDIA_ROOT = media_root
    call_command("migrate", verbosity=0)
    owner, _ = get_user_model().objects.get_or_create(username="bench")
    rss_before_kb = _status_kb("VmRSS")

    with open(file_path, "rb") as stream:
        cpu_started = time.process_time()
        started = time.perf_counter()
        result = upload_dataset(owner=owner, file=stream, name="bench")
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    assert result.ok, result.dataset.errors[:3]
    rows = result.dataset.item_count
    peak_rss_kb = _status_kb("VmHWM")
    delete_dataset(dataset=result.dataset)

    tracemalloc.start()
    with open(file_path, "rb") as stream:
        traced = upload_dataset(owner=owner, file=stream, name="bench-traced")
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert traced.ok
    delete_dataset(dataset=traced.dataset)
    storage_seconds = _storage_only_seconds(file_path, owner)
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "load_average": os.getloadavg()[0],
                "rss_before_mb": rss_before_kb / 1024,
                "peak_rss_mb": peak_rss_kb / 1024,
                "tracemalloc_peak_mb": traced_peak / 1024 / 1024,
                "storage_only_rows_per_s": rows / storage_seconds,
            }
        )
    )


def _storage_only_seconds(file_path: str, owner) -> float:
    """The floor: the same lines stored by the import's writer (COPY / executemany) with no parsing,
    checking or statistics, committed (PostgreSQL checks the deferred foreign keys at commit)."""
    from django.db import transaction

    from experiments.models import Dataset
    from experiments.services.datasets import _ItemWriter

    dataset = Dataset.objects.create(owner=owner, name="storage-only")
    started = time.perf_counter()
    with transaction.atomic(), open(file_path, "rb") as stream, _ItemWriter() as writer:
        for index, line in enumerate(stream):
            writer.write((dataset.pk, index, index + 1, line.rstrip(b"\n").decode(), 0, 0, False))
    return time.perf_counter() - started


def _postgres_answers(url: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5432), timeout=1):
            return True
    except OSError:
        return False


def run_worker(database_url: str, file_path: Path, media_root: Path) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "rftweb.settings.test"}
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", str(file_path), str(media_root)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"worker failed:\n{completed.stdout}\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    import psycopg

    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    backends = ["sqlite"]
    if not args.no_postgres and _postgres_answers(admin_url):
        backends.append("postgresql")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.system()}"
    )

    with tempfile.TemporaryDirectory(prefix="rftweb-bench-") as scratch:
        scratch_path = Path(scratch)
        files = {}
        for size in args.sizes:
            path = scratch_path / f"items-{size}.jsonl"
            started = time.perf_counter()
            nbytes = generate(path, size)
            files[size] = path
            print(
                f"generated {size:,} lines, {nbytes / 1e6:.1f} MB ({nbytes / size:.0f} bytes/line) in {time.perf_counter() - started:.1f} s"
            )
        results = []
        for backend in backends:
            for size in args.sizes:
                media_root = scratch_path / f"media-{backend}-{size}"
                if backend == "sqlite":
                    url = f"sqlite:///{scratch_path / f'bench-{size}.sqlite3'}"
                    figures = run_worker(url, files[size], media_root)
                else:
                    name = f"rftweb_bench_datasets_{os.getpid()}"
                    with psycopg.connect(admin_url, autocommit=True) as admin:
                        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                        admin.execute(f'CREATE DATABASE "{name}"')
                    try:
                        figures = run_worker(
                            admin_url.rsplit("/", 1)[0] + "/" + name, files[size], media_root
                        )
                    finally:
                        with psycopg.connect(admin_url, autocommit=True) as admin:
                            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                results.append((backend, size, figures))
                print(
                    f"{backend:<10} {size:>7,} lines: {figures['rows'] / figures['seconds']:>8,.0f} rows/s "
                    f"({figures['seconds']:.2f} s, {figures['cpu_seconds']:.2f} CPU s in this process, "
                    f"load average {figures['load_average']:.1f}); peak RSS {figures['peak_rss_mb']:.0f} MB "
                    f"(before the import {figures['rss_before_mb']:.0f} MB); "
                    f"tracemalloc peak {figures['tracemalloc_peak_mb']:.1f} MB; "
                    f"storing the same lines without checking them: {figures['storage_only_rows_per_s']:,.0f} rows/s",
                    flush=True,
                )
    print()
    print(
        f"{'database':<10} {'lines':>8} {'rows/s':>9} {'rows/CPU-s':>11} {'peak RSS MB':>12} "
        f"{'RSS growth MB':>14} {'traced peak MB':>15} {'store-only rows/s':>18}"
    )
    for backend, size, figures in results:
        print(
            f"{backend:<10} {size:>8,} {figures['rows'] / figures['seconds']:>9,.0f} "
            f"{figures['rows'] / figures['cpu_seconds']:>11,.0f} {figures['peak_rss_mb']:>12.0f} "
            f"{figures['peak_rss_mb'] - figures['rss_before_mb']:>14.1f} {figures['tracemalloc_peak_mb']:>15.1f} "
            f"{figures['storage_only_rows_per_s']:>18,.0f}"
        )


if __name__ == "__main__":
    main()
