"""A real MCP server (the official SDK's MCPServer over streamable HTTP) for the MCP tests.

Run as a subprocess: `python tests/mcp_test_server.py PORT LOGFILE`. Each tool call appends one
JSON line to LOGFILE with the tool's name, the request `_meta` trace id and the X-RFT-Rollout-Id
header it received, so tests can check what really arrived.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

PORT = int(sys.argv[1])
LOG = sys.argv[2]

server = MCPServer(name="rft-test")


def _record(ctx: Context, tool: str, **extra: object) -> dict:
    meta = ctx.request_context.meta
    trace = None
    if meta is not None:
        trace = meta.get("trace_id") if isinstance(meta, dict) else getattr(meta, "trace_id", None)
        if trace is None and hasattr(meta, "model_extra"):
            trace = (meta.model_extra or {}).get("trace_id")
    headers = ctx.headers or {}
    entry = {"tool": tool, "trace_id": trace, "header": headers.get("x-rft-rollout-id"), **extra}
    with open(LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")
    return entry


@server.tool(description="Adds two integers.")
def add(a: int, b: int, ctx: Context) -> str:
    _record(ctx, "add")
    return str(a + b)


@server.tool(description="Says which rollout called it.")
def whoami(ctx: Context) -> str:
    entry = _record(ctx, "whoami")
    return f"trace={entry['trace_id']} header={entry['header']}"


@server.tool(description="Always fails.")
def explode(reason: str, ctx: Context) -> str:
    _record(ctx, "explode")
    raise ToolError(f"exploded: {reason}")  # a failure the tool reports: its text reaches the client


@server.tool(description="Sleeps, then answers.")
async def slow(seconds: float, ctx: Context) -> str:
    _record(ctx, "slow")
    await asyncio.sleep(seconds)
    return "done"


@server.tool(description="Returns a large text.")
def big(size: int, ctx: Context) -> str:
    _record(ctx, "big")
    return "x" * size


if __name__ == "__main__":
    app = server.streamable_http_app(json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
