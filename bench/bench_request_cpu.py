"""The server's CPU time and SQL queries per request, for each kind of request bench_load.py makes.

The production server command (`manage.py serve`, uvicorn, one process, `rftweb.settings.production`)
on a scratch PostgreSQL database and Redis, seeded as bench_load.py seeds it. One client asks `--n`
requests of one kind after another (keep-alive, as a browser does) and the server process's CPU time
(user + system, from the kernel) over them is divided by their number: unlike wall time, it hardly
moves with other load on the machine. Then `--watchers` WebSockets watch the live run while this
process records `--steps` steps of `--rollouts` rollouts through the recording service: the server's
CPU per recorded step is what fanning one step out to that many watchers costs.

Queries per request are counted in this process (Django's test client on the same settings and
database, CaptureQueriesContext), for the same URLs.

At 200 people (~100 requests/s) the server must stay well under the ~1.3 cores that a 2-core machine
leaves it next to locust: ~10 ms of CPU per request on average.

    .venv/bin/python bench/bench_request_cpu.py [--n 200] [--watchers 20] [--steps 40]
    .venv/bin/python bench/bench_request_cpu.py --baseline 99fb7c8 --rounds 5 --n 100

With --baseline, a worktree of that git ref is served beside this checkout (same database, same
settings) and the two are measured alternately, round by round: the medians and their ratio are the
figures to read on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_live_latency import (  # noqa: E402
    LEASE_OWNER,
    drop_database,
    free_port,
    metrics_for,
    rollouts_for,
    scratch_database,
)
from bench_load import configure, seed, start_server  # noqa: E402


def request_kinds(config: dict) -> list[tuple[str, str, bool]]:
    """(name, path, with the API token instead of the session) for each kind the locust file asks."""
    account = config["accounts"][0]
    run, dataset = account["runs"][0], account["datasets"][0]
    live = config["stream_run"]
    return [
        ("page: dashboard", "/", False),
        ("page: runs list", "/runs/", False),
        ("page: datasets list", "/datasets/", False),
        ("page: tools list", "/tools/", False),
        ("page: graders list", "/graders/", False),
        ("page: dataset", f"/datasets/{dataset}/", False),
        ("page: run", f"/runs/{run}/", False),
        ("api: run series", f"/api/v1/runs/{run}/series/?x=step&max_points=2000&keys=reward,kl,loss", False),
        ("page: rollouts", f"/runs/{run}/rollouts/", False),
        ("api: runs", "/api/v1/runs/", True),
        ("api: datasets", "/api/v1/datasets/", True),
        ("api: run metrics", f"/api/v1/runs/{run}/metrics/", True),
        ("page: run (live)", f"/runs/{live}/", False),
        (
            "api: run series (live)",
            f"/api/v1/runs/{live}/series/?x=step&max_points=2000&keys=reward,kl,loss",
            False,
        ),
        ("api: run metrics (live)", f"/api/v1/runs/{live}/metrics/", True),
    ]


def headers_for(config: dict, api_token: bool) -> dict[str, str]:
    account = config["accounts"][0]
    cookie = next(login["cookie"] for login in config["sessions"] if login["account"] == 0)
    if api_token:
        return {
            "Authorization": f"Token {account['token']}",
            "Accept": "application/json",
            "Host": "127.0.0.1",
        }
    return {"Cookie": f"sessionid={cookie}", "Accept": "text/html,application/json", "Host": "127.0.0.1"}


def count_queries(config: dict) -> dict[str, int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    counts = {}
    for name, path, api_token in request_kinds(config):
        headers = headers_for(config, api_token)
        client = Client(HTTP_HOST="127.0.0.1")
        extra = {"HTTP_ACCEPT": headers["Accept"]}
        if api_token:
            extra["HTTP_AUTHORIZATION"] = headers["Authorization"]
        else:
            client.cookies["sessionid"] = headers["Cookie"].split("=", 1)[1]
        client.get(path, **extra)  # warm: caches filled as a busy server has them
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path, **extra)
        assert response.status_code == 200, (name, response.status_code)
        counts[name] = len(captured.captured_queries)
    return counts


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure_requests(port: int, pid: int, config: dict, n: int) -> dict[str, tuple[float, float, int]]:
    """name -> (CPU ms per request, wall ms per request, response bytes)."""
    process = psutil.Process(pid)
    results = {}
    for name, path, api_token in request_kinds(config):
        headers = headers_for(config, api_token)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        size = 0
        for _ in range(5):  # warm: templates compiled, pool connections open, caches filled
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200, (name, response.status, body[:300])
            size = len(body)
        time.sleep(0.2)
        before = cpu_seconds(process)
        started = time.perf_counter()
        for _ in range(n):
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
        wall = time.perf_counter() - started
        time.sleep(0.2)  # let the server finish what it does after answering
        used = cpu_seconds(process) - before - 0.4 * idle_cpu_rate(process)
        connection.close()
        results[name] = (used * 1000 / n, wall * 1000 / n, size)
    return results


_idle_rate: float | None = None


def idle_cpu_rate(process: psutil.Process) -> float:
    """The server's CPU seconds per second when nobody asks anything (its event loop's own ticks)."""
    global _idle_rate
    if _idle_rate is None:
        before = cpu_seconds(process)
        time.sleep(2.0)
        _idle_rate = (cpu_seconds(process) - before) / 2.0
    return _idle_rate


def measure_fan_out(port: int, pid: int, config: dict, watchers: int, steps: int, rollouts: int) -> dict:
    from websockets.sync.client import connect

    from experiments.models import RunEvent
    from experiments.services.recording import record_step

    run_id = config["stream_run"]
    cookie = headers_for(config, False)["Cookie"]
    after = RunEvent.objects.filter(run_id=run_id).order_by("-seq").values_list("seq", flat=True).first() or 0
    sockets = [
        connect(
            f"ws://127.0.0.1:{port}/ws/runs/{run_id}/?after={after}",
            additional_headers={"Cookie": cookie},
            origin="http://127.0.0.1",
            max_size=None,
            ping_interval=None,  # this client's threads may starve on a busy machine: no keepalive to miss
        )
        for _ in range(watchers)
    ]
    received = [set() for _ in sockets]

    def read(index: int) -> None:
        import json

        try:
            for message in sockets[index]:
                for event in json.loads(message).get("events", []):
                    received[index].add(event["seq"])
        except Exception as error:  # closed at the end: the count of lost points tells the rest
            print(f"watcher {index}: {type(error).__name__}: {error}", file=sys.stderr)

    readers = [threading.Thread(target=read, args=(index,), daemon=True) for index in range(watchers)]
    for reader in readers:
        reader.start()
    process = psutil.Process(pid)
    rng = random.Random(3)
    first = RunEvent.objects.filter(run_id=run_id).count()
    prepared = [
        (metrics_for(s, 1000, rng), rollouts_for(s, rollouts, rng))
        for s in range(first + 1, first + steps + 1)
    ]
    time.sleep(0.5)
    before = cpu_seconds(process)
    started = time.perf_counter()
    for step, (metrics, records) in enumerate(prepared, start=first + 1):
        record_step(run_id=run_id, lease_owner=LEASE_OWNER, step=step, metrics=metrics, trajectories=records)
        time.sleep(0.05)  # 20 steps/s, as bench_load asks
    stored = set(RunEvent.objects.filter(run_id=run_id, seq__gt=after).values_list("seq", flat=True))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(stored - got for got in received):
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    used = cpu_seconds(process) - before - elapsed * idle_cpu_rate(process)
    for sock in sockets:
        sock.close()
    lost = sum(len(stored - got) for got in received)
    return {"cpu_ms_per_step": used * 1000 / steps, "lost": lost, "events": len(stored), "seconds": elapsed}


# The locust mix (load_locustfile.py: Browser task weights, one kind of each group at random).
BROWSERS_MIX = {
    "page: dashboard": 3,
    "page: runs list": 0.75,
    "page: datasets list": 0.75,
    "page: tools list": 0.75,
    "page: graders list": 0.75,
    "page: dataset": 3,
    "page: run": 3,
    "api: run series": 3,
    "page: rollouts": 1,
    "api: runs": 1,
    "api: datasets": 1,
    "api: run metrics": 1,
}


def mix_average(results: dict) -> float:
    return sum(results[k][0] * w for k, w in BROWSERS_MIX.items()) / sum(BROWSERS_MIX.values())


def baseline_checkout(ref: str) -> Path:
    """A detached worktree of `ref`, served side by side with this checkout."""
    path = Path(tempfile.mkdtemp(prefix="rftweb-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref],
        check=True,
        capture_output=True,
    )
    return path


def server_pid(server) -> int:
    """The process that serves: one worker runs in the server's own process (its child is the upload
    helper, idle here)."""
    return server.pid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="requests of each kind")
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--history", type=int, default=500, help="steps the live run has recorded")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also serve this git ref (a worktree) and measure both, alternating, --rounds times",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: alternations")
    args = parser.parse_args()

    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
    name = f"rftweb_cpu_{os.getpid()}"
    database_url = scratch_database(admin_url, name)
    servers: dict[str, subprocess.Popen] = {}
    baseline = None
    env = None
    try:
        env = configure(database_url, redis_url)
        config = seed(20)
        # The live run has a history, as it has when people open it mid-run (bench_load's run is at
        # ~800 steps by its end).
        from experiments.services.recording import record_step

        rng = random.Random(1)
        for step in range(1, args.history + 1):
            record_step(
                run_id=config["stream_run"],
                lease_owner=LEASE_OWNER,
                step=step,
                metrics=metrics_for(step, 1000, rng),
                trajectories=rollouts_for(step, 5, rng),
            )
        queries = count_queries(config)
        work = Path(os.environ.get("TMPDIR", "/tmp"))
        checkouts = {"this": ROOT}
        if args.baseline:
            baseline = baseline_checkout(args.baseline)
            checkouts = {args.baseline: baseline, "this": ROOT}
        ports = {}
        for label, checkout in checkouts.items():
            ports[label] = free_port()
            servers[label] = start_server(
                ports[label], 1, env, work / f"rftweb-cpu-{os.getpid()}-{len(servers)}.log", cwd=checkout
            )
        for server in servers.values():
            idle_cpu_rate(psutil.Process(server_pid(server)))
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; server idle CPU {_idle_rate * 1000:.1f} ms/s"
        )
        rounds = args.rounds if args.baseline else 1
        totals: dict[str, dict[str, list[float]]] = {label: {} for label in checkouts}
        sizes: dict[str, int] = {}
        for round_index in range(rounds):
            for label in checkouts if round_index % 2 == 0 else reversed(list(checkouts)):
                results = measure_requests(ports[label], server_pid(servers[label]), config, args.n)
                for kind, (cpu, _wall, size) in results.items():
                    totals[label].setdefault(kind, []).append(cpu)
                    sizes[kind] = size
            print(f"round {round_index + 1}/{rounds}: load average {os.getloadavg()[0]:.1f}", flush=True)
        medians = {
            label: {kind: (statistics.median(values), 0.0, sizes[kind]) for kind, values in kinds.items()}
            for label, kinds in totals.items()
        }
        labels = list(checkouts)
        header = "".join(f"{label[:12] + ' CPU ms':>20}" for label in labels)
        print(f"{'kind':<28}{header}{'queries':>9}{'bytes':>9}" + ("   this/baseline" if baseline else ""))
        for kind in medians["this"]:
            cells = "".join(f"{medians[label][kind][0]:>20.1f}" for label in labels)
            ratio = f"{medians['this'][kind][0] / medians[args.baseline][kind][0]:>16.2f}" if baseline else ""
            print(f"{kind:<28}{cells}{queries[kind]:>9}{sizes[kind]:>9}{ratio}")
        for label in labels:
            print(f"browsers' mix ({label}): {mix_average(medians[label]):.1f} CPU ms per request on average")
        # This process records the steps and publishes them with this checkout's channel layer, which
        # a baseline's server may not listen to (its watchers would only catch up from the database):
        # the fan-out is measured for this checkout alone.
        pid = server_pid(servers["this"])
        fan = measure_fan_out(ports["this"], pid, config, args.watchers, args.steps, args.rollouts)
        print(
            f"ws fan-out (this): {args.watchers} watchers, {args.steps} steps x {args.rollouts} rollouts: "
            f"{fan['cpu_ms_per_step']:.1f} CPU ms per step "
            f"({fan['cpu_ms_per_step'] / args.watchers:.2f} per step per watcher), lost {fan['lost']}"
        )
    finally:
        for server in servers.values():
            server.terminate()
            try:
                server.wait(timeout=15)
            except Exception:
                server.kill()
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, name)
        if env is not None:
            shutil.rmtree(env["RFTWEB_DATA_DIR"], ignore_errors=True)
        if baseline is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False
            )


if __name__ == "__main__":
    main()
