"""`policy_http_client`: an httpx2 client (for the mcp SDK and other streaming protocols) under the same
SSRF policy and network backend as the tool client. Real local servers; only the resolver is patched."""

from __future__ import annotations

import pytest

from tests.http_test_server import Reply
from trainer.outbound import client as outbound_client
from trainer.outbound.client import BlockedAddressError, policy_http_client
from trainer.outbound.policy import OutboundPolicy

DEV = OutboundPolicy(allow_loopback=True)


async def test_requests_and_streamed_responses_go_through(scripted_server):
    scripted_server.routes["/events"] = lambda request: Reply(
        body=iter([b"data: one\n\n", b"data: two\n\n"]), content_type="text/event-stream"
    )
    async with policy_http_client(DEV) as client:
        async with client.stream("GET", scripted_server.url("/events")) as response:
            chunks = [chunk async for chunk in response.aiter_bytes()]
    assert response.status_code == 200
    assert b"".join(chunks) == b"data: one\n\ndata: two\n\n"


async def test_the_policy_is_enforced_at_connect_time(scripted_server, monkeypatch):
    lookups: list[str] = []

    async def resolve(host, port):
        lookups.append(host)
        return ["10.0.0.8"]

    monkeypatch.setattr(outbound_client, "resolve_host", resolve)
    async with policy_http_client(OutboundPolicy()) as client:
        with pytest.raises(BlockedAddressError, match="127.0.0.1"):
            await client.get(scripted_server.url("/t"))
        with pytest.raises(BlockedAddressError, match="10.0.0.8"):
            await client.get(f"http://mcp.example.com:{scripted_server.port}/mcp")
    assert lookups == ["mcp.example.com"]
    assert scripted_server.requests == []


async def test_no_cookies_no_redirects_no_environment_proxy(scripted_server, second_server, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{second_server.port}")
    scripted_server.routes["/session"] = lambda request: Reply(
        body=b"{}", headers={"Set-Cookie": "sid=abc; Path=/"}
    )
    scripted_server.routes["/moved"] = lambda request: Reply(
        status=307, headers={"Location": second_server.url("/elsewhere")}
    )
    async with policy_http_client(DEV) as client:
        assert (await client.get(scripted_server.url("/session"))).status_code == 200
        assert (await client.get(scripted_server.url("/session"))).status_code == 200
        moved = await client.get(scripted_server.url("/moved"))
    assert moved.status_code == 307  # returned, not followed
    assert [request.headers.get("cookie") for request in scripted_server.requests] == [None, None, None]
    assert second_server.requests == []  # neither the proxy nor the redirect target was contacted
