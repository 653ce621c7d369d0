"""Tools from MCP servers (streamable HTTP), called through the official `mcp` SDK under the SSRF policy.

The SDK speaks `httpx2`; it is given an `httpx2.AsyncClient` whose transport opens every socket
through `VettedNetworkBackend` (the same resolve-once, vet-every-address backend as `OutboundClient`)
and caps each response body at the server's size limit while it streams in. So an MCP server, its
redirects (the SDK follows same-origin ones only) and its session's GET stream all go through the
policy.

Sessions: one MCP session per assistant turn of a rollout (the calls of that turn share it, run
concurrently), opened with the rollout's `X-RFT-Rollout-Id` header and closed when the turn's calls
are answered; every call carries `{"trace_id": ...}` in its request `_meta`. A session's handshake
costs one extra round trip per turn; `bench/bench_environments.py --mcp` measures it against one
long-lived pooled session (see trainer/README.md for the figures and why per-turn was kept: a
session per rollout joins state by header as well as by `_meta`, and a session's anyio task group
must be closed by the task that opened it, which a pooled session shared by rollouts cannot
guarantee when a rollout is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore2
import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from trainer.interfaces import ToolCall, ToolResult
from trainer.outbound.client import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    USER_AGENT,
    BlockedAddressError,
    OutboundError,
    OutboundTimeoutError,
    ResponseTooLargeError,
    VettedNetworkBackend,
    describe_destination,
    redact,
    validate_outbound_url,
)
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import ROLLOUT_ID_HEADER

logger = logging.getLogger(__name__)

# Headers the MCP transport or the rollout protocol set; a server's own headers cannot override them.
_RESERVED_HEADERS = {
    "content-type",
    "accept",
    ROLLOUT_ID_HEADER.lower(),
    "mcp-session-id",
    "mcp-protocol-version",
}
TRACE_META_KEY = "trace_id"
MAX_TOOL_OUTPUT_CHARS = 100_000


@dataclass(frozen=True, eq=False)
class McpServerEndpoint:
    """One MCP server (streamable HTTP). `headers` are secrets (kept out of repr). Compared and
    hashed by identity: the tools of one registered server share one object (and one pool)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def secret_values(self) -> list[str]:
        return list(self.headers.values())


@dataclass(frozen=True)
class McpTool:
    """A tool as the server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]

    def openai_schema(self) -> dict[str, Any]:
        """The function-tool shape the chat template and the run's tool list use."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.input_schema or {"type": "object", "properties": {}},
            },
        }


class McpError(OutboundError):
    """The MCP server answered with a protocol error (or an unusable result)."""

    error_type = "invalid_response"


class _CappedStream(httpx2.AsyncByteStream):
    """A response body that raises once more than `limit` bytes arrived (the SSE stream included)."""

    def __init__(self, stream: httpx2.AsyncByteStream, *, limit: int, destination: str) -> None:
        self._stream = stream
        self._limit = limit
        self._destination = destination

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._stream:
            size += len(chunk)
            if size > self._limit:
                raise ResponseTooLargeError(
                    f"the response from {self._destination} exceeded the {self._limit}-byte limit"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class PolicyTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport over an httpcore2 pool whose sockets are opened by `VettedNetworkBackend`."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        super().__init__(trust_env=False, http1=True, http2=False)
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        # The pool httpx2 built has the default network backend: replaced before any use.
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            network_backend=VettedNetworkBackend(policy),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        destination = describe_destination(str(request.url))
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            await response.aclose()
            raise ResponseTooLargeError(
                f"{destination} announced {int(declared)} bytes, over the {self.max_response_bytes}-byte limit"
            )
        response.stream = _CappedStream(
            response.stream,  # type: ignore[arg-type]
            limit=self.max_response_bytes,
            destination=destination,
        )
        return response


class _SharedTransport(httpx2.AsyncBaseTransport):
    """Lends a transport to short-lived clients: closing a client does not close the shared pool."""

    def __init__(self, transport: PolicyTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        return None


def session_headers(endpoint: McpServerEndpoint, trace_id: str | None) -> dict[str, str]:
    headers = {key: value for key, value in endpoint.headers.items() if key.lower() not in _RESERVED_HEADERS}
    headers["User-Agent"] = USER_AGENT
    if trace_id:
        headers[ROLLOUT_ID_HEADER] = trace_id
    return headers


@contextlib.asynccontextmanager
async def open_session(
    endpoint: McpServerEndpoint,
    policy: OutboundPolicy,
    *,
    trace_id: str | None = None,
    transport: PolicyTransport | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized MCP session with `endpoint`; every connection goes through `policy`."""
    validate_outbound_url(endpoint.url)
    own = transport is None
    shared = transport or PolicyTransport(policy, max_response_bytes=endpoint.max_response_bytes)
    client = httpx2.AsyncClient(
        transport=_SharedTransport(shared),
        headers=session_headers(endpoint, trace_id),
        timeout=httpx2.Timeout(endpoint.timeout_s),
        follow_redirects=False,
        trust_env=False,
    )
    try:
        async with (
            client,
            streamable_http_client(endpoint.url, http_client=client) as (read, write),
            ClientSession(read, write, read_timeout_seconds=endpoint.timeout_s) as session,
        ):
            await session.initialize()
            yield session
    finally:
        if own:
            await shared.aclose()


def _unwrap(error: BaseException) -> BaseException:
    """The first interesting exception inside anyio's exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        inner = [e for e in error.exceptions if not isinstance(e, asyncio.CancelledError)]
        error = (inner or list(error.exceptions))[0]
    return error


def _outbound_error(error: BaseException, endpoint: McpServerEndpoint, *, timeout_s: float) -> OutboundError:
    """Any failure of an MCP exchange as an OutboundError whose type is a TOOL_ERROR_TYPE."""
    error = _unwrap(error)
    destination = describe_destination(endpoint.url)
    secrets = endpoint.secret_values()
    cause: BaseException | None = error
    while cause is not None:  # the SDK and httpx2 wrap our own errors; the innermost one says most
        if isinstance(cause, OutboundError):
            cause.message = redact(cause.message, secrets)
            return cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, TimeoutError | httpx2.TimeoutException):
        return OutboundTimeoutError(f"{destination} did not answer within {timeout_s:g} s")
    if isinstance(error, httpx2.TransportError | OSError):
        return OutboundError(f"could not complete the request to {destination}: {type(error).__name__}")
    text = redact(str(error) or type(error).__name__, secrets)
    if "timed out" in text.lower() or "timeout" in type(error).__name__.lower():
        return OutboundTimeoutError(f"{destination} did not answer within {timeout_s:g} s")
    return McpError(f"{destination}: {text[:500]}")


async def list_tools(
    endpoint: McpServerEndpoint, policy: OutboundPolicy, *, transport: PolicyTransport | None = None
) -> list[McpTool]:
    """Every tool the server lists (all pages). Raises OutboundError (`.error_type`, `.message`)."""
    tools: list[McpTool] = []
    try:
        async with asyncio.timeout(endpoint.timeout_s * 2):  # handshake + listing
            async with open_session(endpoint, policy, transport=transport) as session:
                cursor: str | None = None
                while True:
                    params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await session.list_tools(params=params)
                    for tool in page.tools:
                        tools.append(
                            McpTool(
                                name=tool.name,
                                description=tool.description or "",
                                input_schema=dict(tool.input_schema or {}),
                            )
                        )
                    cursor = page.next_cursor
                    if not cursor:
                        break
    except BaseException as error:
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
        raise _outbound_error(error, endpoint, timeout_s=endpoint.timeout_s) from None
    return tools


def result_text(result: mcp_types.CallToolResult) -> str:
    """What the model reads of a tool result: its text blocks, else the structured content as JSON."""
    parts: list[str] = []
    for block in result.content:
        text = getattr(block, "text", None)
        if isinstance(text, str):
            parts.append(text)
        elif getattr(block, "type", "") == "resource" and hasattr(block, "resource"):
            inner = getattr(block.resource, "text", None)
            parts.append(inner if isinstance(inner, str) else f"[resource {block.resource.uri}]")
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if len(text) > MAX_TOOL_OUTPUT_CHARS:
        text = text[:MAX_TOOL_OUTPUT_CHARS] + "…"
    return text


async def call_tool(
    session: ClientSession, call: ToolCall, *, endpoint: McpServerEndpoint, trace_id: str
) -> ToolResult:
    """One call on an open session, as a ToolResult (never raises for the call's own failures)."""
    started = time.perf_counter()

    def failed(error_type: str, output: str, error: str) -> ToolResult:
        return ToolResult(
            call_id=call.call_id,
            name=call.name,
            output=output,
            ok=False,
            error_type=error_type,
            error=redact(error, endpoint.secret_values()),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as exc:
        return failed(
            "malformed_call",
            f"Error: the arguments for {call.name} are not valid JSON: {exc}",
            "arguments are not valid JSON",
        )
    if not isinstance(arguments, dict):
        return failed(
            "malformed_call",
            f"Error: the arguments for {call.name} must be a JSON object.",
            "arguments are not a JSON object",
        )
    try:
        async with asyncio.timeout(endpoint.timeout_s):
            result = await session.call_tool(
                call.name,
                arguments,
                read_timeout_seconds=endpoint.timeout_s,
                meta={TRACE_META_KEY: trace_id},
            )
    except BaseException as error:
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
        outbound = _outbound_error(error, endpoint, timeout_s=endpoint.timeout_s)
        return failed(outbound.error_type, _model_message(outbound, call.name, endpoint), outbound.message)
    if not isinstance(result, mcp_types.CallToolResult):
        return failed(
            "invalid_response",
            f"Error: the tool {call.name} returned a response that could not be read.",
            f"unexpected result type {type(result).__name__}",
        )
    text = redact(result_text(result), endpoint.secret_values())
    if result.is_error:
        # The tool itself failed: like a 4xx body, the model reads the server's explanation.
        return failed(
            "tool_error", f"Error: {text}" if text else "Error", f"the tool reported an error: {text[:300]}"
        )
    return ToolResult(
        call_id=call.call_id,
        name=call.name,
        output=text,
        ok=True,
        latency_ms=(time.perf_counter() - started) * 1000,
    )


def _model_message(error: OutboundError, tool: str, endpoint: McpServerEndpoint) -> str:
    if error.error_type == "timeout":
        return f"Error: the tool {tool} did not answer within {endpoint.timeout_s:g} s."
    if error.error_type == "too_large":
        return f"Error: the tool {tool} returned more than {endpoint.max_response_bytes} bytes."
    if error.error_type == "blocked":
        return f"Error: the tool {tool} cannot be called (its address is not allowed by the server)."
    if error.error_type == "invalid_response":
        return f"Error: the tool {tool} failed: {error.message[:500]}"
    return f"Error: the tool {tool} could not be reached."


class McpToolExecutor:
    """`trainer.interfaces.ToolExecutor` over MCP servers; `servers` maps tool names to servers.

    The calls of one turn that go to the same server share one session (opened with the rollout's
    X-RFT-Rollout-Id), and run concurrently; every server's connections come from one policy pool.
    """

    def __init__(self, servers: Mapping[str, McpServerEndpoint], policy: OutboundPolicy) -> None:
        self.servers = dict(servers)
        self.policy = policy
        self._transports: dict[McpServerEndpoint, PolicyTransport] = {}

    def _transport(self, endpoint: McpServerEndpoint) -> PolicyTransport:
        transport = self._transports.get(endpoint)
        if transport is None:
            transport = self._transports[endpoint] = PolicyTransport(
                self.policy, max_response_bytes=endpoint.max_response_bytes
            )
        return transport

    async def aclose(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]:
        by_server: dict[McpServerEndpoint, list[ToolCall]] = {}
        results: dict[str, ToolResult] = {}
        for call in calls:
            endpoint = self.servers.get(call.name)
            if endpoint is None:
                results[call.call_id] = ToolResult.unknown_tool(call, self.servers)
            else:
                by_server.setdefault(endpoint, []).append(call)
        for server_results in await asyncio.gather(
            *(self._execute_on(endpoint, group, trace_id) for endpoint, group in by_server.items())
        ):
            results.update((result.call_id, result) for result in server_results)
        return [results[call.call_id] for call in calls]

    async def _execute_on(
        self, endpoint: McpServerEndpoint, calls: list[ToolCall], trace_id: str
    ) -> list[ToolResult]:
        started = time.perf_counter()
        done: dict[str, ToolResult] = {}

        async def run(session: ClientSession, call: ToolCall) -> None:
            done[call.call_id] = await call_tool(session, call, endpoint=endpoint, trace_id=trace_id)

        try:
            async with asyncio.timeout(endpoint.timeout_s * 2):  # handshake, then the calls' own limits
                async with open_session(
                    endpoint, self.policy, trace_id=trace_id, transport=self._transport(endpoint)
                ) as session:
                    await asyncio.gather(*(run(session, call) for call in calls))
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            # The session itself failed (handshake, policy, a response over the cap...): calls that
            # were answered keep their results, the others get the session's error.
            outbound = _outbound_error(error, endpoint, timeout_s=endpoint.timeout_s)
            latency = (time.perf_counter() - started) * 1000
            for call in calls:
                if call.call_id not in done:
                    done[call.call_id] = ToolResult(
                        call_id=call.call_id,
                        name=call.name,
                        output=_model_message(outbound, call.name, endpoint),
                        ok=False,
                        error_type=outbound.error_type,
                        error=outbound.message,
                        latency_ms=latency,
                    )
        return [done[call.call_id] for call in calls]


class RoutingToolExecutor:
    """Sends each call to the executor that owns its tool name (HTTP tools and MCP tools in one run)."""

    def __init__(self, executors: Mapping[str, Any]) -> None:
        self.executors = dict(executors)  # tool name -> ToolExecutor

    async def aclose(self) -> None:
        closed: set[int] = set()
        for executor in self.executors.values():
            close = getattr(executor, "aclose", None)
            if close is not None and id(executor) not in closed:
                closed.add(id(executor))
                await close()

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]:
        groups: dict[int, tuple[Any, list[ToolCall]]] = {}
        results: dict[str, ToolResult] = {}
        for call in calls:
            executor = self.executors.get(call.name)
            if executor is None:
                results[call.call_id] = ToolResult.unknown_tool(call, self.executors)
                continue
            groups.setdefault(id(executor), (executor, []))[1].append(call)
        for executed in await asyncio.gather(
            *(executor.execute(group, item=item, trace_id=trace_id) for executor, group in groups.values())
        ):
            results.update((result.call_id, result) for result in executed)
        return [results[call.call_id] for call in calls]


__all__ = [
    "BlockedAddressError",
    "McpServerEndpoint",
    "McpTool",
    "McpToolExecutor",
    "PolicyTransport",
    "RoutingToolExecutor",
    "call_tool",
    "list_tools",
    "open_session",
]
