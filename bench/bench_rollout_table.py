"""Benchmark (c): the rollout table's next page with 1,000,000 stored rollouts on PostgreSQL.

Creates a scratch PostgreSQL database, loads the rollouts with COPY (one big run of 2,000 steps ×
400 rollouts plus four smaller runs), then times `rollout_page` (the selector behind the rollout
browser and /api/v1/trajectories/) for the next page from cursors spread over the whole run, with
and without filters, and the HTTP endpoint. Prints p50/p95, then drops the database.

    .venv/bin/python bench/bench_rollout_table.py [--rollouts 1000000] [--pages 200]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
Goal: p95 < 100 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLS = ["calculator", "lookup", "grep", "list_files"]
BIG_RUN_STEPS = 2000


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


def copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def load(total: int) -> tuple[int, object]:
    """Insert `total` rollouts; return the big run's id and its owner."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from experiments.models import Dataset, Grader, Run, Trajectory

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    dataset = Dataset.objects.create(owner=user, name="bench", split="train")
    grader = Grader.objects.create(owner=user, name="bench", type="string_check", spec={})
    big_size = min(total, BIG_RUN_STEPS * 400)
    plan = [(BIG_RUN_STEPS, big_size)]
    rest = total - big_size
    for _ in range(4):
        if rest > 0:
            plan.append((250, math.ceil(rest / 4)))
    runs = [
        Run.objects.create(
            owner=user, name=f"bench-{i}", base_model="tiny", train_dataset=dataset, grader=grader
        )
        for i in range(len(plan))
    ]
    rng = random.Random(0)
    columns = (
        "trace_id, run_id, step, split, item_index, group_index, sample_index, messages, final_answer, reward, "
        "score, penalty, advantage, sub_scores, grader_errors, tool_calls, tool_call_names, tool_errors, "
        "prompt_tokens, completion_tokens, latency_ms, finish_reason, flags, created_at"
    )
    table = Trajectory._meta.db_table
    written = 0
    with connection.cursor() as cursor:
        raw = cursor.cursor
        for run, (steps, size) in zip(runs, plan, strict=True):
            per_step = max(1, size // steps)
            with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for index in range(size):
                    step = min(steps, 1 + index // per_step)
                    position = index % per_step
                    split = "eval" if position >= per_step - per_step // 8 else "train"
                    calls = min(12, int(rng.expovariate(0.5)))
                    names = [rng.choice(TOOLS) for _ in range(calls)]
                    errors = 1 if rng.random() < 0.05 else 0
                    reward = round(rng.random(), 4)
                    messages = [
                        {"role": "user", "content": f"question {position}"},
                        {"role": "assistant", "content": f"answer {reward}"},
                    ]
                    flags = [{"rule": "no_tool_calls", "detail": ""}] if calls == 0 and reward > 0.9 else []
                    row = [
                        f"trace_{uuid.UUID(int=rng.getrandbits(128)).hex}",
                        str(run.pk),
                        str(step),
                        split,
                        str(position // 8),
                        str(position // 8),
                        str(position % 8),
                        json.dumps(messages),
                        f"answer {reward}",
                        str(reward),
                        str(reward),
                        "0",
                        str(round(rng.gauss(0, 1), 4)),
                        json.dumps({"exact": reward}),
                        "[]",
                        str(calls),
                        json.dumps(names),
                        str(errors),
                        "120",
                        str(rng.randint(20, 400)),
                        str(round(rng.uniform(100, 5000), 1)),
                        "answer",
                        json.dumps(flags),
                        "2026-01-01 00:00:00+00",
                    ]
                    buffer.write("\t".join(copy_escape(value) for value in row) + "\n")
                    if buffer.tell() > 4 << 20:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
            written += size
        cursor.execute(f"VACUUM ANALYZE {table}")
    return runs[0].pk, user


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"rftweb_bench_rollouts_{os.getpid()}"
    database_url = scratch_database(admin_url, name)
    try:
        setup_django(database_url)
        started = time.perf_counter()
        run_id, user = load(args.rollouts)
        from django.db import connection

        from experiments.models import Trajectory
        from experiments.selectors.trajectories import RolloutFilters, encode_cursor, rollout_page

        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            version = cursor.fetchone()[0].split(",")[0]
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()}, load average {os.getloadavg()[0]:.1f}; {version}; "
            f"loaded {Trajectory.objects.count():,} rollouts in {time.perf_counter() - started:.0f} s "
            f"(the big run: {Trajectory.objects.filter(run_id=run_id).count():,})"
        )
        rng = random.Random(1)
        ids = list(
            Trajectory.objects.filter(run_id=run_id).order_by("?").values_list("id", "step")[: args.pages]
        )
        cursors = [encode_cursor(Trajectory(pk=pk, run_id=run_id, step=step)) for pk, step in ids]
        # Next pages inside one step: a cursor up to 50 rows into a random step's train rollouts.
        step_cursors = []
        for _ in range(len(cursors)):
            step = rng.randint(1, BIG_RUN_STEPS)
            ids_in_step = list(
                Trajectory.objects.filter(run_id=run_id, step=step, split="train")
                .order_by("id")
                .values_list("id", flat=True)[:101]
            )
            pk = ids_in_step[len(ids_in_step) // 2]
            step_cursors.append((step, encode_cursor(Trajectory(pk=pk, run_id=run_id, step=step))))
        scenarios = {
            "no filter (whole run)": lambda i: (RolloutFilters(run_id=run_id), cursors[i]),
            "step + split": lambda i: (
                RolloutFilters(run_id=run_id, step=step_cursors[i][0], split="train"),
                step_cursors[i][1],
            ),
            "reward 0.2..0.4": lambda i: (
                RolloutFilters(run_id=run_id, min_reward=0.2, max_reward=0.4),
                cursors[i],
            ),
            "has error": lambda i: (RolloutFilters(run_id=run_id, has_error=True), cursors[i]),
            "tool used = grep": lambda i: (RolloutFilters(run_id=run_id, tool="grep"), cursors[i]),
            "flagged": lambda i: (RolloutFilters(run_id=run_id, flagged=True), cursors[i]),
            "split eval + tool + reward >= 0.5": lambda i: (
                RolloutFilters(run_id=run_id, split="eval", tool="lookup", min_reward=0.5),
                cursors[i],
            ),
        }
        for label, make in scenarios.items():
            timings = []
            for i in range(len(cursors)):
                filters, cursor = make(i)
                t0 = time.perf_counter()
                page = rollout_page(user=user, filters=filters, cursor=cursor, limit=50)
                timings.append((time.perf_counter() - t0) * 1000)
            print(
                f"next page, {label:<36} p50 {statistics.median(timings):6.1f} ms  "
                f"p95 {percentile(timings, 0.95):6.1f} ms  ({len(timings)} pages, last had {len(page.rows)} rows)"
            )
        trace_ids = list(
            Trajectory.objects.filter(run_id=run_id).order_by("?").values_list("trace_id", flat=True)[:20]
        )
        for label, fragment in (
            ("exact trace id", lambda t: t),
            ("trace id fragment (8 hex)", lambda t: t[10:18]),
        ):
            timings = []
            for trace_id in trace_ids:
                t0 = time.perf_counter()
                page = rollout_page(
                    user=user, filters=RolloutFilters(run_id=run_id, trace_id=fragment(trace_id))
                )
                timings.append((time.perf_counter() - t0) * 1000)
                assert any(row.trace_id == trace_id for row in page.rows)
            print(
                f"search, {label:<39} p50 {statistics.median(timings):6.1f} ms  "
                f"p95 {percentile(timings, 0.95):6.1f} ms  ({len(timings)} searches)"
            )
        from django.conf import settings
        from django.test import Client

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        client = Client()
        client.force_login(user)
        timings = []
        status = None
        for cursor in cursors[:100]:
            t0 = time.perf_counter()
            response = client.get("/api/v1/trajectories/", {"run": run_id, "cursor": cursor})
            timings.append((time.perf_counter() - t0) * 1000)
            status = response.status_code
        if status == 200:
            print(
                f"GET /api/v1/trajectories/?run=&cursor= (50 rows, JSON)  p50 {statistics.median(timings):6.1f} ms  "
                f"p95 {percentile(timings, 0.95):6.1f} ms"
            )
        else:
            print(f"GET /api/v1/trajectories/ answered {status} (endpoint not routed here)")
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, name)


if __name__ == "__main__":
    main()
