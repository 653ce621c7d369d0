"""Grader audit: a second grader (e.g. a model judge) scores a sample of a run's flagged and
unflagged rollouts, and the page shows where it disagrees with the run's grader.

A disagreement is a score difference of at least DISAGREEMENT (on the usual 0..1 scale), or one of
the two failing to grade. Many disagreements among flagged rollouts and few among unflagged ones is
what a hole in the run's grader looks like.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.utils import timezone

from trainer.outbound.client import run_sync

from ..models import DatasetItem, Grader, GraderAudit, ReadinessStatus, Run, Trajectory
from . import rate_limits
from .graders import grader_needs

DISAGREEMENT = 0.5
MAX_SAMPLE = 50


class AuditError(ValueError):
    """Bad input for an audit (shown next to the form)."""


@transaction.atomic
def create_audit(
    *, owner, run: Run, grader: Grader, sample_size: int = 10, start: bool = True
) -> GraderAudit:
    if grader.owner_id != owner.pk and not owner.is_staff:
        raise AuditError("Not one of your graders.")
    if run.owner_id != owner.pk and not owner.is_staff:
        raise AuditError("Not one of your runs.")
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise AuditError(f"Sample size: between 1 and {MAX_SAMPLE} of each kind.")
    needs = grader_needs(grader)
    if needs:
        raise AuditError(f"The grader {grader.name} cannot score here: {'; '.join(needs)}.")
    rate_limits.check_rate(user=owner, action="audit")
    audit = GraderAudit.objects.create(
        owner=owner, run=run, grader=grader, grader_version=grader.version, sample_size=sample_size
    )
    if start:
        from ..tasks import run_grader_audit

        run_grader_audit.delay_on_commit(audit.pk)
    return audit


def sample_rollouts(*, run_id: int, size: int, seed: int = 0) -> list[Trajectory]:
    """Up to `size` flagged and `size` unflagged graded train rollouts, the latest steps first."""
    base = Trajectory.objects.filter(run_id=run_id, step__gt=0, reward__isnull=False).order_by("-step", "id")
    flagged = list(base.exclude(flags=[])[: size * 4])
    unflagged = list(base.filter(flags=[])[: size * 4])
    rng = random.Random(seed)
    picked = []
    for pool in (flagged, unflagged):
        picked += rng.sample(pool, min(size, len(pool)))
    return picked


def _sample(trajectory: Trajectory) -> dict[str, Any]:
    tool_calls = [
        call
        for message in trajectory.messages
        if isinstance(message, Mapping) and message.get("role") == "assistant"
        for call in (message.get("tool_calls") or [])
    ]
    return {
        "output_text": trajectory.final_answer,
        "output_tools": tool_calls,
        "messages": trajectory.messages,
        "trace_id": trajectory.trace_id,
    }


def compare_scores(first: float | None, second: float | None) -> bool:
    """Whether the two graders disagree on one rollout."""
    if first is None or second is None:
        return first is not second
    return abs(first - second) >= DISAGREEMENT


def execute_audit(*, audit_id: int) -> str:
    from .graders import build_grader_for

    audit = GraderAudit.objects.select_related("grader", "run").get(pk=audit_id)
    if audit.status != ReadinessStatus.QUEUED:
        return audit.status
    GraderAudit.objects.filter(pk=audit_id).update(status=ReadinessStatus.RUNNING)
    trajectories = sample_rollouts(run_id=audit.run_id, size=audit.sample_size, seed=audit.pk)
    items = dict(
        DatasetItem.objects.filter(pk__in=[t.item_id for t in trajectories if t.item_id]).values_list(
            "pk", "data"
        )
    )
    try:
        grader = build_grader_for(audit.grader)

        async def grade_all():
            try:
                return await asyncio.gather(
                    *(
                        grader.grade(_sample(t), items.get(t.item_id, {}), trace_id=t.trace_id)
                        for t in trajectories
                    ),
                    return_exceptions=True,
                )
            finally:
                close = getattr(grader, "aclose", None)
                if close is not None:
                    await close()

        # run_sync: a fresh loop here, or on a thread of its own where one is running already (Celery's
        # eager mode inside an event loop); asyncio.run would refuse there and fail the audit.
        results = run_sync(grade_all)
    except Exception as exc:
        audit.status = ReadinessStatus.FAILED
        audit.error = f"{type(exc).__name__}: {exc}"[:2000]
        audit.finished_at = timezone.now()
        audit.save(update_fields=["status", "error", "finished_at", "updated_at"])
        return audit.status
    rows = []
    for trajectory, result in zip(trajectories, results, strict=True):
        if isinstance(result, BaseException):
            second, errors = None, [{"type": "exception", "message": str(result)[:300]}]
        else:
            second, errors = result.score, result.errors
        rows.append(
            {
                "trace_id": trajectory.trace_id,
                "step": trajectory.step,
                "flagged": bool(trajectory.flags),
                "flags": trajectory.flags,
                "final_answer": trajectory.final_answer[:300],
                "run_score": trajectory.score,
                "audit_score": second,
                "audit_errors": errors,
                "disagree": compare_scores(trajectory.score, second),
            }
        )
    audit.results = {"rows": rows, "summary": summarize(rows), "threshold": DISAGREEMENT}
    audit.status = ReadinessStatus.SUCCEEDED
    audit.finished_at = timezone.now()
    audit.save(update_fields=["status", "results", "finished_at", "updated_at"])
    return audit.status


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for label, flagged in (("flagged", True), ("unflagged", False)):
        group = [row for row in rows if row["flagged"] is flagged]
        disagree = sum(1 for row in group if row["disagree"])
        summary[label] = {
            "rollouts": len(group),
            "disagree": disagree,
            "rate": disagree / len(group) if group else None,
        }
    return summary
