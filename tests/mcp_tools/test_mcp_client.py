"""MCP tools through the official SDK against a real MCP server process, under the outbound policy."""

from __future__ import annotations

import asyncio
import time

import pytest

from trainer.interfaces import ToolCall
from trainer.outbound.client import BlockedAddressError
from trainer.outbound.mcp import McpServerEndpoint, McpToolExecutor, RoutingToolExecutor, list_tools
from trainer.outbound.policy import OutboundPolicy

LOOPBACK = OutboundPolicy(allow_loopback=True)
SECRET = "Bearer very-secret-token-1234"


def endpoint(server, **kwargs) -> McpServerEndpoint:
    return McpServerEndpoint(url=server.url, headers={"Authorization": SECRET}, **kwargs)


def run(coro):
    return asyncio.run(coro)


def test_lists_the_servers_tools_with_their_input_schemas(mcp_server):
    tools = run(list_tools(endpoint(mcp_server), LOOPBACK))
    by_name = {tool.name: tool for tool in tools}
    assert {"add", "whoami", "explode", "slow", "big"} <= set(by_name)
    add = by_name["add"]
    assert add.description == "Adds two integers."
    assert add.input_schema["properties"]["a"]["type"] == "integer"
    assert add.input_schema["required"] == ["a", "b"]
    schema = add.openai_schema()
    assert schema["function"]["name"] == "add" and schema["function"]["parameters"] == add.input_schema


def test_calls_carry_the_trace_id_in_meta_and_header(mcp_server):
    server = endpoint(mcp_server)
    executor = McpToolExecutor({"add": server, "whoami": server}, LOOPBACK)

    async def go():
        try:
            return await executor.execute(
                [ToolCall("call_1", "add", '{"a": 2, "b": 40}'), ToolCall("call_2", "whoami", "{}")],
                item={"q": 1},
                trace_id="trace_mcp_one",
            )
        finally:
            await executor.aclose()

    added, who = run(go())
    assert (added.ok, added.output, added.call_id) == (True, "42", "call_1")
    assert who.ok and who.output == "trace=trace_mcp_one header=trace_mcp_one"
    received = [c for c in mcp_server.calls() if c["trace_id"] == "trace_mcp_one"]
    assert sorted(c["tool"] for c in received) == ["add", "whoami"]
    assert all(c["header"] == "trace_mcp_one" for c in received)


def test_is_error_result_is_a_tool_error_the_model_reads(mcp_server):
    executor = McpToolExecutor({"explode": endpoint(mcp_server)}, LOOPBACK)
    (result,) = run(
        executor.execute([ToolCall("c", "explode", '{"reason": "disk full"}')], item={}, trace_id="t")
    )
    assert not result.ok
    assert result.error_type == "tool_error"
    assert result.output.startswith("Error: ") and "exploded: disk full" in result.output


def test_a_slow_tool_times_out_and_its_sibling_still_answers(mcp_server):
    server = endpoint(mcp_server, timeout_s=1.0)
    executor = McpToolExecutor({"slow": server, "add": server}, LOOPBACK)
    started = time.perf_counter()
    slow, added = run(
        executor.execute(
            [ToolCall("c1", "slow", '{"seconds": 5}'), ToolCall("c2", "add", '{"a": 1, "b": 1}')],
            item={},
            trace_id="trace_slow",
        )
    )
    elapsed = time.perf_counter() - started
    assert slow.error_type == "timeout" and not slow.ok
    assert "did not answer within 1 s" in slow.output
    assert added.ok and added.output == "2"
    assert elapsed < 3.5, elapsed


def test_a_response_over_the_size_cap_is_refused(mcp_server):
    executor = McpToolExecutor({"big": endpoint(mcp_server, max_response_bytes=4000)}, LOOPBACK)
    (result,) = run(executor.execute([ToolCall("c", "big", '{"size": 50000}')], item={}, trace_id="t"))
    assert result.error_type == "too_large"
    assert "4000 bytes" in result.output


def test_a_private_address_is_refused_before_any_connection(mcp_server):
    before = len(mcp_server.calls())
    production = OutboundPolicy()  # loopback not allowed
    with pytest.raises(BlockedAddressError, match="refused by the outbound policy"):
        run(list_tools(endpoint(mcp_server), production))
    executor = McpToolExecutor({"add": endpoint(mcp_server)}, production)
    (result,) = run(executor.execute([ToolCall("c", "add", '{"a": 1, "b": 2}')], item={}, trace_id="t"))
    assert result.error_type == "blocked"
    assert SECRET not in (result.error or "") and SECRET not in result.output
    assert len(mcp_server.calls()) == before


def test_bad_arguments_never_reach_the_server(mcp_server):
    executor = McpToolExecutor({"add": endpoint(mcp_server)}, LOOPBACK)
    (result,) = run(executor.execute([ToolCall("c", "add", "{not json")], item={}, trace_id="t"))
    assert result.error_type == "malformed_call"


def test_routing_executor_sends_each_call_to_its_owner(mcp_server):
    executor = McpToolExecutor({"add": endpoint(mcp_server)}, LOOPBACK)
    router = RoutingToolExecutor({"add": executor})
    added, unknown = run(
        router.execute(
            [ToolCall("c1", "add", '{"a": 3, "b": 4}'), ToolCall("c2", "nope", "{}")], item={}, trace_id="t"
        )
    )
    assert added.output == "7"
    assert unknown.error_type == "unknown_tool"
