"""Readiness reports and grader audits: reads, filtered by what the user may see."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from ..models import GraderAudit, MetricPoint, ReadinessReport, Run, Trajectory
from ..watch.rules import ROLLOUT_RULES, TREND_RULES, watch_config_for


def reports_for(*, user) -> QuerySet[ReadinessReport]:
    return ReadinessReport.objects.visible_to(user).select_related("dataset", "grader", "run")


def comparable_reports(*, report: ReadinessReport, user) -> list[ReadinessReport]:
    """Reports on the same dataset and base model, newest first: the grader versions side by side."""
    return list(
        reports_for(user=user)
        .filter(dataset_id=report.dataset_id, base_model=report.base_model)
        .order_by("-created_at", "-pk")[:20]
    )


def audits_for(*, user, run: Run) -> QuerySet[GraderAudit]:
    return GraderAudit.objects.visible_to(user).filter(run=run).select_related("grader")


def run_watch_summary(*, run: Run) -> dict[str, Any]:
    """What the run page's watch panel shows: flagged rollouts by rule, the settings, any pause."""
    train = Trajectory.objects.filter(run=run, split=Trajectory.Split.TRAIN)
    flagged = train.exclude(flags=[])
    counts: dict[str, int] = {}
    for flags in flagged.values_list("flags", flat=True).iterator(chunk_size=2000):
        for rule in {flag.get("rule") for flag in flags}:
            counts[rule] = counts.get(rule, 0) + 1
    latest: dict[str, float] = {}
    for key, value in (
        MetricPoint.objects.filter(run=run, key__startswith="watch/trend/")
        .order_by("step")
        .values_list("key", "value")
    ):
        latest[key.removeprefix("watch/trend/")] = value
    trends = [
        {"rule": name, "meaning": meaning, "active": latest.get(name) == 1.0}
        for name, meaning in TREND_RULES.items()
    ]
    config = watch_config_for(run.watch_config)
    return {
        "flagged": flagged.count(),
        "rollouts": train.count(),
        "by_rule": [
            {"rule": rule, "count": counts.get(rule, 0), "meaning": meaning}
            for rule, meaning in ROLLOUT_RULES.items()
        ],
        "trends": trends,
        "active_trends": [trend for trend in trends if trend["active"]],
        "pause": config["pause"],
        "paused_by": run.paused_by or None,
    }
