"""A real lifecycle HTTP server for the environment tests: start/end endpoints that keep a log.

It counts the environments alive at once (the max is what the cap tests check), records every start
and end per trace_id, answers a start with a context naming the trace, and fails the start of an
item that says so.
"""

from __future__ import annotations

import json
import threading
import time

from tests.http_test_server import Reply, ScriptedServer


class EnvironmentServer:
    def __init__(self, *, start_delay_s: float = 0.0, end_delay_s: float = 0.0) -> None:
        self.start_delay_s = start_delay_s
        self.end_delay_s = end_delay_s
        self.server = ScriptedServer()
        self.lock = threading.Lock()
        self.live: set[str] = set()
        self.max_live = 0
        self.starts: list[str] = []
        self.ends: list[dict] = []
        self.server.routes["/env/start"] = self._start
        self.server.routes["/env/end"] = self._end

    @property
    def start_url(self) -> str:
        return self.server.url("/env/start")

    @property
    def end_url(self) -> str:
        return self.server.url("/env/end")

    def _start(self, request) -> Reply:
        body = json.loads(request.body)
        trace = body["trace_id"]
        with self.lock:
            self.starts.append(trace)
            self.live.add(trace)
            self.max_live = max(self.max_live, len(self.live))
        time.sleep(self.start_delay_s)
        if body["item"].get("fail_start"):
            return Reply(status=503, body=b'{"error": "no sandbox available"}')
        return Reply(body=json.dumps({"context": f"sandbox for {trace} at /srv/{trace[-6:]}"}).encode())

    def _end(self, request) -> Reply:
        body = json.loads(request.body)
        time.sleep(self.end_delay_s)
        with self.lock:
            self.ends.append(body)
            self.live.discard(body["trace_id"])
        return Reply(body=b"{}")

    def ends_by_trace(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for end in self.ends:
            counts[end["trace_id"]] = counts.get(end["trace_id"], 0) + 1
        return counts

    def close(self) -> None:
        self.server.close()
