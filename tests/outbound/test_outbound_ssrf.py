"""SSRF: the resolved address is checked at connect time. Only the DNS resolver is patched."""

import asyncio
import json

import pytest

from tests.http_test_server import Reply
from trainer.interfaces import ToolCall
from trainer.outbound import client as outbound_client
from trainer.outbound.client import BlockedAddressError, OutboundClient
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

PRODUCTION = OutboundPolicy()


@pytest.fixture
def fake_dns(monkeypatch):
    answers: dict[str, list[str]] = {}
    lookups: list[str] = []

    async def resolve(host, port):
        lookups.append(host)
        return list(answers[host])

    monkeypatch.setattr(outbound_client, "resolve_host", resolve)
    return answers, lookups


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.0.0.7", "::1", "::ffff:127.0.0.1"])
async def test_hostname_resolving_to_internal_address_is_refused(scripted_server, fake_dns, address):
    answers, _ = fake_dns
    answers["tools.example.com"] = [address]
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "reached"}')
    endpoint = ToolEndpoint(url=scripted_server.url("/t", host="tools.example.com"))
    executor = HttpToolExecutor({"t": endpoint}, PRODUCTION, max_retries=3, retry_backoff_s=0.01)
    try:
        [result] = await executor.execute(
            [ToolCall(call_id="c", name="t", arguments="{}")], item={}, trace_id="trace_x"
        )
    finally:
        await executor.aclose()
    assert not result.ok and result.error_type == "blocked"
    assert result.attempts == 1  # a refusal is final, never retried
    assert address in result.error
    assert scripted_server.requests == []


async def test_ip_literal_urls_are_checked_too(scripted_server):
    async with OutboundClient(policy=PRODUCTION) as client:
        with pytest.raises(BlockedAddressError):
            await client.request("GET", scripted_server.url("/t"))
        with pytest.raises(BlockedAddressError):
            await client.request("GET", f"http://[::ffff:7f00:1]:{scripted_server.port}/t")
        with pytest.raises(BlockedAddressError):
            await client.request(
                "GET", f"http://2130706433:{scripted_server.port}/t"
            )  # 127.0.0.1 as a number
    assert scripted_server.requests == []


async def test_one_refused_answer_among_public_ones_refuses_the_host(fake_dns):
    answers, _ = fake_dns
    answers["mixed.example.com"] = ["93.184.216.34", "127.0.0.1"]
    async with OutboundClient(policy=PRODUCTION) as client:
        with pytest.raises(BlockedAddressError, match="127.0.0.1"):
            await client.request("GET", "http://mixed.example.com/")


async def test_redirect_to_loopback_is_refused(scripted_server, second_server, fake_dns):
    answers, _ = fake_dns
    answers["tools.example.com"] = ["127.0.0.1"]
    second_server.routes["/admin"] = lambda request: Reply(body=b'{"output": "internal secret"}')
    scripted_server.routes["/t"] = lambda request: Reply(
        status=307, headers={"Location": second_server.url("/admin")}
    )
    # The tool host itself is trusted by name; the redirect target is not.
    policy = OutboundPolicy(allowlist=("tools.example.com",))
    endpoint = ToolEndpoint(url=scripted_server.url("/t", host="tools.example.com"))
    executor = HttpToolExecutor({"t": endpoint}, policy, retry_backoff_s=0.01)
    try:
        [result] = await executor.execute(
            [ToolCall(call_id="c", name="t", arguments="{}")], item={}, trace_id="t1"
        )
    finally:
        await executor.aclose()
    assert not result.ok and result.error_type == "blocked"
    assert "redirect" in result.error
    assert len(scripted_server.requests) == 1
    assert second_server.requests == []
    assert "internal secret" not in result.output


async def test_allowlisted_cidr_passes_and_keeps_the_host_name(scripted_server, fake_dns):
    answers, lookups = fake_dns
    answers["tools.internal.example"] = ["127.0.0.1"]
    scripted_server.routes["/t"] = lambda request: Reply(
        body=json.dumps({"output": request.headers["host"]}).encode()
    )
    policy = OutboundPolicy(allowlist=("127.0.0.0/8",))
    endpoint = ToolEndpoint(url=scripted_server.url("/t", host="tools.internal.example"))
    executor = HttpToolExecutor({"t": endpoint}, policy)
    try:
        [result] = await executor.execute(
            [ToolCall(call_id="c", name="t", arguments="{}")], item={}, trace_id="t1"
        )
    finally:
        await executor.aclose()
    assert result.ok, result.error
    assert result.output == f"tools.internal.example:{scripted_server.port}"
    assert lookups == ["tools.internal.example"]


async def test_connect_uses_the_checked_address_not_a_second_lookup(scripted_server, fake_dns):
    """DNS rebinding: each new connection resolves exactly once and dials the address it checked, so
    an answer that changes later is checked again instead of slipping past an earlier check."""
    answers, lookups = fake_dns
    answers["rebind.example.com"] = ["127.0.0.1"]
    policy = OutboundPolicy(allowlist=("127.0.0.1/32",))
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "ok"}')
    async with OutboundClient(policy=policy) as client:
        response = await client.request("POST", scripted_server.url("/t", host="rebind.example.com"))
        assert response.status_code == 200
        answers["rebind.example.com"] = ["10.0.0.1"]  # the next connection must be re-checked
        await client.aclose()
        with pytest.raises(BlockedAddressError):
            await client.request("POST", scripted_server.url("/t", host="rebind.example.com"))
    assert lookups == ["rebind.example.com", "rebind.example.com"]


async def test_a_kept_alive_connection_is_resolved_and_vetted_once_not_per_request(scripted_server, fake_dns):
    """Keep-alive: calls to one host reuse the connection without another lookup or check; the next
    new connection (here after the idle one expired) is resolved and vetted again."""
    answers, lookups = fake_dns
    answers["tools.example.com"] = ["127.0.0.1"]
    policy = OutboundPolicy(allowlist=("127.0.0.1/32",))
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "ok"}')
    url = scripted_server.url("/t", host="tools.example.com")
    async with OutboundClient(policy=policy, keepalive_expiry_s=0.3) as client:
        for _ in range(5):
            assert (await client.request("POST", url)).status_code == 200
        assert lookups == ["tools.example.com"]
        assert client.connection_counts() == (1, 1)
        answers["tools.example.com"] = ["10.0.0.1"]
        await asyncio.sleep(0.5)
        with pytest.raises(BlockedAddressError):
            await client.request("POST", url)
    assert lookups == ["tools.example.com", "tools.example.com"]


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "http://user:pw@example.com/", "not a url", "http:///x"],
)
async def test_non_http_urls_are_refused(url):
    async with OutboundClient(policy=OutboundPolicy(allow_loopback=True)) as client:
        with pytest.raises(BlockedAddressError) as info:
            await client.request("GET", url)
    assert "pw" not in str(info.value)
