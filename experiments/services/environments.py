"""Environments (per-rollout start/end) and MCP tool servers: registration, the database-backed end
ledger, the sweeper that delivers ends a dead worker left behind, and the trainer objects a run uses.

At-least-once ends: `DbEndLedger.record_start` writes an `EnvironmentLease` row (its end payload says
finish_reason "lost" until the outcome is known) before the start request is sent; `record_end`
stores the real payload and marks it delivered. A worker killed mid-step leaves rows without a
delivered end; `sweep_environment_ends` (Celery beat, default queue) claims those whose lease has
expired and sends their ends, retrying on its next round until they are delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from trainer.environments import EnvironmentEndpoint, HttpEnvironment, end_payload
from trainer.outbound.client import OutboundError, run_sync

from ..models import Environment, EnvironmentLease, McpServer, Run
from ..outbound import policy_from_settings

if TYPE_CHECKING:  # the MCP SDK is imported where MCP is used, not by every web request
    from trainer.outbound.mcp import McpServerEndpoint, McpToolExecutor

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 3600
SWEEP_RETRY_SECONDS = 60  # a claimed end that still failed is tried again after this
SWEEP_BATCH = 500


def lease_seconds() -> float:
    """How long after its start a rollout's end may be sent by the sweeper (the rollout must be over)."""
    return float(getattr(settings, "RFT_ENVIRONMENT_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))


# --- environments ------------------------------------------------------------------------------------


def environment_endpoint(environment: Environment) -> EnvironmentEndpoint:
    return EnvironmentEndpoint(
        start_url=environment.start_url,
        end_url=environment.end_url,
        headers=dict(environment.headers or {}),
        signing_secret=environment.signing_secret or None,
        start_timeout_s=environment.start_timeout_s,
        end_timeout_s=environment.end_timeout_s,
    )


class DbEndLedger:
    """`trainer.environments.EndLedger` on `EnvironmentLease` rows (called from the trainer's loop)."""

    def __init__(self, *, run_id: int, environment_id: int, lease_s: float | None = None) -> None:
        self.run_id = run_id
        self.environment_id = environment_id
        self.lease_s = lease_seconds() if lease_s is None else lease_s

    def _record_start(self, trace_id: str, split: str, item_index: int) -> None:
        try:
            EnvironmentLease.objects.create(
                run_id=self.run_id,
                environment_id=self.environment_id,
                trace_id=trace_id,
                split=split,
                item_index=item_index,
                lease_expires_at=timezone.now() + timedelta(seconds=self.lease_s),
                end_payload=end_payload(
                    trace_id=trace_id, run_id=str(self.run_id), finish_reason="lost", reward=None, score=None
                ),
            )
        except IntegrityError:  # a resumed step reuses nothing, but never fail a rollout on a duplicate
            logger.warning("environment lease %s already recorded", trace_id)

    def _record_end(self, trace_id: str, payload: Mapping[str, Any], delivered: bool, error: str) -> None:
        now = timezone.now()
        EnvironmentLease.objects.filter(trace_id=trace_id).update(
            end_payload=dict(payload),
            end_delivered_at=now if delivered else None,
            last_error=error[:2000],
            # Not delivered: the sweeper retries once the lease expires (the rollout is over now).
            lease_expires_at=now if not delivered else now + timedelta(seconds=self.lease_s),
        )

    async def record_start(self, *, trace_id: str, split: str, item_index: int) -> None:
        await sync_to_async(self._record_start, thread_sensitive=False)(trace_id, split, item_index)

    async def record_end(
        self, *, trace_id: str, payload: Mapping[str, Any], delivered: bool, error: str
    ) -> None:
        await sync_to_async(self._record_end, thread_sensitive=False)(trace_id, payload, delivered, error)


def build_environment_for(run: Run) -> HttpEnvironment | None:
    """The trainer's environment for a run (None when the run has none)."""
    environment = run.environment
    if environment is None:
        return None
    return HttpEnvironment(
        environment_endpoint(environment),
        policy_from_settings(),
        run_id=str(run.pk),
        max_live=environment.max_live,
        ledger=DbEndLedger(run_id=run.pk, environment_id=environment.pk),
    )


def sweep_environment_ends(*, now=None, limit: int = SWEEP_BATCH) -> int:
    """Send the ends still missing whose lease expired; returns how many were delivered now."""
    now = now or timezone.now()
    with transaction.atomic():
        claimed = list(
            EnvironmentLease.objects.select_for_update(skip_locked=True)
            .filter(end_delivered_at__isnull=True, lease_expires_at__lte=now)
            .select_related("environment")
            .order_by("lease_expires_at")[:limit]
        )
        # Claimed: another sweeper skips these until the retry delay has passed.
        EnvironmentLease.objects.filter(pk__in=[lease.pk for lease in claimed]).update(
            lease_expires_at=now + timedelta(seconds=SWEEP_RETRY_SECONDS)
        )
    if not claimed:
        return 0
    policy = policy_from_settings()

    async def send_all() -> list[tuple[bool, str]]:
        senders: dict[int, HttpEnvironment] = {}
        for lease in claimed:
            if lease.environment_id not in senders:
                senders[lease.environment_id] = HttpEnvironment(
                    environment_endpoint(lease.environment), policy
                )
        try:
            return list(
                await asyncio.gather(
                    *(senders[lease.environment_id].send_end(lease.end_payload) for lease in claimed)
                )
            )
        finally:
            for sender in senders.values():
                await sender.aclose()

    outcomes = run_sync(send_all)
    delivered = 0
    for lease, (ok, error) in zip(claimed, outcomes, strict=True):
        EnvironmentLease.objects.filter(pk=lease.pk).update(
            end_delivered_at=timezone.now() if ok else None,
            end_attempts=lease.end_attempts + 1,
            last_error=error[:2000],
        )
        delivered += int(ok)
        if not ok:
            logger.warning("environment end for %s not delivered: %s", lease.trace_id, error)
    logger.info("environment sweeper: %d of %d missing ends delivered", delivered, len(claimed))
    return delivered


# --- MCP servers -------------------------------------------------------------------------------------


def mcp_endpoint(server: McpServer) -> McpServerEndpoint:
    from trainer.outbound.mcp import McpServerEndpoint

    return McpServerEndpoint(
        url=server.url,
        headers=dict(server.headers or {}),
        timeout_s=server.timeout_s,
        max_response_bytes=server.max_response_bytes,
    )


def refresh_mcp_tools(server: McpServer) -> McpServer:
    """Lists the server's tools now (through the outbound policy) and stores them; on failure the
    previous list is kept and `last_error` says why."""
    from trainer.outbound.mcp import list_tools

    endpoint = mcp_endpoint(server)
    try:
        tools = run_sync(lambda: list_tools(endpoint, policy_from_settings()))
    except OutboundError as error:
        server.last_error = error.message
        server.save(update_fields=["last_error", "updated_at"])
        return server
    server.tools = [
        {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}
        for tool in tools
    ]
    server.tools_refreshed_at = timezone.now()
    server.last_error = ""
    server.save(update_fields=["tools", "tools_refreshed_at", "last_error", "updated_at"])
    return server


def resolve_mcp_tools(*, owner, picks: Any) -> list[dict[str, Any]]:
    """The exact schemas of the picked MCP tools ([{"server": pk, "name": ...}, ...]) as their servers
    listed them at the last refresh: what a run records. Raises ValueError naming what is wrong."""
    selected: list[dict[str, Any]] = []
    servers: dict[int, McpServer] = {}
    seen: set[str] = set()
    for pick in picks or ():
        if not isinstance(pick, Mapping) or not isinstance(pick.get("name"), str):
            raise ValueError('each MCP tool is {"server": <id>, "name": "<tool name>"}')
        server_id = pick.get("server")
        server = servers.get(server_id)
        if server is None:
            server = (
                McpServer.objects.filter(owner=owner, pk=server_id).first()
                if str(server_id).isdigit()
                else None
            )
            if server is None:
                raise ValueError(f"MCP server {server_id} is not one of yours")
            servers[server.pk] = server
        listed = {tool["name"]: tool for tool in server.tools}
        name = pick["name"]
        if name not in listed:
            raise ValueError(f"the MCP server {server.name!r} lists no tool {name!r}; refresh its tools")
        if name in seen:
            raise ValueError(f"two MCP tools are named {name!r}; pick one")
        seen.add(name)
        selected.append({"server": server.pk, **listed[name]})
    return selected


def mcp_tool_schemas(run: Run) -> list[dict[str, Any]]:
    """The run's MCP tools as function-tool schemas (for the chat template)."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
            },
        }
        for tool in run.mcp_tools or []
    ]


def build_mcp_executor_for(run: Run) -> McpToolExecutor | None:
    if not run.mcp_tools:
        return None
    from trainer.outbound.mcp import McpToolExecutor

    servers = {
        server.pk: mcp_endpoint(server)
        for server in McpServer.objects.filter(pk__in={t["server"] for t in run.mcp_tools})
    }
    return McpToolExecutor(
        {tool["name"]: servers[tool["server"]] for tool in run.mcp_tools if tool["server"] in servers},
        policy_from_settings(),
    )


# --- "Try it" --------------------------------------------------------------------------------------


def _secret_free(text: str, secrets: list[str]) -> str:
    from trainer.outbound.client import redact

    return redact(text, secrets)


def try_mcp_tool(*, server: McpServer, name: str, arguments: Any) -> dict[str, Any]:
    """One call of one MCP tool exactly as a rollout makes it (own session, trace_id in _meta and
    X-RFT-Rollout-Id); what the model would read, and how it went."""
    import json
    import uuid

    from trainer.interfaces import ToolCall
    from trainer.outbound.mcp import McpToolExecutor

    trace_id = f"trace_{uuid.uuid4().hex}"
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    executor = McpToolExecutor({name: mcp_endpoint(server)}, policy_from_settings())

    async def call():
        try:
            return await executor.execute(
                [ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, text)], item={}, trace_id=trace_id
            )
        finally:
            await executor.aclose()

    (result,) = run_sync(call)
    return {
        "ok": result.ok,
        "output": result.output,
        "error_type": result.error_type,
        "error": result.error,
        "latency_ms": round(result.latency_ms, 1),
        "trace_id": trace_id,
    }


def try_environment(
    *, environment: Environment, item: Mapping[str, Any] | None = None, tool=None, arguments: Any = None
) -> dict[str, Any]:
    """start -> (one call of `tool`, a registered HTTP Tool, with the same trace_id) -> end, exactly
    as a rollout; each step's outcome for the "Try it" panel. The end is sent whatever happened."""
    import json
    import time
    import uuid

    from trainer.interfaces import EnvironmentCallError, ToolCall
    from trainer.outbound.tools import HttpToolExecutor

    from .tools import endpoint_for

    trace_id = f"trace_{uuid.uuid4().hex}"
    policy = policy_from_settings()
    env = HttpEnvironment(environment_endpoint(environment), policy, run_id="try")
    secrets = [
        *(environment.headers or {}).values(),
        *([environment.signing_secret] if environment.signing_secret else []),
    ]

    class _Probe:  # what HttpEnvironment reads of a rollout
        def __init__(self) -> None:
            self.trace_id = trace_id
            self.item = dict(item or {})
            self.split = "try"
            self.item_index = 0
            self.finish_reason = "answer"
            self.reward = None
            self.score_value = None

    probe = _Probe()

    async def run() -> dict[str, Any]:
        steps: dict[str, Any] = {"trace_id": trace_id}
        started = time.perf_counter()
        try:
            answer = await env.start(probe)
            steps["start"] = {
                "ok": True,
                "context": answer.context,
                "tools": answer.tools,
                "tools_mode": answer.tools_mode,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        except EnvironmentCallError as error:
            probe.finish_reason = "env_error"
            steps["start"] = {
                "ok": False,
                "error_type": error.error_type,
                "error": _secret_free(error.message, secrets),
            }
        if tool is not None and steps["start"]["ok"]:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
            executor = HttpToolExecutor({tool.name: endpoint_for(tool)}, policy, max_retries=0)
            try:
                (result,) = await executor.execute(
                    [ToolCall(f"call_{uuid.uuid4().hex[:24]}", tool.name, text)],
                    item=probe.item,
                    trace_id=trace_id,
                )
            finally:
                await executor.aclose()
            steps["tool"] = {
                "name": tool.name,
                "ok": result.ok,
                "output": result.output,
                "error_type": result.error_type,
                "error": result.error,
            }
        started = time.perf_counter()
        delivered, error = await env.send_end(
            end_payload(
                trace_id=trace_id, run_id="try", finish_reason=probe.finish_reason, reward=None, score=None
            )
        )
        steps["end"] = {
            "ok": delivered,
            "error": _secret_free(error, secrets),
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        await env.aclose()
        return steps

    return run_sync(run)
