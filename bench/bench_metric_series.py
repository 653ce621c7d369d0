"""Benchmark (b): the run page's metric series for a run with 20,000 steps × 15 metrics.

Creates a scratch PostgreSQL database, loads 300,000 metric points with COPY, builds the run's
metric rollups from them (COPY bypasses the write path that keeps them: `rebuild_rollups`), times
`metric_series` (the selector behind /api/v1/runs/{id}/series/) and the HTTP endpoint, prints the
figures and the points per series, then drops the database. Each figure is taken twice: reading the
raw points (the selector before rollups; forced by `raw_reads`) and reading the rollups.

    .venv/bin/python bench/bench_metric_series.py [--steps 20000] [--repeat 15]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
Goal: < 300 ms and ≤ 2,000 points per series.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEYS = [
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/clipped_ratio",
    "tools/calls_mean",
    "tools/calls_p95",
    "tools/failure_frequency",
    "tools/latency_ms_p50",
    "kl",
    "entropy",
    "loss",
    "grad_norm",
    "learning_rate",
    "step_time",
]


def scratch_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "rftweb.settings.test"
    os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def load(steps: int) -> int:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from experiments.models import Dataset, Grader, MetricPoint, Run

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    dataset = Dataset.objects.create(owner=user, name="bench", split="train")
    grader = Grader.objects.create(owner=user, name="bench", type="string_check", spec={})
    run = Run.objects.create(
        owner=user, name="bench", base_model="tiny", train_dataset=dataset, grader=grader, last_seq=steps
    )
    rng = random.Random(0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    buffer = io.StringIO()
    for step in range(1, steps + 1):
        wall = (start + timedelta(seconds=step * 1.7)).isoformat()
        for index, key in enumerate(KEYS):
            value = math.sin(step / (300 + index * 50)) + rng.gauss(0, 0.1)
            if step == 12_345 and key == "loss":
                value = 50.0  # a spike that downsampling must keep
            buffer.write(f"{run.pk}\t{step}\t{step}\t{key}\t{value!r}\t{wall}\n")
    buffer.seek(0)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3 cursor underneath Django's wrapper
        table = MetricPoint._meta.db_table
        with raw.copy(f"COPY {table} (run_id, seq, step, key, value, wall_time) FROM STDIN") as copy:
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)
        cursor.execute(f"ANALYZE {table}")
    return run.pk


def build_rollups(run_ids: list[int]) -> float:
    """Rollups for runs whose points were loaded with COPY (behind the write path); seconds taken."""
    from experiments.services.rollups import rebuild_rollups

    started = time.perf_counter()
    for run_id in run_ids:
        rebuild_rollups(run_id=run_id)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE experiments_metricrollup")
    return time.perf_counter() - started


@contextlib.contextmanager
def raw_reads():
    """metric_series as before rollups: every range downsampled from the raw points."""
    from experiments.selectors import metrics

    original = metrics.rollup_width
    metrics.rollup_width = lambda **kwargs: None
    try:
        yield
    finally:
        metrics.rollup_width = original


MODES = (("raw points (before)", raw_reads), ("rollups", contextlib.nullcontext))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (to explore)")
    args = parser.parse_args()
    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"rftweb_bench_series_{os.getpid()}"
    database_url = scratch_database(admin_url, name)
    try:
        setup_django(database_url)
        started = time.perf_counter()
        run_id = load(args.steps)
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()}, "
            f"load average {os.getloadavg()[0]:.1f} (other processes share the cores); "
            f"loaded {args.steps} steps × {len(KEYS)} metrics in {time.perf_counter() - started:.1f} s"
        )
        from django.db import connection
        from django.test import Client

        from experiments.models import Run
        from experiments.selectors.metrics import metric_series

        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            print("database:", cursor.fetchone()[0].split(",")[0])
        print(f"rollups built from the loaded points in {build_rollups([run_id]):.1f} s")

        for mode, reads in MODES:
            for x_axis in ("step", "relative_time"):
                timings = []
                with reads():
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        result = metric_series(run_ids=[run_id], keys=KEYS, max_points=2000, x_axis=x_axis)
                        timings.append((time.perf_counter() - t0) * 1000)
                series = result["runs"][run_id]["series"]
                sizes = [len(s["y"]) for s in series.values()]
                loss = series["loss"]
                assert max(loss["y"]) == 50.0, "the spike was lost"
                assert max(sizes) <= 2000, max(sizes)
                print(
                    f"[{mode}] metric_series x={x_axis}: p50 {statistics.median(timings):.0f} ms, "
                    f"p95 {percentile(timings, 0.95):.0f} ms, max {max(timings):.0f} ms; points per series "
                    f"min {min(sizes)} max {max(sizes)} (of {args.steps} stored); spike kept"
                )

        from django.conf import settings

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        user = Run.objects.get(pk=run_id).owner
        client = Client()
        client.force_login(user)
        keys = ",".join(KEYS)
        for mode, reads in MODES:
            timings = []
            with reads():
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    response = client.get(
                        f"/api/v1/runs/{run_id}/series/", {"keys": keys, "max_points": 2000}
                    )
                    timings.append((time.perf_counter() - t0) * 1000)
            if response.status_code == 200:
                print(
                    f"[{mode}] GET /api/v1/runs/{{id}}/series/ (15 keys, JSON): "
                    f"p50 {statistics.median(timings):.0f} ms, "
                    f"p95 {percentile(timings, 0.95):.0f} ms, {len(response.content) / 1024:.0f} KiB"
                )
            else:
                print(
                    f"GET /api/v1/runs/{{id}}/series/ answered {response.status_code} (endpoint not routed here)"
                )
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            print("kept database", name)
        else:
            drop_database(admin_url, name)


if __name__ == "__main__":
    main()
