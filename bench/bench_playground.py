"""Benchmark: live latency of streamed playground tokens, from generation to the page.

A real Daphne (HTTP + WebSocket), a real Celery worker on the `default` queue (it plays the
sessions), the bundled demo tool server (the `peek` tool over HTTP), a scratch PostgreSQL database
and the local Redis (channel layer). The quick demo's warm-started toy model plays both sides of
each session (a LoRA checkpoint and the base model, at once, in two threads), greedily, so each
side streams a tool call, runs it, and streams its answer.

Each token event carries `t`, the worker's `time.time()` right after the token was sampled and
decoded. The session page records `performance.timeOrigin + performance.now() - t` as it appends
the token to the transcript (window.playgroundLatencies): latency from generation to the page,
through the worker's publish, Redis, the consumer, the WebSocket and the page's handler. Beside the
page, a bare Python websockets client joins the same session (the peer baseline in the same run):
the same path without a browser. Worker, server and browser share this machine's clock.

Goal: p95 < 100 ms from generation to the page.

    .venv/bin/python bench/bench_playground.py [--sessions 10]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres) and
Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_live_latency import (  # noqa: E402
    CHROMIUM,
    drop_database,
    free_port,
    percentile,
    scratch_database,
    setup_django,
    start_daphne,
)

PASSWORD = "bench-password-1"


def start_worker(log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "rftweb",
        "worker",
        "-Q",
        "default",
        "-c",
        "1",
        "-n",
        f"bench-playground-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]
    log = open(log_path, "wb")  # kept open for the worker's lifetime
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if " ready." in log_path.read_text(errors="replace"):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"celery worker did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def make_run(owner, tool_url: str):
    from experiments.models import Checkpoint, Dataset, Grader, Tool
    from experiments.services import demo
    from experiments.services.run_launch import create_run
    from experiments.services.training import run_output_dir, toy_model_dir

    demo.seed_demo(owner=owner, tool_base_url=tool_url)
    run = create_run(
        owner=owner,
        name="bench playground",
        base_model=demo.BUNDLED_TOY_MODEL,
        train_dataset=Dataset.objects.get(owner=owner, name=demo.QUICK_TRAIN),
        eval_dataset=Dataset.objects.get(owner=owner, name=demo.QUICK_EVAL),
        tools=list(Tool.objects.filter(owner=owner, name="peek")),
        grader=Grader.objects.get(owner=owner, name=demo.QUICK_GRADER),
        config={**demo.QUICK_DEMO_CONFIG, "eval_temperature": 0.0},
        start=False,
    )
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = run_output_dir(run.pk) / "checkpoints" / "checkpoint-000010"
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir())
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=demo.QUICK_DEMO_CONFIG["lora_target_modules"])
    get_peft_model(model, lora).save_pretrained(path)
    Checkpoint.objects.create(run=run, step=10, path=str(path), metrics={"eval/reward": 0.75})
    return run


def python_peer(url: str, headers: dict, latencies: list, done: threading.Event) -> None:
    seen: list = []

    async def listen() -> None:
        import websockets

        async with websockets.connect(url, additional_headers=headers) as socket:
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=120))
                now = time.time()
                for event in frame.get("events", []):
                    if event["kind"] == "token":
                        latencies.append((now - event["t"]) * 1000)
                        seen.append((event["seq"], event["side"], (now - event["t"]) * 1000))
                    if event["side"] == "session" and event.get("status") in (
                        "succeeded",
                        "stopped",
                        "failed",
                    ):
                        return
                if frame["type"] == "snapshot":
                    return

    try:
        asyncio.run(listen())
    finally:
        slow = [(seq, side, round(ms)) for seq, side, ms in seen if ms > 100]
        if slow:
            print(f"  slow tokens (seq, side, ms) of {len(seen)}: {slow}")
        done.set()


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: no tokens"
    return (
        f"{label}: {len(values)} tokens, median {percentile(values, 0.5):.1f} ms, "
        f"p95 {percentile(values, 0.95):.1f} ms, max {max(values):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("Debian's chromium is needed (apt-get install chromium)")
    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
    name = f"rftweb_bench_playground_{os.getpid()}"
    os.environ["RFTWEB_TEST_NAMESPACE"] = f"bench-playground-{os.getpid()}"
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    database_url = scratch_database(admin_url, name)
    daphne = worker = None
    try:
        setup_django(database_url, redis_url)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from experiments.demo_servers import DemoServer
        from experiments.models import PlaygroundSession

        user = get_user_model().objects.create_user("bench", password=PASSWORD)
        tools = DemoServer().start()
        run = make_run(user, tools.url)
        client = Client()
        client.force_login(user)
        cookie = client.cookies["sessionid"].value
        port = free_port()
        daphne = start_daphne(port, Path(f"/tmp/{name}-daphne.log"))
        worker = start_worker(Path(f"/tmp/{name}-worker.log"))
        base_url = f"http://127.0.0.1:{port}"
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, load average {os.getloadavg()} before "
            f"the run (other processes share the cores: figures are noisy)\n"
            f"server: Daphne on {base_url}; worker: Celery (default queue, prefork, 1 process); model: the "
            f"warm-started toy model on both sides; {args.sessions} sessions, one after the other"
        )

        from playwright.sync_api import sync_playwright

        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        page_latencies: list[float] = []
        peer_latencies: list[float] = []
        durations = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(f"{base_url}/accounts/login/")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/accounts/login/" not in url)
            items = list(run.eval_dataset.items.order_by("index"))
            for index in range(args.sessions):
                from experiments.services.playground import create_session

                session = create_session(owner=user, run=run, step=10, item_id=items[index % len(items)].pk)
                started = time.monotonic()
                page.goto(f"{base_url}/playground/{session.pk}/")  # joining starts the session
                page.wait_for_function("document.body.dataset.playgroundStatus", timeout=30000)
                done = threading.Event()
                peer = threading.Thread(
                    target=python_peer,
                    args=(
                        f"ws://127.0.0.1:{port}/ws/playground/{session.pk}/",
                        {"Cookie": f"sessionid={cookie}", "Origin": base_url},
                        peer_latencies,
                        done,
                    ),
                    daemon=True,
                )
                peer.start()
                page.wait_for_function(
                    "['succeeded', 'stopped', 'failed'].includes(document.body.dataset.playgroundStatus)",
                    timeout=120000,
                )
                durations.append(time.monotonic() - started)
                done.wait(30)
                page_latencies += page.evaluate("window.playgroundLatencies")
                status = PlaygroundSession.objects.get(pk=session.pk).status
                if status != "succeeded":
                    print(f"session {session.pk} ended {status}")
            browser.close()
        print(f"load average after: {os.getloadavg()}")
        print(
            f"sessions took median {sorted(durations)[len(durations) // 2]:.2f} s (both sides, models loaded "
            f"per session)"
        )
        print(summary("generation -> page (Chromium, token appended)", page_latencies))
        print(summary("generation -> bare websockets client (peer baseline)", peer_latencies))
        p95 = percentile(page_latencies, 0.95) if page_latencies else math.inf
        print(
            f"goal: p95 < 100 ms from generation to the page: {'met' if p95 < 100 else 'NOT met'} "
            f"(p95 {p95:.1f} ms)"
        )
        tools.stop()
    finally:
        for process in (worker, daphne):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, name)


if __name__ == "__main__":
    main()
