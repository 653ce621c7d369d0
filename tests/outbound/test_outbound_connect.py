"""Connecting: a dead address must not eat the deadline, no proxy from the environment, no Unix sockets.

A "dead" address is a real listening socket on 127.0.0.2 whose accept queue is full: the kernel
drops further SYNs, so a connect to it hangs exactly like one to a host that has gone away. Only
the DNS resolver is patched (to put that address first).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.http_test_server import Reply, ScriptedServer
from trainer.interfaces import ToolCall
from trainer.outbound import client as outbound_client
from trainer.outbound.client import OutboundClient, OutboundConnectionError, OutboundTimeoutError
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

DEV = OutboundPolicy(allow_loopback=True)


def dead_listener(port: int) -> list[socket.socket]:
    """A listener on 127.0.0.2:`port` that never accepts, with its backlog filled: connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", port))
    listener.listen(0)
    held = [listener]
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.2", port))
        except BlockingIOError:
            pass
        held.append(filler)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.2", port))  # the premise of these tests: it really hangs
    finally:
        probe.close()
    return held


@pytest.fixture
def dead_first(monkeypatch, scripted_server) -> Iterator[tuple[ScriptedServer, list[str]]]:
    """`tools.test` resolves to a dead address first, then to the live scripted server."""
    held = dead_listener(scripted_server.port)
    lookups: list[str] = []

    async def resolve(host, port):
        lookups.append(host)
        return ["127.0.0.2", "127.0.0.1"]

    monkeypatch.setattr(outbound_client, "resolve_host", resolve)
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "live"}')
    yield scripted_server, lookups
    for sock in held:
        sock.close()


async def test_a_dead_first_address_does_not_eat_the_deadline(dead_first):
    server, lookups = dead_first
    endpoint = ToolEndpoint(url=server.url("/t", host="tools.test"), timeout_s=2.0)
    executor = HttpToolExecutor({"t": endpoint}, DEV, max_retries=0)
    started = time.perf_counter()
    try:
        [result] = await executor.execute(
            [ToolCall(call_id="c", name="t", arguments="{}")], item={}, trace_id="trace_d"
        )
    finally:
        await executor.aclose()
    elapsed = time.perf_counter() - started
    assert result.ok, result.error
    assert result.output == "live" and result.attempts == 1
    # The second address starts after the happy-eyeballs delay (0.25 s), far inside the 2 s deadline.
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert lookups == ["tools.test"]  # one lookup for both addresses
    assert server.requests[0].headers["host"] == f"tools.test:{server.port}"


async def test_only_dead_addresses_fail_on_the_per_address_connect_timeout(scripted_server, monkeypatch):
    held = dead_listener(scripted_server.port)

    async def resolve(host, port):
        return ["127.0.0.2"]

    monkeypatch.setattr(outbound_client, "resolve_host", resolve)
    try:
        async with OutboundClient(policy=DEV, connect_timeout_s=0.3) as client:
            started = time.perf_counter()
            with pytest.raises(OutboundConnectionError):
                await client.request("GET", scripted_server.url("/t", host="tools.test"), timeout_s=5)
            assert time.perf_counter() - started < 2.0
            # And with no connect timeout of its own, the request's deadline still bounds it.
        async with OutboundClient(policy=DEV, connect_timeout_s=30) as client:
            started = time.perf_counter()
            with pytest.raises(OutboundTimeoutError, match="within 0.5 s"):
                await client.request("GET", scripted_server.url("/t", host="tools.test"), timeout_s=0.5)
            assert time.perf_counter() - started < 1.5
    finally:
        for sock in held:
            sock.close()


async def test_every_refused_address_is_reported(scripted_server, monkeypatch):
    # Two addresses where nothing listens on the port: both are tried, both reasons are shown.
    async def resolve(host, port):
        return ["127.0.0.3", "127.0.0.4"]

    monkeypatch.setattr(outbound_client, "resolve_host", resolve)
    async with OutboundClient(policy=DEV) as client:
        with pytest.raises(OutboundConnectionError) as info:
            await client.request("GET", scripted_server.url("/t", host="tools.test"), timeout_s=5)
    assert "127.0.0.3" in info.value.message and "127.0.0.4" in info.value.message


async def test_proxies_from_the_environment_are_never_used(scripted_server, second_server, monkeypatch):
    """A proxy set in the environment would see (and could redirect) every tool call: ignored."""
    second_server.routes["/t"] = lambda request: Reply(body=b'{"output": "via proxy"}')
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "direct"}')
    proxy = f"http://127.0.0.1:{second_server.port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with OutboundClient(policy=DEV) as client:
        response = await client.request("POST", scripted_server.url("/t"), content=b"{}")
    assert response.body == b'{"output": "direct"}'
    assert second_server.requests == []
    assert scripted_server.requests[0].path == "/t"  # origin form, not a proxy's absolute form
