"""Reads about environments: a run's lifecycle counts, a rollout's environment for display."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, Q

from ..models import Environment, EnvironmentLease, McpServer, Trajectory


def environment_counts(*, run_id: int) -> dict[str, int]:
    """Started environments, failed starts (stored rollouts) and ends not delivered yet."""
    leases = EnvironmentLease.objects.filter(run_id=run_id).aggregate(
        started=Count("pk"), pending=Count("pk", filter=Q(end_delivered_at__isnull=True))
    )
    start_errors = Trajectory.objects.filter(run_id=run_id, finish_reason="env_error").count()
    return {"started": leases["started"], "ends_pending": leases["pending"], "start_errors": start_errors}


def environment_view(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored rollout's environment with its unix times as aware datetimes (for templates)."""
    if not record:
        return None

    def when(value):
        return datetime.fromtimestamp(value, tz=UTC) if isinstance(value, int | float) else None

    return {**record, "started_at": when(record.get("started_at")), "ended_at": when(record.get("ended_at"))}


def environments_for(*, user):
    return Environment.objects.visible_to(user)


def mcp_servers_for(*, user):
    return McpServer.objects.visible_to(user)
