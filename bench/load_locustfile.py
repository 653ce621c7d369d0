"""The users of bench_load.py (locust): browsers and run watchers with a WebSocket open.

Not run by itself: bench_load.py writes the accounts (session cookies, tokens, object ids) to the JSON
file named by BENCH_LOAD_CONFIG, starts `locust -f` on this file, and reads what the run watchers
received from BENCH_LOAD_RESULTS when it ends.

- Browser: a person clicking through the app, 1-3 s between requests: dashboard, lists, a dataset's
  page, a finished run's page and rollouts, and the API (runs, datasets, a run's metrics).
- RunWatcher: a person watching the live run: loads its page and chart history (whose answer carries
  `last_seq`), opens the run's WebSocket with `?after=<last_seq>` as the page's script does, keeps it
  open for the whole test and records every seq it receives; meanwhile reloads the API now and then.

FastHttpUser (geventhttpclient), not HttpUser (requests): the load generator shares the machine with the
server, and requests costs it several times the CPU per request. The session cookie goes in each
request's headers.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import gevent
import websocket
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser

CONFIG = json.loads(open(os.environ["BENCH_LOAD_CONFIG"]).read())
TRACE_PATH = os.environ.get("BENCH_LOAD_TRACE")  # every page and API request: when it ended, its time
RESULTS_PATH = os.environ["BENCH_LOAD_RESULTS"]
WATCHERS: list[RunWatcher] = []
_lock = threading.Lock()
_next_session = 0


def _get(user, path: str, *, headers: dict, name: str) -> None:
    """GET that counts anything but a 200 as an error: not followed redirects (a lost session would
    otherwise land on the login page and count as a success)."""
    with user.client.get(
        path, headers=headers, name=name, allow_redirects=False, catch_response=True
    ) as response:
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}")


def _session():
    """The next pre-made login (session cookie of one of the accounts) and that account."""
    global _next_session
    with _lock:
        index = _next_session
        _next_session += 1
    login = CONFIG["sessions"][index % len(CONFIG["sessions"])]
    return login["cookie"], CONFIG["accounts"][login["account"]]


if TRACE_PATH:
    _trace = open(TRACE_PATH, "w", buffering=1024 * 1024)

    @events.request.add_listener
    def _traced(request_type, name, response_time, **kwargs):
        if request_type != "WS":
            _trace.write(f"{time.time():.3f} {response_time:.1f} {name}\n")

    @events.quitting.add_listener
    def _close_trace(**kwargs):
        _trace.close()


class Browser(FastHttpUser):
    wait_time = between(1, 3)
    weight = 3

    def on_start(self):
        cookie, self.account = _session()
        self.page_headers = {"Cookie": f"sessionid={cookie}"}
        self.api_headers = {"Authorization": f"Token {self.account['token']}", "Accept": "application/json"}

    @task(3)
    def dashboard(self):
        _get(self, "/", headers=self.page_headers, name="page: dashboard")

    @task(3)
    def lists(self):
        path, name = random.choice(
            [
                ("/runs/", "page: runs list"),
                ("/datasets/", "page: datasets list"),
                ("/tools/", "page: tools list"),
                ("/graders/", "page: graders list"),
            ]
        )
        _get(self, path, headers=self.page_headers, name=name)

    @task(3)
    def dataset(self):
        dataset = random.choice(self.account["datasets"])
        _get(self, f"/datasets/{dataset}/", headers=self.page_headers, name="page: dataset")

    @task(3)
    def run_page(self):
        run = random.choice(self.account["runs"])
        _get(self, f"/runs/{run}/", headers=self.page_headers, name="page: run")
        _get(
            self,
            f"/api/v1/runs/{run}/series/?x=step&max_points=2000&keys=reward,kl,loss",
            headers={**self.page_headers, "Accept": "application/json"},
            name="api: run series",
        )

    @task(1)
    def rollouts(self):
        run = random.choice(self.account["runs"])
        _get(self, f"/runs/{run}/rollouts/", headers=self.page_headers, name="page: rollouts")

    @task(3)
    def api(self):
        path, name = random.choice(
            [
                ("/api/v1/runs/", "api: runs"),
                ("/api/v1/datasets/", "api: datasets"),
                (f"/api/v1/runs/{random.choice(self.account['runs'])}/metrics/", "api: run metrics"),
            ]
        )
        _get(self, path, headers=self.api_headers, name=name)


class RunWatcher(FastHttpUser):
    wait_time = between(1, 3)
    fixed_count = CONFIG["watchers"]

    def on_start(self):
        self.cookie, self.account = _session_of(CONFIG["stream_account"])
        self.page_headers = {"Cookie": f"sessionid={self.cookie}"}
        self.run_id = CONFIG["stream_run"]
        self.received: dict[int, float] = {}  # seq -> when it arrived (epoch s)
        self.after = None
        self.errors: list[str] = []
        self.closed = False
        _get(self, f"/runs/{self.run_id}/", headers=self.page_headers, name="page: run (live)")
        with self.client.get(
            f"/api/v1/runs/{self.run_id}/series/?x=step&max_points=2000&keys=reward,kl,loss",
            headers={**self.page_headers, "Accept": "application/json"},
            name="api: run series (live)",
            catch_response=True,
        ) as response:
            self.after = int(response.json().get("last_seq") or 0) if response.ok else 0
        url = self.host.replace("http", "ws", 1) + f"/ws/runs/{self.run_id}/?after={self.after}"
        started = time.perf_counter()
        try:
            self.socket = websocket.create_connection(
                url, origin=self.host, cookie=f"sessionid={self.cookie}", timeout=30
            )
        except Exception as error:
            self._fire("ws: connect", started, error)
            self.socket = None
            self.errors.append(f"connect: {type(error).__name__}: {error}")
            with _lock:
                WATCHERS.append(self)  # its points count as lost
            return
        self._fire("ws: connect", started, None)
        with _lock:
            WATCHERS.append(self)
        self.reader = gevent.spawn(self._read)

    def _fire(self, name, started, error):
        events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def _read(self):
        while not self.closed:
            try:
                message = self.socket.recv()
            except Exception as error:
                if not self.closed:
                    self.errors.append(f"{type(error).__name__}: {error}")
                    self._fire("ws: dropped", time.perf_counter(), error)
                return
            if not message:
                continue
            now = time.time()
            for event in json.loads(message).get("events", []):
                self.received.setdefault(event["seq"], now)

    @task
    def reload_api(self):
        _get(
            self,
            f"/api/v1/runs/{self.run_id}/metrics/",
            headers={"Authorization": f"Token {self.account['token']}", "Accept": "application/json"},
            name="api: run metrics (live)",
        )

    def on_stop(self):
        self.closed = True
        if getattr(self, "socket", None) is not None:
            self.socket.close()


def _session_of(account_index: int):
    global _next_session
    logins = [login for login in CONFIG["sessions"] if login["account"] == account_index]
    with _lock:
        index = _next_session
        _next_session += 1
    return logins[index % len(logins)]["cookie"], CONFIG["accounts"][account_index]


@events.quitting.add_listener
def _write_results(environment, **kwargs):
    with _lock:
        results = [
            {
                "after": watcher.after,
                "received": sorted(watcher.received.items()),
                "errors": watcher.errors,
                "connected": watcher.socket is not None,
            }
            for watcher in WATCHERS
        ]
    with open(RESULTS_PATH, "w") as handle:
        json.dump(results, handle)
