"""Load test: the production server command under 200 people, a streaming run and 20 big uploads at once.

The server is `manage.py serve` (uvicorn) with `rftweb.settings.production` on a scratch PostgreSQL
database and Redis. locust (headless, bench/load_locustfile.py) plays `--users` people, each waiting
1-3 s between requests: `--watchers` of them watch the live run's page with its WebSocket open the
whole time; the others browse the dashboard, lists, datasets, finished runs' pages and rollouts, and
the API. Meanwhile this process plays the training worker: it records `--rate` steps per second with
`--rollouts` rollouts each on the live run through the real recording service (database, then the
channel layer), and `--uploaders` clients upload a distinct `--upload-mb` MB JSONL dataset each, all at
once, a few seconds in (their files are written before the test starts and sent with sendfile: the
clients stand for other machines, whose work is not the server's). The writer stops `--settle`
seconds before the people do, so that every point has had time to arrive; then each watcher's
received seqs are compared with the events stored after the seq it connected with: a stored event
it never received is a lost point.

Printed: throughput, p50/p95/p99 per page kind, the p95 over every page and API request (from each
one's time, as locust's trace has it), p95 by phase, errors, the uploads, the web processes' peak RSS
(sampled every 0.2 s; the largest process and the sum), lost WebSocket points, the machine's load.
Goal: p95 < 300 ms for pages and API, 0 errors, 0 lost points, web RSS < 1 GB. The last line:
`load: p95 X ms, errors N, lost points N, peak rss N MB`.

    .venv/bin/python bench/bench_load.py [--users 200] [--seconds 60] [--workers 2]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres), Redis
(BENCH_REDIS_URL, default redis://127.0.0.1:6379/8) and the `bench` extra (locust), or BENCH_LOCUST_PYTHON: a
Python of another environment with locust and websocket-client (the locust file imports nothing of the app).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import math
import os
import random
import secrets
import shutil
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

MB = 1024 * 1024
ACCOUNTS = 10


def configure(database_url: str, redis_url: str) -> dict[str, str]:
    """The production settings' environment (plain HTTP on loopback: no TLS redirect)."""
    from cryptography.fernet import Fernet

    env = {
        "DJANGO_SETTINGS_MODULE": "rftweb.settings.production",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "RFTWEB_DATA_DIR": tempfile.mkdtemp(prefix="rftweb-load-"),
        "LOG_LEVEL": "WARNING",
        # The people here are not brute-forcing anything; a real deployment keeps the defaults.
        "RFT_RATE_RUN_LAUNCH": "1000/hour",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def seed(users: int) -> dict:
    """ACCOUNTS accounts with datasets, tools, graders and finished runs with metrics; one live run;
    `users` logged-in sessions spread over the accounts (made directly: no password hashing)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils import timezone

    from experiments.models import Dataset, DatasetItem, Grader, MetricPoint, Run, RunStatus, Tool
    from experiments.services.api_tokens import create_token

    rng = random.Random(7)
    accounts = []
    for index in range(ACCOUNTS):
        user = get_user_model().objects.create_user(username=f"load{index}", password=secrets.token_urlsafe())
        datasets = []
        for number in range(3):
            dataset = Dataset.objects.create(
                owner=user, name=f"tickets-{number}", split="train", status="ready", item_count=200
            )
            DatasetItem.objects.bulk_create(
                DatasetItem(
                    dataset=dataset,
                    index=item,
                    line_number=item + 1,
                    data={"messages": [{"role": "user", "content": f"Ticket {item}: where is my order?"}]},
                    message_count=1,
                    char_count=30,
                )
                for item in range(200)
            )
            datasets.append(dataset)
        for number in range(3):
            Tool.objects.create(owner=user, name=f"lookup_{number}", url="https://tools.example.com/lookup")
        grader = Grader.objects.create(
            owner=user,
            name="exact",
            type="string_check",
            spec={
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            },
        )
        runs = []
        for number in range(4):
            run = Run.objects.create(
                owner=user,
                name=f"finished-{number}",
                base_model="tiny",
                train_dataset=datasets[0],
                grader=grader,
                status=RunStatus.SUCCEEDED,
                current_step=200,
                total_steps=200,
                # As recorded runs are: every point's seq is one of the run's events (<= last_seq).
                last_seq=200,
                config={"steps": 200},
            )
            now = timezone.now()
            MetricPoint.objects.bulk_create(
                MetricPoint(run=run, seq=step, step=step, key=key, value=rng.random(), wall_time=now)
                for step in range(1, 201)
                for key in ("reward", "kl", "loss", "entropy")
            )
            runs.append(run.pk)
        accounts.append(
            {
                "user": user,
                "token": create_token(user=user, name="load test").key,
                "datasets": [dataset.pk for dataset in datasets],
                "runs": runs,
                "grader": grader,
                "dataset": datasets[0],
            }
        )
    live_owner = accounts[0]
    live = Run.objects.create(
        owner=live_owner["user"],
        name="live",
        base_model="tiny",
        train_dataset=live_owner["dataset"],
        grader=live_owner["grader"],
        config={"prompts_per_step": 10, "group_size": 5},
    )
    Run.objects.filter(pk=live.pk).update(
        status=RunStatus.RUNNING,
        lease_owner=LEASE_OWNER,
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
    )
    sessions = []
    for index in range(users):
        account_index = index % ACCOUNTS
        user = accounts[account_index]["user"]
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        sessions.append({"cookie": store.session_key, "account": account_index})
    return {
        "accounts": [
            {"token": account["token"], "datasets": account["datasets"], "runs": account["runs"]}
            for account in accounts
        ],
        "sessions": sessions,
        "stream_run": live.pk,
        "stream_account": 0,
        "upload_token": accounts[1]["token"],
    }


class RssSampler(threading.Thread):
    """The server's processes (uvicorn's supervisor and workers), every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_process = 0
        self.peak_total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                sizes = [process.memory_info().rss for process in processes]
            except psutil.NoSuchProcess:
                sizes = []
            if sizes:
                self.peak_process = max(self.peak_process, max(sizes))
                self.peak_total = max(self.peak_total, sum(sizes))
            time.sleep(0.2)


def start_server(port: int, workers: int, env: dict, log_path: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """`manage.py serve` of the checkout at `cwd` (another checkout: a baseline to compare with)."""
    command = [sys.executable, "-m", "django", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log_path.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/accounts/login/")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server did not start:\n{log_path.read_text()}")


def stream_steps(run_id: int, *, rate: float, seconds: float, rollouts: int, report: dict) -> None:
    """The worker's side: `rate` steps per second through the recording service, for `seconds`."""
    from django.db import connection

    from experiments.services.recording import record_step

    total = max(1, round(rate * seconds))
    rng = random.Random(run_id)
    prepared = [(metrics_for(s, total, rng), rollouts_for(s, rollouts, rng)) for s in range(1, total + 1)]
    started = time.perf_counter()
    try:
        for step, (metrics, records) in enumerate(prepared, start=1):
            pause = started + (step - 1) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            if time.perf_counter() - started > seconds:
                break  # behind the asked rate: stop on time all the same (the watchers close after)
            record_step(
                run_id=run_id, lease_owner=LEASE_OWNER, step=step, metrics=metrics, trajectories=records
            )
            report["steps"] = step
    except BaseException as error:
        report["error"] = repr(error)
    finally:
        report["seconds"] = time.perf_counter() - started
        connection.close()


def prepare_upload(index: int, size: int, directory: Path) -> tuple[Path, str]:
    """The multipart body of one client's distinct JSONL file of `size` bytes, written before the test
    starts (the clients are other machines: making their files is not the server's load)."""
    boundary = f"loadboundary{index}"
    filler = "lorem ipsum dolor sit amet " * 370  # ~10 KB per item: long support tickets
    lines = []
    total = 0
    number = 0
    while total < size:
        line = (
            json.dumps(
                {
                    "messages": [{"role": "user", "content": f"[client {index} ticket {number}] {filler}"}],
                    "answer": str(number),
                }
            ).encode()
            + b"\n"
        )
        lines.append(line)
        total += len(line)
        number += 1
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nupload-{index}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload-{index}.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    path = directory / f"upload-{index}.multipart"
    with open(path, "wb") as out:
        out.write(head)
        for start in range(0, len(lines), 200):
            out.write(b"".join(lines[start : start + 200]))
        out.write(tail)
    return path, boundary


def upload(port: int, token: str, body: tuple[Path, str], results: list) -> None:
    """One client streaming its prepared multipart body to POST /api/v1/datasets/ (sendfile)."""
    path, boundary = body
    length = path.stat().st_size
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.putrequest("POST", "/api/v1/datasets/")
        for name, value in (
            ("Authorization", f"Token {token}"),
            ("Content-Type", f"multipart/form-data; boundary={boundary}"),
            ("Content-Length", str(length)),
            ("Accept", "application/json"),
        ):
            connection.putheader(name, value)
        connection.endheaders()
        with open(path, "rb") as file:
            connection.sock.sendfile(file)
        response = connection.getresponse()
        answer = response.read()
        status = response.status
        items = json.loads(answer).get("dataset", {}).get("item_count") if status == 201 else None
    except Exception as error:
        status, items, answer = None, None, repr(error).encode()
    results.append(
        {
            "status": status,
            "ended": time.time(),
            "seconds": time.perf_counter() - started,
            "items": items,
            "bytes": length,
            "detail": answer[:200],
        }
    )


def run_locust(host: str, args, config_path: Path, results_path: Path, csv_prefix: Path) -> None:
    command = [
        # locust (gevent) in another environment than the app's, if the `bench` extra is not installed
        os.environ.get("BENCH_LOCUST_PYTHON", sys.executable),
        "-m",
        "locust",
        "-f",
        str(ROOT / "bench" / "load_locustfile.py"),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        f"{args.seconds}s",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "5",
    ]
    env = {
        **os.environ,
        "BENCH_LOAD_CONFIG": str(config_path),
        "BENCH_LOAD_RESULTS": str(results_path),
        "BENCH_LOAD_TRACE": f"{csv_prefix}_trace.txt",
    }
    with open(f"{csv_prefix}.log", "wb") as log:
        subprocess.run(command, env=env, check=False, stdout=log, stderr=subprocess.STDOUT)


def read_stats(csv_prefix: Path) -> list[dict]:
    with open(f"{csv_prefix}_stats.csv") as handle:
        return list(csv.DictReader(handle))


def lost_points(run_id: int, watchers: list[dict]) -> tuple[int, int, int, list[float]]:
    """(stored events the watchers should have had, of them received, lost, delivery delays in ms:
    arrival at the watcher minus the event's commit)."""
    from experiments.models import RunEvent

    stored = dict(RunEvent.objects.filter(run_id=run_id).values_list("seq", "created_at"))
    expected = received = 0
    delays: list[float] = []
    for watcher in watchers:
        arrivals = dict(watcher["received"])
        wanted = {seq for seq in stored if seq > (watcher["after"] or 0)}
        got = wanted & arrivals.keys()
        expected += len(wanted)
        received += len(got)
        delays += [(arrivals[seq] - stored[seq].timestamp()) * 1000 for seq in got]
    return expected, received, expected - received, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--watchers", type=int, default=50, help="of the users: on the live run's page")
    parser.add_argument("--spawn-rate", type=float, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument(
        "--settle", type=float, default=15, help="the writer stops this long before the people"
    )
    parser.add_argument("--rate", type=float, default=20, help="steps per second on the live run")
    parser.add_argument("--rollouts", type=int, default=50, help="rollouts per step")
    parser.add_argument("--uploaders", type=int, default=20)
    parser.add_argument("--upload-mb", type=int, default=50)
    parser.add_argument("--upload-at", type=float, default=10, help="seconds into the test")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument(
        "--keep-trace", type=Path, help="copy the per-request trace (end time, ms, kind) to this file"
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="serve a worktree of this git ref instead of this checkout (to compare, alternate runs)",
    )
    args = parser.parse_args()

    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
    name = f"rftweb_load_{os.getpid()}"
    database_url = scratch_database(admin_url, name)
    server = None
    work = None
    env = None
    checkout = None
    try:
        if args.baseline:
            from bench_request_cpu import baseline_checkout

            checkout = baseline_checkout(args.baseline)
        env = configure(database_url, redis_url)
        config = seed(args.users)
        config["watchers"] = args.watchers
        work = Path(tempfile.mkdtemp(prefix="rftweb-load-results-"))
        bodies = [prepare_upload(index, args.upload_mb * MB, work) for index in range(args.uploaders)]
        config_path, results_path = work / "config.json", work / "watchers.json"
        config_path.write_text(json.dumps(config))
        port = free_port()
        server = start_server(port, args.workers, env, work / "server.log", cwd=checkout or ROOT)
        sampler = RssSampler(server.pid)
        sampler.start()
        rss_idle = sampler.root.memory_info().rss + sum(
            child.memory_info().rss for child in sampler.root.children(recursive=True)
        )
        print(
            f"server: manage.py serve (uvicorn){f' of {args.baseline}' if args.baseline else ''}, "
            f"{args.workers} worker(s), production settings, "
            f"PostgreSQL + Redis; idle rss {rss_idle / MB:.0f} MB"
        )
        print(
            f"load: {args.users} users ({args.watchers} on the live run's page with its WebSocket), "
            f"{args.seconds} s, 1-3 s between requests; live run {args.rate:g} steps/s x {args.rollouts} "
            f"rollouts; {args.uploaders} uploads of {args.upload_mb} MB at t={args.upload_at:g} s"
        )
        load_before = os.getloadavg()
        stream_report: dict = {}
        writer = threading.Thread(
            target=stream_steps,
            args=(config["stream_run"],),
            kwargs=dict(
                rate=args.rate,
                seconds=max(1.0, args.seconds - args.settle - 3),
                rollouts=args.rollouts,
                report=stream_report,
            ),
            daemon=True,
        )
        uploads: list[dict] = []
        uploaders = [
            threading.Thread(
                target=upload,
                args=(port, config["upload_token"], bodies[index], uploads),
                daemon=True,
            )
            for index in range(args.uploaders)
        ]

        phases: dict[str, float] = {}

        def start_uploads():
            time.sleep(args.upload_at)
            phases["uploads"] = time.time()
            for thread in uploaders:
                thread.start()

        people = threading.Thread(
            target=run_locust,
            args=(f"http://127.0.0.1:{port}", args, config_path, results_path, work / "locust"),
        )
        phases["start"] = time.time()
        people.start()
        time.sleep(3)  # the watchers connect first
        writer.start()
        threading.Thread(target=start_uploads, daemon=True).start()
        loads = []
        while people.is_alive():
            loads.append(os.getloadavg()[0])
            people.join(timeout=5)
        writer.join()
        for thread in uploaders:
            thread.join(timeout=600)
        sampler.stop.set()
        sampler.join()

        stats = read_stats(work / "locust")
        watchers = json.loads(results_path.read_text()) if results_path.exists() else []
        expected, received, lost, delays = lost_points(config["stream_run"], watchers)
        print(
            f"machine: {os.cpu_count()} CPUs; load average before {load_before[0]:.1f}, "
            f"during {min(loads, default=0):.1f}-{max(loads, default=0):.1f} (shared with other work: figures are noisy)"
        )
        print(
            f"live run: {stream_report.get('steps', 0)} steps written in {stream_report.get('seconds', 0):.1f} s "
            f"({stream_report.get('steps', 0) / max(stream_report.get('seconds', 1), 1e-9):.1f} steps/s of "
            f"{args.rate:g} asked){'; writer error: ' + stream_report['error'] if 'error' in stream_report else ''}"
        )
        print(f"{'kind':<28}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>8}")
        page_rows = []
        for row in stats:
            if row["Name"] == "Aggregated":
                continue
            print(
                f"{row['Type'] + ' ' + row['Name']:<28}{row['Request Count']:>9}{row['Failure Count']:>8}"
                f"{row['50%']:>9}{row['95%']:>9}{row['99%']:>9}{float(row['Requests/s']):>8.1f}"
            )
            if row["Type"] != "WS":
                page_rows.append(row)
        total = next(row for row in stats if row["Name"] == "Aggregated")
        errors = sum(int(row["Failure Count"]) for row in stats if row["Name"] != "Aggregated")
        print(
            f"{'all':<28}{total['Request Count']:>9}{total['Failure Count']:>8}{total['50%']:>9}"
            f"{total['95%']:>9}{total['99%']:>9}{float(total['Requests/s']):>8.1f}"
        )
        # p95 over every page and API request, from the trace locust writes of each one. The per-kind
        # mixture (from each kind's percentile columns) stays printed: it rounds every kind's
        # distribution down to its percentile marks, so it reads 15-60 % above the exact figure.
        mixture_p95 = _combined_p95(work / "locust", exclude_types={"WS"})
        # (Requests still finishing once locust stops counting, during its stop timeout, are left out.)
        traced = sorted(
            milliseconds
            for ended, milliseconds in _read_trace(work / "locust_trace.txt")
            if ended <= phases["start"] + args.seconds
        )
        pages_p95 = _quantile(traced, 0.95) if traced else mixture_p95
        print(
            f"pages and API: p95 {pages_p95:.0f} ms over {len(traced):,} requests (each one's time); "
            f"estimated from the per-kind percentiles instead: {mixture_p95:.0f} ms"
        )
        upload_errors = sum(1 for result in uploads if result["status"] != 201)
        if uploads:
            times = sorted(result["seconds"] for result in uploads)
            print(
                f"uploads: {len(uploads)} x {args.upload_mb} MB, {sum(r['status'] == 201 for r in uploads)} imported "
                f"({sum(r['items'] or 0 for r in uploads):,} items), {upload_errors} failed; "
                f"{times[0]:.1f}-{times[-1]:.1f} s each"
            )
            for result in uploads:
                if result["status"] != 201:
                    print(f"  upload failed: {result['status']} {result['detail']!r}")
        _print_phases(work / "locust_trace.txt", phases, uploads)
        if args.keep_trace and (work / "locust_trace.txt").exists():
            shutil.copyfile(work / "locust_trace.txt", args.keep_trace)
            print(f"trace: {args.keep_trace} (test start {phases['start']:.3f})")
        ws_errors = sum(len(watcher["errors"]) for watcher in watchers if watcher.get("connected", True))
        unconnected = sum(1 for watcher in watchers if not watcher.get("connected", True))
        print(
            f"websocket: {len(watchers)} watchers ({unconnected} could not connect: all their points lost), "
            f"{expected:,} points stored after their connect, "
            f"{received:,} received, {lost:,} lost (not received {args.settle:g} s after the last write); "
            f"{ws_errors} dropped connections"
        )
        if delays:
            delays.sort()
            print(
                "websocket delivery (commit to arrival): "
                f"p50 {_quantile(delays, 0.5):.0f} ms, p95 {_quantile(delays, 0.95):.0f} ms, "
                f"max {delays[-1]:.0f} ms"
            )
        print(
            f"web rss: idle {rss_idle / MB:.0f} MB, peak {sampler.peak_process / MB:.0f} MB (largest process), "
            f"{sampler.peak_total / MB:.0f} MB (all {args.workers + (1 if args.workers > 1 else 0)} processes)"
        )
        print(
            f"goal: p95 < 300 ms {'met' if pages_p95 < 300 else 'MISSED'}, 0 errors "
            f"{'met' if errors + upload_errors == 0 else 'MISSED'}, 0 lost points {'met' if lost == 0 else 'MISSED'}, "
            f"rss < 1 GB {'met' if sampler.peak_total < 1024 * MB else 'MISSED'}"
        )
        print(
            f"load: p95 {pages_p95:.0f} ms, errors {errors + upload_errors}, lost points {lost}, "
            f"peak rss {sampler.peak_total / MB:.0f} MB"
        )
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, name)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)  # the uploads' bodies: a GB at the figures above
        if env is not None:
            shutil.rmtree(env["RFTWEB_DATA_DIR"], ignore_errors=True)  # the stored uploads: a GB more
        if checkout is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False
            )


def _print_phases(trace_path: Path, phases: dict[str, float], uploads: list[dict]) -> None:
    """p95 of pages and API in the test's phases: while the people arrive (the first 10 s), while the
    uploads are received and imported, and the rest."""
    samples = _read_trace(trace_path)
    if not samples:
        return
    start = phases["start"]
    upload_start = phases.get("uploads")
    upload_end = max((result["ended"] for result in uploads), default=None)
    buckets: dict[str, list[float]] = {"arriving": [], "uploads": [], "rest": []}
    for ended, milliseconds in samples:
        if ended - start < 10:
            buckets["arriving"].append(milliseconds)
        elif upload_start is not None and upload_end is not None and upload_start <= ended <= upload_end:
            buckets["uploads"].append(milliseconds)
        else:
            buckets["rest"].append(milliseconds)
    window = (
        f"t={upload_start - start:.0f}-{upload_end - start:.0f} s" if upload_start and upload_end else "none"
    )
    parts = []
    for name, label in (
        ("arriving", "people arriving (first 10 s)"),
        ("uploads", f"uploads in progress ({window})"),
        ("rest", "the rest"),
    ):
        values = sorted(buckets[name])
        if values:
            parts.append(f"{label} p95 {_quantile(values, 0.95):.0f} ms ({len(values)} requests)")
    print("by phase: " + "; ".join(parts))


def _read_trace(trace_path: Path) -> list[tuple[float, float]]:
    """(when it ended, its time in ms) for every page and API request, as locust recorded them."""
    if not trace_path.exists():
        return []
    samples = []
    for line in trace_path.read_text().splitlines():
        ended, milliseconds = line.split()[:2]
        samples.append((float(ended), float(milliseconds)))
    return samples


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank q-quantile of sorted values."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _combined_p95(csv_prefix: Path, *, exclude_types: set[str]) -> float:
    """p95 over every page and API request (WebSocket connects excluded)."""
    rows = [
        row
        for row in read_stats(csv_prefix)
        if row["Name"] != "Aggregated" and row["Type"] not in exclude_types and int(row["Request Count"])
    ]
    return _mixture_quantile(rows, 0.95)


def _mixture_quantile(rows: list[dict], q: float) -> float:
    """The q-quantile of the union of several kinds' latencies, from each kind's percentiles (a step
    CDF per kind, mixed by request counts)."""
    marks = [
        (0.50, "50%"),
        (0.66, "66%"),
        (0.75, "75%"),
        (0.80, "80%"),
        (0.90, "90%"),
        (0.95, "95%"),
        (0.98, "98%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (1.0, "100%"),
    ]
    total = sum(int(row["Request Count"]) for row in rows)
    if not total:
        return 0.0
    candidates = sorted({float(row[label]) for row in rows for _, label in marks})

    def share_at_or_below(value: float) -> float:
        below = 0.0
        for row in rows:
            count = int(row["Request Count"])
            fraction = 0.0
            for quantile, label in marks:
                if float(row[label]) <= value:
                    fraction = quantile
            below += fraction * count
        return below / total

    for value in candidates:
        if share_at_or_below(value) >= q:
            return value
    return candidates[-1]


if __name__ == "__main__":
    main()
