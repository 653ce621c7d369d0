"""Readiness reports and grader audits: reads, filtered by what the user may see."""

from __future__ import annotations

import json
from typing import Any

from django.core.cache import cache
from django.db import connection
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
    """What the run page's watch panel shows: flagged rollouts by rule, the settings, any pause.

    Counted by PostgreSQL in two queries: the page of a live run is opened again and again while its
    rollouts grow by thousands a minute (reading every flagged rollout's flags into Python grew with them).
    """
    rollouts, flagged, counts, latest = _watch_counts(run=run)
    trends = [
        {"rule": name, "meaning": meaning, "active": latest.get(name) == 1.0}
        for name, meaning in TREND_RULES.items()
    ]
    config = watch_config_for(run.watch_config)
    return {
        "flagged": flagged,
        "rollouts": rollouts,
        "by_rule": [
            {"rule": rule, "count": counts.get(rule, 0), "meaning": meaning}
            for rule, meaning in ROLLOUT_RULES.items()
        ],
        "trends": trends,
        "active_trends": [trend for trend in trends if trend["active"]],
        "pause": config["pause"],
        "paused_by": run.paused_by or None,
    }


# A stopped run's counts, kept by the seq of its last event: its rollouts and trend points only change
# through recording (and discarding) steps, which append events. A finished run's page is opened far
# more often than it changes (bench_load.py: ~14 run pages/s). The run's creation time is in the key
# too: a database started afresh beside a Redis that kept its keys gives ids again.
WATCH_COUNTS_SECONDS = 3600


def _watch_counts(*, run: Run) -> tuple[int, int, dict[str, int], dict[str, float]]:
    """(rollouts, flagged rollouts, flagged rollouts by rule, the latest value of each trend rule)."""
    key = f"watch-counts:{run.pk}:{run.created_at.timestamp()}:{run.last_seq}"
    if run.is_terminal:
        cached = cache.get(key)
        if cached is not None:
            return cached
    if connection.vendor == "postgresql":
        rollouts, flagged, counts = _flag_counts(run_id=run.pk)
        latest = dict(
            MetricPoint.objects.filter(run=run, key__startswith="watch/trend/")
            .order_by("key", "-step")
            .distinct("key")
            .values_list("key", "value")
        )
        latest = {key.removeprefix("watch/trend/"): value for key, value in latest.items()}
        result = (rollouts, flagged, counts, latest)
    else:
        result = _watch_counts_portable(run=run)
    if run.is_terminal:
        cache.set(key, result, timeout=WATCH_COUNTS_SECONDS)
    return result


_FLAG_COUNTS_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE t.flags <> '[]'::jsonb),
       (SELECT coalesce(jsonb_object_agg(rule, n), '{{}}'::jsonb) FROM (
            SELECT rule, count(*) AS n FROM (
                SELECT DISTINCT f.id, f.value ->> 'rule' AS rule
                FROM (SELECT id, jsonb_array_elements(flags) AS value FROM {table}
                      WHERE run_id = %(run)s AND split = %(split)s AND flags <> '[]'::jsonb) AS f
            ) AS per_rollout
            WHERE rule IS NOT NULL
            GROUP BY rule
       ) AS per_rule)
FROM {table} AS t
WHERE t.run_id = %(run)s AND t.split = %(split)s
"""


def _flag_counts(*, run_id: int) -> tuple[int, int, dict[str, int]]:
    """(train rollouts, flagged ones, {rule: flagged rollouts with it}) in one query."""
    sql = _FLAG_COUNTS_SQL.format(table=Trajectory._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"run": run_id, "split": Trajectory.Split.TRAIN})
        rollouts, flagged, by_rule = cursor.fetchone()
    if isinstance(by_rule, str):
        by_rule = json.loads(by_rule)
    return rollouts, flagged, by_rule or {}


def _watch_counts_portable(*, run: Run) -> tuple[int, int, dict[str, int], dict[str, float]]:
    """The same counts read row by row (SQLite: the embedded setup)."""
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
    return train.count(), flagged.count(), counts, latest


# --- the report page ---------------------------------------------------------------------------------

UNMEASURED_SUMMARY = (
    "Cannot judge the learning signal: with one graded rollout per item, reward variance cannot be "
    "measured. Run a readiness check with k ≥ 2."
)


def variance_measurable(results: dict[str, Any]) -> bool:
    """Whether any item had the 2+ graded rollouts that reward variance needs (not with k = 1)."""
    return bool((results.get("zero_variance") or {}).get("items"))


def displayed_verdict(results: dict[str, Any]) -> dict[str, Any]:
    """The stored verdict, except that a report that could not measure variance is never called
    ready or trainable (reports stored before the "unmeasured" level existed said so)."""
    verdict = dict(results.get("verdict") or {})
    if (
        results.get("rollouts")
        and not variance_measurable(results)
        and verdict.get("level") in ("ready", "weak")
    ):
        verdict["level"] = "unmeasured"
        verdict["summary"] = UNMEASURED_SUMMARY
    return verdict


def report_page(*, report: ReadinessReport, user) -> dict[str, Any]:
    """Everything the readiness report page shows, derived from the stored results."""
    results = report.results or {}
    measurable = variance_measurable(results)
    per_item = sorted(
        results.get("per_item", []), key=lambda row: (row["variance"] is None, -(row["variance"] or 0))
    )
    comparable = comparable_reports(report=report, user=user)
    for other in comparable:
        other_results = other.results or {}
        curve = other_results.get("best_of_k") or []
        other.curve_ends = (curve[0]["value"], curve[-1]["value"]) if curve else None
        other.zero = other_results.get("zero_variance") or {} if variance_measurable(other_results) else {}
        other.error_rate = (other_results.get("grader_errors") or {}).get("rate")
    return {
        "report": report,
        "results": results,
        "verdict": displayed_verdict(results),
        "variance_measurable": measurable,
        "per_item": per_item,
        "chart_data": {
            "bestOfK": results.get("best_of_k", []),
            "zeroVariance": results.get("zero_variance", {}) if measurable else None,
            "toolCalls": results.get("tool_calls", {}).get("histogram", []),
        },
        "comparable": comparable,
    }
