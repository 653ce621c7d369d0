"""Calls the team's tool endpoints in the agent-RFT wire format (PRODUCT.md, "Tool call").

`HttpToolExecutor` implements `trainer.interfaces.ToolExecutor`: every call of one assistant turn is
sent concurrently, every call of a rollout carries the rollout's `trace_id` (body and
X-RFT-Rollout-Id header), and whatever happens ends as a `ToolResult` whose `output` is exactly what
the model reads next. `try_tool_call` sends one call exactly as a rollout would, for the "Try it"
panel, and returns what was sent with secret header values masked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from trainer.interfaces import ToolCall, ToolResult
from trainer.outbound.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_S,
    OutboundClient,
    OutboundError,
    OutboundResponse,
    SentRequest,
    describe_destination,
    display_url,
    mask_secret,
    redact,
    run_sync,
)
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.signing import SIGNATURE_HEADER, sign_body

logger = logging.getLogger(__name__)

ROLLOUT_ID_HEADER = "X-RFT-Rollout-Id"
# Headers the wire format defines; a tool's own headers cannot override them.
_RESERVED_HEADERS = {"content-type", ROLLOUT_ID_HEADER.lower(), SIGNATURE_HEADER.lower()}
# Headers whose values are not secret and may be shown as they are in the "Try it" echo.
_PUBLIC_HEADERS = {"content-type", ROLLOUT_ID_HEADER.lower(), "user-agent"}
# How much of an error body the model (and the UI) gets to read.
MAX_ERROR_BODY_CHARS = 2000


@dataclass(frozen=True)
class ToolEndpoint:
    """Where and how to call one tool. `headers` and `signing_secret` are secrets (kept out of repr)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def secret_values(self) -> list[str]:
        return [*self.headers.values(), *([self.signing_secret] if self.signing_secret else [])]


def new_trace_id() -> str:
    return f"trace_{uuid.uuid4().hex}"


def build_tool_request(
    *, call: ToolCall, endpoint: ToolEndpoint, item: Mapping[str, Any], trace_id: str
) -> tuple[bytes, dict[str, str]]:
    """The exact body bytes and headers (without signature, added per attempt) for one call."""
    body = {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
        "item": dict(item),
        "trace_id": trace_id,
    }
    headers = {key: value for key, value in endpoint.headers.items() if key.lower() not in _RESERVED_HEADERS}
    headers["Content-Type"] = "application/json"
    headers[ROLLOUT_ID_HEADER] = trace_id
    return orjson.dumps(body, default=str), headers


def _error_text_from_body(response: OutboundResponse) -> str:
    """The readable part of an error body: a JSON message field when there is one, else the text."""
    text = response.text.strip()
    try:
        parsed = json.loads(text) if text[:1] in ("{", "[") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("output", "error", "detail", "message"):
            value = parsed.get(key)
            if isinstance(value, str) and value:
                text = value
                break
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                text = value["message"]
                break
    if len(text) > MAX_ERROR_BODY_CHARS:
        text = text[:MAX_ERROR_BODY_CHARS] + "…"
    return text


def _output_from_success(response: OutboundResponse) -> str:
    """The model-visible output of a 2xx; raises ValueError for a body that cannot be understood."""
    text = response.body.decode("utf-8", errors="replace")
    stripped = text.strip()
    declared_json = response.content_type == "application/json" or response.content_type.endswith("+json")
    looks_json = stripped[:1] in ("{", "[")
    if not declared_json and not looks_json:
        return text
    try:
        parsed = json.loads(stripped)
    except ValueError as exc:
        if declared_json:
            raise ValueError(f"the body is not valid JSON ({exc.msg} at position {exc.pos})") from exc
        return text  # plain text that happens to start with a bracket
    if isinstance(parsed, dict) and "output" in parsed:
        output = parsed["output"]
        if isinstance(output, str):
            return output
        return json.dumps(output, ensure_ascii=False)
    if declared_json:
        raise ValueError('a JSON response must be {"output": ...} (or a function_call_output)')
    return text


class HttpToolExecutor:
    """`trainer.interfaces.ToolExecutor` over HTTP tool endpoints.

    `endpoints` maps tool names to endpoints; `max_retries` is the number of retries after the first
    try for 5xx, timeouts and connection errors (with exponential backoff from `retry_backoff_s`).
    """

    def __init__(
        self,
        endpoints: Mapping[str, ToolEndpoint],
        policy: OutboundPolicy,
        max_retries: int = 3,
        *,
        retry_backoff_s: float = 0.5,
        client: OutboundClient | None = None,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.policy = policy
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._client = client
        self._owns_client = client is None

    def _outbound(self) -> OutboundClient:
        if self._client is None:
            self._client = OutboundClient(policy=self.policy)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> HttpToolExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]:
        if len(calls) == 1:  # the common turn: no task to spawn (gather would make one per call)
            return [await self.execute_one(calls[0], item=item, trace_id=trace_id)]
        return list(
            await asyncio.gather(*(self.execute_one(call, item=item, trace_id=trace_id) for call in calls))
        )

    async def execute_one(self, call: ToolCall, *, item: Mapping[str, Any], trace_id: str) -> ToolResult:
        endpoint = self.endpoints.get(call.name)
        if endpoint is None:
            return ToolResult.unknown_tool(call, self.endpoints)
        try:
            json.loads(call.arguments)
        except (ValueError, TypeError) as exc:
            return ToolResult(
                call_id=call.call_id,
                name=call.name,
                output=f"Error: the arguments for {call.name} are not valid JSON: {exc}",
                ok=False,
                error_type="malformed_call",
                error="arguments are not valid JSON",
                attempts=0,
            )
        body, headers = build_tool_request(call=call, endpoint=endpoint, item=item, trace_id=trace_id)
        return await self.send_prepared(call=call, endpoint=endpoint, body=body, headers=headers)

    async def send_prepared(
        self, *, call: ToolCall, endpoint: ToolEndpoint, body: bytes, headers: dict[str, str]
    ) -> ToolResult:
        """Send an already built request (see `build_tool_request`) and turn the outcome into a result."""
        started = time.perf_counter()
        secrets = endpoint.secret_values()
        try:
            response = await self._outbound().request(
                "POST",
                endpoint.url,
                content=body,
                headers=headers,
                timeout_s=endpoint.timeout_s,
                max_response_bytes=endpoint.max_response_bytes,
                max_retries=self.max_retries,
                retry_backoff_s=self.retry_backoff_s,
                signing_secret=endpoint.signing_secret,
            )
        except OutboundError as exc:
            return ToolResult(
                call_id=call.call_id,
                name=call.name,
                output=_model_message_for(exc, tool=call.name, endpoint=endpoint),
                ok=False,
                error_type=exc.error_type,
                error=redact(exc.message, secrets),
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=exc.attempts,
            )
        latency_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        if 200 <= status < 300:
            try:
                output = _output_from_success(response)
            except ValueError as exc:
                return ToolResult(
                    call_id=call.call_id,
                    name=call.name,
                    output=f"Error: the tool {call.name} returned a response that could not be read.",
                    ok=False,
                    error_type="invalid_response",
                    error=str(exc),
                    latency_ms=latency_ms,
                    status_code=status,
                    attempts=response.attempts,
                )
            return ToolResult(
                call_id=call.call_id,
                name=call.name,
                output=redact(output, secrets),
                ok=True,
                latency_ms=latency_ms,
                status_code=status,
                attempts=response.attempts,
            )
        if 400 <= status < 500:
            message = redact(_error_text_from_body(response), secrets)
            return ToolResult(
                call_id=call.call_id,
                name=call.name,
                output=f"Error (HTTP {status}): {message}" if message else f"Error (HTTP {status})",
                ok=False,
                error_type="http_4xx",
                error=f"{describe_destination(endpoint.url)} answered {status}: {message}",
                latency_ms=latency_ms,
                status_code=status,
                attempts=response.attempts,
            )
        detail = redact(_error_text_from_body(response), secrets)[:300]
        return ToolResult(
            call_id=call.call_id,
            name=call.name,
            output=f"Error: the tool {call.name} failed (HTTP {status}) after {_attempts(response.attempts)}.",
            ok=False,
            error_type="http_5xx",
            error=f"{describe_destination(endpoint.url)} answered {status}"
            + (f" on all {response.attempts} attempts" if response.attempts > 1 else "")
            + (f": {detail}" if detail else ""),
            latency_ms=latency_ms,
            status_code=status,
            attempts=response.attempts,
        )


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


def _model_message_for(exc: OutboundError, *, tool: str, endpoint: ToolEndpoint) -> str:
    """A short, secret-free explanation the model can act on."""
    if exc.error_type == "timeout":
        return f"Error: the tool {tool} did not answer within {endpoint.timeout_s:g} s ({_attempts(exc.attempts)})."
    if exc.error_type == "too_large":
        return f"Error: the tool {tool} returned more than {endpoint.max_response_bytes} bytes."
    if exc.error_type == "blocked":
        return f"Error: the tool {tool} cannot be called (its address is not allowed by the server)."
    if exc.error_type == "invalid_response":
        return f"Error: the tool {tool} returned a response that could not be read."
    return f"Error: the tool {tool} could not be reached ({_attempts(exc.attempts)})."


@dataclass
class TryToolCallResult:
    """What the "Try it" panel shows."""

    ok: bool
    status_code: int | None
    latency_ms: float
    output: str  # exactly what the model would read
    error_type: str | None
    error: str | None
    attempts: int
    trace_id: str
    request: SentRequest


def masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers for display: wire-format headers as they are, every other value masked."""
    return {
        key: value if key.lower() in _PUBLIC_HEADERS else mask_secret(value) for key, value in headers.items()
    }


def try_tool_call(
    *,
    name: str,
    endpoint: ToolEndpoint,
    arguments: str | Mapping[str, Any],
    policy: OutboundPolicy,
    item: Mapping[str, Any] | None = None,
    trace_id: str | None = None,
    max_retries: int = 0,
) -> TryToolCallResult:
    """Send one call exactly as a rollout would (same body, headers and signature) and report it.

    Synchronous for the view. `max_retries` defaults to 0 so that a failing endpoint answers the
    panel quickly; rollouts use the executor's retries.
    """
    arguments_text = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
    call = ToolCall(call_id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments=arguments_text)
    trace = trace_id or new_trace_id()
    row = dict(item or {})

    body, headers = build_tool_request(call=call, endpoint=endpoint, item=row, trace_id=trace)

    async def send() -> ToolResult:
        executor = HttpToolExecutor({name: endpoint}, policy, max_retries=max_retries)
        try:
            try:
                json.loads(arguments_text)
            except ValueError:
                return await executor.execute_one(call, item=row, trace_id=trace)  # the malformed_call result
            return await executor.send_prepared(call=call, endpoint=endpoint, body=body, headers=headers)
        finally:
            await executor.aclose()

    shown_headers = dict(headers)
    if endpoint.signing_secret:
        shown_headers[SIGNATURE_HEADER] = sign_body(secret=endpoint.signing_secret, body=body)
    result = run_sync(send)
    sent = SentRequest(
        method="POST",
        url=display_url(endpoint.url),
        headers=masked_headers(shown_headers),
        body=orjson.loads(body),
    )
    return TryToolCallResult(
        ok=result.ok,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        output=result.output,
        error_type=result.error_type,
        error=result.error,
        attempts=result.attempts,
        trace_id=trace,
        request=sent,
    )
