"""The demo's file-tree tools as an MCP server (the official SDK, streamable HTTP, own port).

The tools act on the same per-rollout trees as the HTTP tools; the rollout is the request's
`_meta.trace_id` (rftweb sends it with every call), else its X-RFT-Rollout-Id header.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from experiments.demo_servers.filetree import FileTreeError, FileTrees


def _trace_id(ctx: Context) -> str:
    meta = ctx.request_context.meta
    trace = None
    if meta is not None:
        trace = meta.get("trace_id") if isinstance(meta, dict) else getattr(meta, "trace_id", None)
        if trace is None:
            trace = (getattr(meta, "model_extra", None) or {}).get("trace_id")
    return str(trace or (ctx.headers or {}).get("x-rft-rollout-id") or "")


def build_mcp_server(trees: FileTrees) -> MCPServer:
    server = MCPServer(name="rftweb-demo-workspace")

    def call(ctx: Context, name: str, arguments: dict) -> str:
        try:
            return trees.call(_trace_id(ctx), name, arguments)
        except FileTreeError as exc:
            raise ToolError(str(exc)) from None  # isError: the model reads the message

    @server.tool(description="List the files of your workspace (one path per line).")
    def workspace_list_files(ctx: Context) -> str:
        return call(ctx, "workspace_list_files", {})

    @server.tool(description="Read one file of your workspace.")
    def workspace_read_file(path: str, ctx: Context) -> str:
        return call(ctx, "workspace_read_file", {"path": path})

    @server.tool(description="Create or replace one file of your workspace with the given content.")
    def workspace_write_file(path: str, content: str, ctx: Context) -> str:
        return call(ctx, "workspace_write_file", {"path": path, "content": content})

    return server


class DemoMcpServer:
    """uvicorn serving the MCP app in a background thread."""

    def __init__(self, trees: FileTrees, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.host = host
        self.port = port
        app = build_mcp_server(trees).streamable_http_app(json_response=True, host=host)
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve()), name="demo-mcp", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the demo MCP server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
