"""Per-rollout environments: start before the first turn, end after grading, always cleaned up.

The lifecycle protocol (PRODUCT.md "Environments", README "Environment lifecycle"):

    POST <start_url>  {"trace_id", "item", "run_id", "split"}
        -> 200 {"context": "text appended to the system prompt"?, "tools": [tool schemas]?,
                "tools_mode": "add" | "replace"?}
    ... every tool call of the rollout carries the same trace_id (body and X-RFT-Rollout-Id) ...
    POST <end_url>    {"trace_id", "run_id", "finish_reason", "reward", "score"}
        -> any 2xx (repeated ends must be harmless: delivery is at least once)

Both requests are signed like tool calls (X-RFT-Signature) and go through the outbound policy.

`RolloutEngine` calls `environment_scope` from one place (`_rollout_and_grade`): it takes a slot of
the run's live-environment cap, starts the environment, applies its context and tools to the
rollout, and after the rollout was generated and graded (or cancelled, or failed) sends the end,
shielded from cancellation. A start that fails or times out excludes the rollout from the update
(no reward; counted per error type in `env/start_errors/<type>`), and still gets an end: the
server may have created the sandbox before the error reached us.

An `EndLedger` makes the end survive a dead worker: the app records every rollout before its start
is sent and marks the end delivered; a periodic sweeper sends the ends still missing once the
lease has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from trainer.interfaces import EnvironmentCallError, EnvironmentStart, RolloutEnvironment
from trainer.outbound.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    OutboundClient,
    OutboundError,
    describe_destination,
    redact,
)
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import ROLLOUT_ID_HEADER

if TYPE_CHECKING:
    from trainer.rollout import Rollout

logger = logging.getLogger(__name__)

MAX_CONTEXT_CHARS = 20_000
CONTEXT_HEADING = "Environment:"


class EndLedger(Protocol):
    """Durable record of started environments (the app's is the database)."""

    async def record_start(self, *, trace_id: str, split: str, item_index: int) -> None:
        """Called before the start request is sent; must be durable when it returns."""
        ...

    async def record_end(
        self, *, trace_id: str, payload: Mapping[str, Any], delivered: bool, error: str
    ) -> None:
        """Called after an end attempt: the end payload, whether it was delivered, and why not."""
        ...


@dataclass(frozen=True)
class EnvironmentEndpoint:
    """Where an environment's lifecycle requests go. `headers`/`signing_secret` are secrets."""

    start_url: str
    end_url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    start_timeout_s: float = 30.0
    end_timeout_s: float = 10.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def secret_values(self) -> list[str]:
        return [*self.headers.values(), *([self.signing_secret] if self.signing_secret else [])]


def end_payload(
    *, trace_id: str, run_id: str, finish_reason: str, reward: float | None, score: float | None
) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "run_id": run_id,
        "finish_reason": finish_reason,
        "reward": reward,
        "score": score,
    }


def parse_start_response(body: bytes) -> EnvironmentStart:
    """The start answer; raises EnvironmentCallError("invalid_response") for anything else."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return EnvironmentStart()
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise EnvironmentCallError("invalid_response", f"the start answer is not JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict):
        raise EnvironmentCallError("invalid_response", "the start answer must be a JSON object")
    context = parsed.get("context") or ""
    if not isinstance(context, str):
        raise EnvironmentCallError("invalid_response", '"context" must be a string')
    tools = parsed.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(tool, dict) and isinstance((tool.get("function") or tool).get("name"), str)
            for tool in tools
        ):
            raise EnvironmentCallError(
                "invalid_response", '"tools" must be a list of tool schemas with names'
            )
    mode = parsed.get("tools_mode", "add")
    if mode not in ("add", "replace"):
        raise EnvironmentCallError("invalid_response", '"tools_mode" must be "add" or "replace"')
    if len(context) > MAX_CONTEXT_CHARS:
        context = context[:MAX_CONTEXT_CHARS] + "…"
    return EnvironmentStart(context=context, tools=tools, tools_mode=mode)


class HttpEnvironment:
    """`RolloutEnvironment` over the start/end HTTP protocol, through the policy-enforcing client.

    `max_live` caps the environments alive at once in one run (starts wait for a slot). `end` is
    retried `end_retries` times; what still failed stays undelivered in the ledger for the sweeper.
    """

    def __init__(
        self,
        endpoint: EnvironmentEndpoint,
        policy: OutboundPolicy,
        *,
        run_id: str = "",
        max_live: int = 64,
        ledger: EndLedger | None = None,
        end_retries: int = 2,
        retry_backoff_s: float = 0.5,
    ) -> None:
        if max_live < 1:
            raise ValueError("max_live must be at least 1")
        self.endpoint = endpoint
        self.policy = policy
        self.run_id = run_id
        self.max_live = max_live
        self.ledger = ledger
        self.end_retries = end_retries
        self.retry_backoff_s = retry_backoff_s
        self._client: OutboundClient | None = None

    def _outbound(self) -> OutboundClient:
        if self._client is None:
            self._client = OutboundClient(policy=self.policy)
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _headers(self, trace_id: str) -> dict[str, str]:
        headers = {
            key: value
            for key, value in self.endpoint.headers.items()
            if key.lower() not in ("content-type", ROLLOUT_ID_HEADER.lower())
        }
        headers["Content-Type"] = "application/json"
        headers[ROLLOUT_ID_HEADER] = trace_id
        return headers

    async def start(self, rollout: Rollout) -> EnvironmentStart:
        if self.ledger is not None:
            await self.ledger.record_start(
                trace_id=rollout.trace_id, split=rollout.split, item_index=rollout.item_index
            )
        body = orjson.dumps(
            {
                "trace_id": rollout.trace_id,
                "item": dict(rollout.item),
                "run_id": self.run_id,
                "split": rollout.split,
            },
            default=str,
        )
        secrets = self.endpoint.secret_values()
        try:
            response = await self._outbound().request(
                "POST",
                self.endpoint.start_url,
                content=body,
                headers=self._headers(rollout.trace_id),
                timeout_s=self.endpoint.start_timeout_s,
                max_response_bytes=self.endpoint.max_response_bytes,
                max_retries=0,  # a retried start could create a second sandbox
                signing_secret=self.endpoint.signing_secret,
            )
        except OutboundError as exc:
            raise EnvironmentCallError(exc.error_type, redact(exc.message, secrets)) from None
        status = response.status_code
        if not 200 <= status < 300:
            detail = redact(response.text.strip(), secrets)[:300]
            kind = "http_4xx" if status < 500 else "http_5xx"
            raise EnvironmentCallError(
                kind,
                f"{describe_destination(self.endpoint.start_url)} answered {status}"
                + (f": {detail}" if detail else ""),
            )
        return parse_start_response(response.body)

    async def end(self, rollout: Rollout) -> None:
        payload = end_payload(
            trace_id=rollout.trace_id,
            run_id=self.run_id,
            finish_reason=rollout.finish_reason or "error",
            reward=rollout.reward,
            score=rollout.score_value,
        )
        delivered, error = await self.send_end(payload)
        if self.ledger is not None:
            await self.ledger.record_end(
                trace_id=rollout.trace_id, payload=payload, delivered=delivered, error=error
            )
        if not delivered:
            raise EnvironmentCallError("end_failed", error)

    async def send_end(self, payload: Mapping[str, Any]) -> tuple[bool, str]:
        """(delivered, error): one end request with retries (also used by the app's sweeper)."""
        secrets = self.endpoint.secret_values()
        try:
            response = await self._outbound().request(
                "POST",
                self.endpoint.end_url,
                content=orjson.dumps(dict(payload), default=str),
                headers=self._headers(str(payload["trace_id"])),
                timeout_s=self.endpoint.end_timeout_s,
                max_response_bytes=self.endpoint.max_response_bytes,
                max_retries=self.end_retries,
                retry_backoff_s=self.retry_backoff_s,
                signing_secret=self.endpoint.signing_secret,
            )
        except OutboundError as exc:
            return False, redact(exc.message, secrets)
        if 200 <= response.status_code < 300:
            return True, ""
        return False, f"{describe_destination(self.endpoint.end_url)} answered {response.status_code}"


def apply_start(rollout: Rollout, started: EnvironmentStart) -> bool:
    """Adds the start's context to the system prompt and its tools to the rollout's; True when the
    prompt changed (it must be rendered again)."""
    changed = False
    if started.tools is not None:
        tools = [dict(tool) for tool in started.tools]
        if started.tools_mode == "replace":
            rollout.tools = tools
        else:
            names = {(tool.get("function") or tool).get("name") for tool in tools}
            rollout.tools = [
                tool for tool in rollout.tools if (tool.get("function") or tool).get("name") not in names
            ] + tools
        changed = True
    if started.context:
        addition = f"{CONTEXT_HEADING}\n{started.context}"
        messages = rollout.messages
        if messages and messages[0].get("role") == "system":
            system = dict(messages[0])
            system["content"] = f"{system.get('content') or ''}\n\n{addition}".lstrip()
            messages[0] = system
        else:
            messages.insert(0, {"role": "system", "content": addition})
        changed = True
    return changed


async def _finish_uncancelled(awaitable: Any) -> None:
    """Awaits `awaitable` to its end even if the caller is cancelled meanwhile (then re-raises)."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


@contextlib.asynccontextmanager
async def environment_scope(
    environment: RolloutEnvironment | None,
    rollout: Rollout,
    live_slots: asyncio.Semaphore | None,
    render: Any,
) -> AsyncIterator[bool]:
    """Starts `rollout`'s environment (within the live cap), yields whether the rollout may run,
    and ends the environment on the way out, whatever happened. `render(rollout)` renders the prompt
    again when the start changed it."""
    if environment is None:
        yield True
        return
    assert live_slots is not None
    async with live_slots:
        start_sent = False
        try:
            rollout.env_started_at = time.time()
            started_clock = time.perf_counter()
            try:
                start_sent = True
                started = await environment.start(rollout)
                rollout.env_context = started.context
                if apply_start(rollout, started):
                    render(rollout)  # may raise EnvironmentCallError("context_too_long")
            except EnvironmentCallError as error:
                rollout.env_error = {"phase": "start", "type": error.error_type, "message": error.message}
            except Exception as error:  # a bug in an implementation excludes the rollout, not the run
                logger.exception("environment start failed for %s", rollout.trace_id)
                rollout.env_error = {
                    "phase": "start",
                    "type": "connection",
                    "message": f"{type(error).__name__}: {error}",
                }
            finally:
                rollout.env_start_ms = (time.perf_counter() - started_clock) * 1000
            if rollout.env_error is not None:
                rollout.finish_reason = "env_error"
                yield False
            else:
                yield True
        finally:
            if start_sent:
                await _finish_uncancelled(_end(environment, rollout))


async def _end(environment: RolloutEnvironment, rollout: Rollout) -> None:
    started = time.perf_counter()
    try:
        await environment.end(rollout)
        rollout.env_ended_at = time.time()
    except EnvironmentCallError as error:
        rollout.env_end_error = error.message
    except Exception as error:  # never let a failed end hide the rollout's own outcome
        logger.exception("environment end failed for %s", rollout.trace_id)
        rollout.env_end_error = f"{type(error).__name__}: {error}"
    finally:
        rollout.env_end_ms = (time.perf_counter() - started) * 1000


def environment_record(rollout: Rollout) -> dict[str, Any] | None:
    """What the stored rollout shows of its environment (None for runs without one)."""
    if rollout.env_started_at is None:
        return None
    return {
        "started_at": rollout.env_started_at,
        "start_ms": round(rollout.env_start_ms, 3),
        "context": rollout.env_context,
        "error": rollout.env_error,
        "ended_at": rollout.env_ended_at,
        "end_ms": round(rollout.env_end_ms, 3),
        "end_error": rollout.env_end_error,
    }


def environment_metrics(rollouts: Any, *, prefix: str = "") -> dict[str, float]:
    """env/* metrics of a step: start errors per type, exclusions, mean start/end latency."""
    with_env = [r for r in rollouts if r.env_started_at is not None]
    if not with_env:
        return {}
    metrics: dict[str, float] = {}
    for rollout in with_env:
        if rollout.env_error is not None:
            key = f"{prefix}env/start_errors/{rollout.env_error['type']}"
            metrics[key] = metrics.get(key, 0.0) + 1
    metrics[f"{prefix}env/excluded"] = float(sum(1 for r in with_env if r.env_error is not None))
    metrics[f"{prefix}env/end_errors"] = float(sum(1 for r in with_env if r.env_end_error))
    metrics[f"{prefix}env/start_ms"] = sum(r.env_start_ms for r in with_env) / len(with_env)
    metrics[f"{prefix}env/end_ms"] = sum(r.env_end_ms for r in with_env) / len(with_env)
    return metrics
