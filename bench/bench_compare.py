"""Benchmark: the comparison's overlaid curves for 8 runs × 20,000 steps × 10 metrics.

Builds the first run with `bench_metric_series.load` (COPY into a scratch PostgreSQL database),
copies its points to 7 more runs in SQL (each shifted so that no two runs are equal), builds the
runs' metric rollups from those points (`rebuild_rollups`: the loading bypasses the write path that
keeps them), then times `overlaid_series` (the selector behind /api/v1/compare/series/) and the
HTTP endpoint, prints the figures and the points per series, and drops the database. Each figure is
taken twice: reading the raw points (the selector before rollups) and reading the rollups.

    .venv/bin/python bench/bench_compare.py [--runs 8] [--steps 20000] [--repeat 10]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
Goal: < 500 ms and ≤ 2,000 points per series.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_metric_series import (
    KEYS,
    MODES,
    build_rollups,
    drop_database,
    load,
    percentile,
    scratch_database,
    setup_django,
)

# Ten of the stored metrics, the loss (which carries a spike at step 12,345) among them.
COMPARED_KEYS = [
    "reward",
    "reward_std",
    "completions/mean_length",
    "tools/calls_mean",
    "tools/calls_p95",
    "kl",
    "entropy",
    "loss",
    "grad_norm",
    "step_time",
]
assert set(COMPARED_KEYS) <= set(KEYS)


def clone_runs(first_run_id: int, runs: int) -> list[int]:
    """Runs 2..n: the first run's points for COMPARED_KEYS, shifted by the run's position."""
    from django.db import connection

    from experiments.models import MetricPoint, Run

    first = Run.objects.get(pk=first_run_id)
    table = MetricPoint._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE run_id = %s AND NOT (key = ANY(%s))", [first.pk, COMPARED_KEYS]
        )
    run_ids = [first.pk]
    for position in range(1, runs):
        clone = Run.objects.create(
            owner=first.owner,
            name=f"bench-{position}",
            base_model=first.base_model,
            train_dataset=first.train_dataset,
            grader=first.grader,
            last_seq=first.last_seq,
            config={"learning_rate": 1e-5 * (position + 1)},
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (run_id, seq, step, key, value, wall_time) "
                f"SELECT %s, seq, step, key, value + %s, wall_time FROM {table} WHERE run_id = %s",
                [clone.pk, 0.1 * position, first.pk],
            )
        run_ids.append(clone.pk)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")
    return run_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (to explore)")
    args = parser.parse_args()
    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = os.environ.get("BENCH_REUSE_DATABASE") or f"rftweb_bench_compare_{os.getpid()}"
    if os.environ.get("BENCH_REUSE_DATABASE"):  # a database kept by an earlier --keep
        database_url = admin_url.rsplit("/", 1)[0] + "/" + name
    else:
        database_url = scratch_database(admin_url, name)
    try:
        setup_django(database_url)
        started = time.perf_counter()
        if os.environ.get("BENCH_REUSE_DATABASE"):
            from experiments.models import Run

            run_ids = list(Run.objects.order_by("pk").values_list("pk", flat=True))
        else:
            run_ids = clone_runs(load(args.steps), args.runs)
        loaded = time.perf_counter() - started
        rollup_seconds = build_rollups(run_ids)
        from django.db import connection

        from experiments.models import MetricPoint

        stored = MetricPoint.objects.count()
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()}, "
            f"load average {os.getloadavg()[0]:.1f} (other processes share the cores); "
            f"loaded {args.runs} runs × {args.steps} steps × {len(COMPARED_KEYS)} metrics "
            f"({stored:,} points) in {loaded:.1f} s; rollups built from them in {rollup_seconds:.1f} s"
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            print("database:", cursor.fetchone()[0].split(",")[0])

        from django.conf import settings
        from django.core.cache import cache
        from django.test import Client

        from experiments.models import Run
        from experiments.selectors.compare import overlaid_series

        def timed(label: str, call, *, cold: bool) -> None:
            for mode, reads in MODES:
                if not cold and mode != MODES[-1][0]:
                    continue  # warm answers come from the cache, whichever way they were made
                cache.clear()
                timings = []
                with reads():
                    if not cold:
                        call()  # the view before: fills the cache
                    for _ in range(args.repeat):
                        if cold:
                            cache.clear()
                        t0 = time.perf_counter()
                        result = call()
                        timings.append((time.perf_counter() - t0) * 1000)
                print(
                    f"[{mode}] {label} "
                    f"[{'cold: every run aggregated' if cold else 'warm: runs unchanged since the last view'}]: "
                    f"p50 {statistics.median(timings):.0f} ms, p95 {percentile(timings, 0.95):.0f} ms, "
                    f"max {max(timings):.0f} ms{result}"
                )

        def selector(x_axis: str):
            def call() -> str:
                result = overlaid_series(run_ids=run_ids, keys=COMPARED_KEYS, x_axis=x_axis, max_points=2000)
                sizes = [len(s["y"]) for run in result["runs"].values() for s in run["series"].values()]
                assert len(sizes) == args.runs * len(COMPARED_KEYS)
                assert max(sizes) <= 2000, max(sizes)
                assert all(max(run["series"]["loss"]["y"]) >= 50.0 for run in result["runs"].values()), (
                    "spike lost"
                )
                return (
                    f"; {len(sizes)} series, points per series min {min(sizes)} max {max(sizes)} "
                    f"(of {args.steps} stored); every run's spike kept"
                )

            return call

        for cold in (True, False):
            timed("overlaid_series x=step", selector("step"), cold=cold)
            timed("overlaid_series x=relative_time", selector("relative_time"), cold=cold)

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        client = Client()
        client.force_login(Run.objects.get(pk=run_ids[0]).owner)
        query = {"runs": ",".join(map(str, run_ids)), "keys": ",".join(COMPARED_KEYS), "max_points": 2000}

        def http(params: dict):
            def call() -> str:
                response = client.get("/api/v1/compare/series/", params)
                assert response.status_code == 200, response.content[:300]
                return f"; {len(response.content) / 1024:.0f} KiB of JSON"

            return call

        for cold in (True, False):
            timed(
                f"GET /api/v1/compare/series/ ({args.runs} runs × {len(COMPARED_KEYS)} keys)",
                http(query),
                cold=cold,
            )
            timed(
                f"GET /api/v1/compare/series/ ({args.runs} runs × 1 key: one chart)",
                http({**query, "keys": "reward"}),
                cold=cold,
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
