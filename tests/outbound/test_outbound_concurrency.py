"""Hundreds of concurrent tool calls (one turn of a large rollout batch) through the real client.

A behaviour test with a generous bound, not a benchmark: one wave of 256 calls to a server that takes
100 ms per call used to cost 1.3-6 s on a 2-core machine when the client was one httpcore pool (it
re-examined every connection for every queued request); it takes well under a second there.
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.http_test_server import Reply, ScriptedServer
from trainer.interfaces import ToolCall
from trainer.outbound.client import OutboundClient
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

DEV = OutboundPolicy(allow_loopback=True)
CALLS = 256
LATENCY_S = 0.1
BOUND_S = 3.0


class SlowToolServer:
    """A keep-alive tool server that answers every call after 100 ms and records the client ports."""

    def __init__(self) -> None:
        self.client_ports: set[int] = set()
        self.calls = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(LATENCY_S)
                with lock:
                    server.client_ports.add(self.client_address[1])
                    server.calls += 1
                payload = json.dumps({"output": f"done {body['call_id']}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # 256 simultaneous connects must not overflow the backlog
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tool"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_server() -> Iterator[SlowToolServer]:
    server = SlowToolServer()
    yield server
    server.close()


async def one_wave(executor: HttpToolExecutor, wave: int) -> float:
    started = time.perf_counter()
    batches = await asyncio.gather(
        *(
            executor.execute(
                [ToolCall(call_id=f"call_{wave}_{i}", name="tool", arguments="{}")],
                item={},
                trace_id=f"trace_{wave}_{i}",
            )
            for i in range(CALLS)
        )
    )
    elapsed = time.perf_counter() - started
    results = [batch[0] for batch in batches]
    assert [r.error for r in results if not r.ok] == []
    assert [r.output for r in results] == [f"done call_{wave}_{i}" for i in range(CALLS)]
    return elapsed


async def test_256_concurrent_calls_finish_quickly_and_reuse_connections(slow_server):
    client = OutboundClient(policy=DEV)
    executor = HttpToolExecutor({"tool": ToolEndpoint(url=slow_server.url)}, DEV, client=client)
    try:
        # The first wave opens the connections; the second reuses them (the case that was slowest).
        first = await one_wave(executor, 0)
        second = await one_wave(executor, 1)
    finally:
        await client.aclose()
    assert slow_server.calls == 2 * CALLS
    assert first < BOUND_S, f"{CALLS} concurrent calls of {LATENCY_S * 1000:.0f} ms took {first:.2f} s"
    assert second < BOUND_S, f"{CALLS} concurrent calls on kept-alive connections took {second:.2f} s"
    # Never more connections than the limit, and kept-alive connections are reused rather than
    # reopened for every call.
    assert len(slow_server.client_ports) <= 256


async def test_requests_beyond_the_connection_limit_wait_for_a_free_connection(slow_server):
    client = OutboundClient(policy=DEV, max_connections=4)
    try:
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(client.request("POST", slow_server.url, content=b'{"call_id": "c"}') for _ in range(8))
        )
        elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 for r in responses)
        assert client.connection_counts() == (4, 4)
    finally:
        await client.aclose()
    # Two rounds of four on the same four connections.
    assert len(slow_server.client_ports) == 4
    assert elapsed >= 2 * LATENCY_S


async def test_sequential_calls_reuse_one_kept_alive_connection_per_origin():
    first, second = SlowToolServer(), SlowToolServer()
    client = OutboundClient(policy=DEV)
    try:
        for _ in range(4):
            for server in (first, second):
                response = await client.request("POST", server.url, content=b'{"call_id": "c"}')
                assert response.status_code == 200
    finally:
        await client.aclose()
        first.close()
        second.close()
    assert (first.calls, second.calls) == (4, 4)
    assert len(first.client_ports) == 1 and len(second.client_ports) == 1


async def test_cookies_set_by_a_tool_server_are_not_sent_back():
    """There is no cookie jar: one call's Set-Cookie cannot follow later calls (of any rollout)."""
    seen: list[str | None] = []
    server = ScriptedServer()

    def handler(request):
        seen.append(request.headers.get("cookie"))
        return Reply(body=b'{"output": "ok"}', headers={"Set-Cookie": "session=abc; Path=/"})

    server.routes["/t"] = handler
    try:
        async with OutboundClient(policy=DEV) as client:
            for _ in range(2):
                assert (await client.request("POST", server.url("/t"), content=b"{}")).status_code == 200
    finally:
        server.close()
    assert seen == [None, None]
