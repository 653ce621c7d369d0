"""Benchmark (a): live latency from the reporter's write to the WebSocket frame in the browser.

A real Daphne (HTTP + WebSocket) serves the app on a scratch PostgreSQL database and the local Redis
(channel layer). Chromium (Playwright, Debian's /usr/bin/chromium) opens the run page; the page's own
WebSocket is wrapped so that each frame is stamped with `performance.timeOrigin + performance.now()`
(epoch ms) as it reaches the page, before the page's handlers run. This process plays the worker:
it stamps `time.time()` just before calling `experiments.services.recording.record_step` as the
lease holder (one step: ~15 metrics and 50 rollouts with a few turns and tool calls each) and
matches the page's stamps by step number. Latency therefore includes the step's database write
(one transaction), the publish after commit, Redis, the consumer and the browser. Browser and
writer share this machine's clock.

Two phases, each on its own run and page: a 1 step/s baseline, then 20 steps/s (50 rollouts per
step) for about 20 s. Goal: p95 < 250 ms at 20 steps/s.

    .venv/bin/python bench/bench_live_latency.py [--rate 20] [--seconds 20] [--rollouts 50]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres) and
Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/9).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
LEASE_OWNER = "bench-worker@host:1"
PASSWORD = "bench-password-1"

# Wraps the page's WebSocket: every frame is stamped on arrival, before the page's own handlers.
STAMP_FRAMES = """
(() => {
  const Native = window.WebSocket;
  window.__frames = [];
  window.__longTasks = []; // [start, duration] ms of main-thread tasks over 50 ms
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longTasks.push([entry.startTime, entry.duration]);
  }).observe({ entryTypes: ["longtask"] });
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (message) => {
        const at = performance.timeOrigin + performance.now();
        let steps = [];
        try {
          const frame = JSON.parse(message.data);
          steps = (frame.events || []).filter((e) => e.kind === "metrics").map((e) => e.step);
        } catch (error) { /* not JSON: ignore */ }
        if (steps.length) window.__frames.push([at, steps]);
      });
    }
  };
})();
"""


def scratch_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str, redis_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "rftweb.settings.test"
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_daphne(port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # same settings, database, Redis and channel prefix
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "django", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"daphne did not start:\n{log_path.read_text()}")


def create_running_run(user, name: str) -> int:
    """A run in the state a worker leaves it in once it holds the lease."""
    from django.utils import timezone

    from experiments.models import Dataset, Grader, Run, RunStatus

    dataset = Dataset.objects.get_or_create(owner=user, name="bench", split="train")[0]
    grader = Grader.objects.get_or_create(
        owner=user, name="bench", type="string_check", defaults={"spec": {"type": "string_check"}}
    )[0]
    run = Run.objects.create(
        owner=user,
        name=name,
        base_model="tiny",
        train_dataset=dataset,
        grader=grader,
        config={"prompts_per_step": 10, "group_size": 5},
    )
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        lease_owner=LEASE_OWNER,
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
    )
    return run.pk


def rollouts_for(step: int, count: int, rng: random.Random) -> list:
    """`count` realistic rollouts: 10 prompts × groups of 5, 1-3 tool calls each, a few turns."""
    from trainer.interfaces import TrajectoryRecord

    group_size = 5
    records = []
    for index in range(count):
        group, sample = divmod(index, group_size)
        calls = 1 + rng.randrange(3)
        colour = rng.choice(("red", "blue", "green", "gold"))
        messages = [
            {"role": "system", "content": "You answer questions about the shop's repository. Call tools."},
            {"role": "user", "content": f"Which file defines compute_total? (item {group})"},
        ]
        for call in range(calls):
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            messages.append(
                {
                    "role": "assistant",
                    "content": "Let me search the repository." if call == 0 else "",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": "grep",
                                "arguments": f'{{"pattern": "compute_total", "path": "src/shop/{call}"}}',
                            },
                        }
                    ],
                }
            )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": "src/shop/pricing.py:12: def compute_total(items, tax):\n" * 3,
                    "latency_ms": round(rng.uniform(5, 80), 1),
                }
            )
        messages.append({"role": "assistant", "content": f"src/shop/pricing.py ({colour})"})
        reward = float(rng.random() < 0.4)
        records.append(
            TrajectoryRecord(
                trace_id=f"trace_{uuid.uuid4().hex}",
                step=step,
                split="train",
                item_index=group + 10 * step,
                group_index=group,
                sample_index=sample,
                messages=messages,
                final_answer=f"src/shop/pricing.py ({colour})",
                reward=reward,
                score=reward,
                penalty=0.0,
                advantage=round(reward - 0.4, 3),
                sub_scores={"exact": reward},
                grader_errors=[],
                tool_calls=calls,
                tool_call_names=["grep"] * calls,
                tool_errors=0,
                prompt_tokens=180,
                completion_tokens=40 + 25 * calls,
                latency_ms=round(rng.uniform(300, 2000), 1),
                finish_reason="answer",
            )
        )
    return records


def metrics_for(step: int, total: int, rng: random.Random) -> dict[str, float]:
    base = 0.3 + 0.4 * (1 - math.exp(-step / 100))
    return {
        "reward": base + rng.gauss(0, 0.05),
        "reward_std": 0.3,
        "frac_reward_zero_std": 0.1,
        "completions/mean_length": 90.0,
        "tools/calls_mean": 2.0,
        "tools/calls_p95": 3.0,
        "tools/failure_frequency": 0.0,
        "kl": 0.001 * step,
        "entropy": 1.1,
        "loss": rng.gauss(0, 0.05),
        "grad_norm": 0.8,
        "learning_rate": 1e-5,
        "timing/rollout_s": 0.03,
        "step_time": 0.05,
        "progress/total_steps": float(total),
    }


def write_steps(
    run_id: int, *, rate: float, seconds: float, rollouts: int, stamps: dict, committed: dict, errors: list
):
    """The worker's side: `rate` steps per second (or as fast as the writes allow), stamped first."""
    from django.db import connection

    from experiments.services.recording import record_step

    total = max(1, round(rate * seconds))
    rng = random.Random(run_id)
    # Prepared ahead so that building the objects is not counted as the reporter's write.
    prepared = [(metrics_for(s, total, rng), rollouts_for(s, rollouts, rng)) for s in range(1, total + 1)]
    try:
        started = time.perf_counter()
        for step, (metrics, records) in enumerate(prepared, start=1):
            due = started + (step - 1) / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            stamps[step] = time.time() * 1000  # epoch ms, the clock the page's stamps use too
            record_step(
                run_id=run_id, lease_owner=LEASE_OWNER, step=step, metrics=metrics, trajectories=records
            )
            committed[step] = time.time() * 1000  # record_step returns after its commit (and publish)
    except BaseException as error:
        errors.append(error)
    finally:
        connection.close()


def python_client(url: str, *, headers: dict, frames: list, ready: threading.Event, stop: threading.Event):
    """A bare `websockets` client next to the browser: the same frames without a page to render."""
    import asyncio

    import websockets

    async def listen() -> None:
        async with websockets.connect(url, additional_headers=headers) as socket:
            ready.set()
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(socket.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                at = time.time() * 1000
                events = json.loads(message).get("events", [])
                steps = [event["step"] for event in events if event["kind"] == "metrics"]
                if steps:
                    frames.append((at, steps))

    asyncio.run(listen())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(page, base_url: str, user, *, name: str, rate: float, seconds: float, rollouts: int) -> dict:
    run_id = create_running_run(user, name)
    page.goto(f"{base_url}/runs/{run_id}/")
    page.wait_for_function("document.getElementById('live-badge').textContent === 'live'", timeout=30000)
    phase_started = page.evaluate("performance.now()")
    session = next(c["value"] for c in page.context.cookies() if c["name"] == "sessionid")
    bare_frames: list = []
    ready, stop = threading.Event(), threading.Event()
    listener = threading.Thread(
        target=python_client,
        args=(f"{base_url.replace('http', 'ws', 1)}/ws/runs/{run_id}/?after=0",),
        kwargs=dict(
            headers={"Cookie": f"sessionid={session}", "Origin": base_url},
            frames=bare_frames,
            ready=ready,
            stop=stop,
        ),
        daemon=True,
    )
    listener.start()
    if not ready.wait(15):
        raise RuntimeError("the websockets client could not connect")
    count_points = (
        "[...document.querySelectorAll('.chart[data-chart]')].map((c) => Number(c.dataset.points || 0))"
    )
    points_before = page.evaluate(count_points)
    stamps: dict = {}
    committed: dict = {}
    errors: list = []
    # Playwright's sync API keeps an event loop in this thread; the writer (which publishes through
    # async_to_sync) runs in its own thread, as the trainer does in a worker.
    writer = threading.Thread(
        target=write_steps,
        kwargs=dict(
            run_id=run_id,
            rate=rate,
            seconds=seconds,
            rollouts=rollouts,
            stamps=stamps,
            committed=committed,
            errors=errors,
        ),
    )
    writer.start()
    while writer.is_alive():
        page.wait_for_timeout(200)
    if errors:
        raise errors[0]
    total = max(1, round(rate * seconds))
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # steps that never arrive are counted as lost below
        page.wait_for_function(
            f"window.__frames.some(([_, steps]) => steps.includes({total}))", timeout=15000
        )
    frames = page.evaluate("window.__frames")
    busy_ms, phase_ms = page.evaluate(
        """(since) => [
            window.__longTasks.filter(([start]) => start >= since).reduce((sum, [, d]) => sum + d, 0),
            performance.now() - since,
        ]""",
        phase_started,
    )
    page.wait_for_timeout(500)
    stop.set()
    listener.join(timeout=5)
    bare: dict[int, float] = {}
    for at, steps in bare_frames:
        for step in steps:
            bare.setdefault(step, at)
    bare_deliveries = [bare[s] - committed[s] for s in range(1, total + 1) if s in bare]
    arrived: dict[int, float] = {}
    for at, steps in frames:
        for step in steps:
            arrived.setdefault(step, at)
    latencies = [arrived[s] - stamps[s] for s in range(1, total + 1) if s in arrived]
    writes = [committed[s] - stamps[s] for s in range(1, total + 1)]
    deliveries = [arrived[s] - committed[s] for s in range(1, total + 1) if s in arrived]
    span_s = (stamps[total] - stamps[1]) / 1000
    points = page.evaluate("Number(document.getElementById('chart-reward').dataset.points || 0)")
    points_after = page.evaluate(count_points)
    drawn_live = sum(after > before for before, after in zip(points_before, points_after, strict=True))
    return {
        "steps": total,
        "achieved": (total - 1) / span_s if span_s > 0 else math.nan,
        "latencies": latencies,
        "writes": writes,
        "deliveries": deliveries,
        "bare_deliveries": bare_deliveries,
        "bare_lost": total - len(bare_deliveries),
        "lost": total - len(latencies),
        "frames": len(frames),
        "chart_points": points,
        "charts_live": drawn_live,
        "charts": len(points_after),
        "main_thread_busy": busy_ms / phase_ms,
    }


def report(label: str, result: dict, *, rollouts: int) -> None:
    latencies = result["latencies"]
    if not latencies:
        print(f"{label}: no frame arrived ({result['steps']} steps written)")
        return
    writes, deliveries = result["writes"], result["deliveries"]
    bare = result["bare_deliveries"] or [math.nan]
    print(
        f"{label}: {result['steps']} steps × {rollouts} rollouts, {result['achieved']:.1f} steps/s achieved\n"
        f"  write -> frame in the page: p50 {statistics.median(latencies):.0f} ms, "
        f"p95 {percentile(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms\n"
        f"    of which record_step (write + commit + publish): p50 {statistics.median(writes):.0f} ms, "
        f"p95 {percentile(writes, 0.95):.0f} ms\n"
        f"    and commit -> frame: p50 {statistics.median(deliveries):.0f} ms, "
        f"p95 {percentile(deliveries, 0.95):.0f} ms\n"
        f"  commit -> frame at a bare Python websockets client (no page): "
        f"p50 {statistics.median(bare):.0f} ms, p95 {percentile(bare, 0.95):.0f} ms, "
        f"{result['bare_lost']} steps never arrived\n"
        f"  the page's main thread spent {100 * result['main_thread_busy']:.0f} % of the phase in long tasks "
        f"(tasks over 50 ms)\n"
        f"  {result['frames']} frames in the page, {result['lost']} steps never arrived; "
        f"the reward chart drew {result['chart_points']} points; {result['charts_live']} of "
        f"{result['charts']} charts drew live (those in view; the rest catch up when scrolled to)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="steps per second (goal run)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rollouts", type=int, default=50, help="rollouts per step")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="of the 1 step/s baseline")
    parser.add_argument(
        "--viewport-height",
        type=int,
        default=900,
        help="of the browser window; 3000 puts every chart in view, so all of them draw live",
    )
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("Debian's chromium is needed (apt-get install chromium)")

    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
    name = f"rftweb_bench_live_{os.getpid()}"
    # Own channel-layer prefix (the test settings derive it from this), shared with Daphne.
    os.environ["RFTWEB_TEST_NAMESPACE"] = f"bench-live-{os.getpid()}"
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    database_url = scratch_database(admin_url, name)
    daphne = None
    log_path = Path(f"/tmp/{name}-daphne.log")
    try:
        setup_django(database_url, redis_url)
        from django.contrib.auth import get_user_model
        from django.db import connection

        user = get_user_model().objects.create_user("bench", password=PASSWORD)
        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            database_version = cursor.fetchone()[0].split(",")[0]
        connection.close()
        port = free_port()
        daphne = start_daphne(port, log_path)
        base_url = f"http://127.0.0.1:{port}"
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()}, load average "
            f"{os.getloadavg()[0]:.1f} before the run (other processes share the cores)\n"
            f"database: {database_version} (scratch database {name}); Redis {redis_url}; "
            f"server: Daphne on {base_url}; client: Chromium (Playwright) on the run page, frames "
            f"stamped in the page with performance.timeOrigin + performance.now(); beside it a bare "
            f"Python websockets client on the same run"
        )

        from playwright.sync_api import sync_playwright

        # Playwright's loop runs in this thread from here on; our own ORM calls stay plain sync.
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_context(viewport={"width": 1400, "height": args.viewport_height}).new_page()
            page.add_init_script(STAMP_FRAMES)
            page.goto(f"{base_url}/accounts/login/")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/accounts/login/" not in url)

            baseline = measure(
                page,
                base_url,
                user,
                name="baseline 1 step/s",
                rate=1.0,
                seconds=args.baseline_seconds,
                rollouts=args.rollouts,
            )
            report("baseline, 1 step/s", baseline, rollouts=args.rollouts)
            goal = measure(
                page,
                base_url,
                user,
                name=f"{args.rate:g} steps/s",
                rate=args.rate,
                seconds=args.seconds,
                rollouts=args.rollouts,
            )
            report(f"target, {args.rate:g} steps/s", goal, rollouts=args.rollouts)
            browser.close()
        p95 = percentile(goal["latencies"], 0.95) if goal["latencies"] else math.inf
        verdict = "met" if p95 < 250 and not goal["lost"] else "NOT met"
        print(
            f"goal: p95 < 250 ms at {args.rate:g} steps/s with {args.rollouts} rollouts per step: {verdict} "
            f"(p95 {p95:.0f} ms at {goal['achieved']:.1f} steps/s achieved)"
        )
    finally:
        if daphne is not None:
            daphne.terminate()
            try:
                daphne.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daphne.kill()
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, name)


if __name__ == "__main__":
    main()
