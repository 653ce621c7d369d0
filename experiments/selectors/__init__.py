"""Reads. Keyword-only, typed functions; every one filters by what the user may see."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import F, Func, QuerySet, Subquery

from ..models import Dataset, Grader, Run, RunEvent, Tool


def runs_for(*, user) -> QuerySet[Run]:
    return Run.objects.visible_to(user).select_related("train_dataset", "eval_dataset", "grader")


def datasets_for(*, user) -> QuerySet[Dataset]:
    return Dataset.objects.visible_to(user)


def tools_for(*, user) -> QuerySet[Tool]:
    return Tool.objects.visible_to(user)


def graders_for(*, user) -> QuerySet[Grader]:
    return Grader.objects.visible_to(user)


def user_can_view_run(*, user, run_id: int) -> bool:
    return Run.objects.visible_to(user).filter(pk=run_id).exists()


def run_events_after(*, run_id: int, after: int, limit: int = 5000) -> list[dict]:
    """The run's stored events with seq > after, oldest first, as the messages the live view sends."""
    events = RunEvent.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")[:limit]
    return [event.as_message() for event in events]


def run_last_seq(*, run_id: int) -> int:
    """The seq of the run's last stored event (0: none, or no such run)."""
    return Run.objects.filter(pk=run_id).values_list("last_seq", flat=True).first() or 0


def dashboard_counts(*, user) -> dict[str, int]:
    """The dashboard's tiles, in one query. Rejected uploads are not datasets: they are counted apart."""
    from ..models import RunStatus
    from ..models.dataset import DatasetStatus

    datasets = datasets_for(user=user)
    counts = {
        "dataset_count": datasets.filter(status=DatasetStatus.READY),
        "rejected_upload_count": datasets.exclude(status=DatasetStatus.READY),
        "tool_count": tools_for(user=user),
        "grader_count": graders_for(user=user),
        "active_run_count": Run.objects.visible_to(user).filter(
            status__in=[RunStatus.QUEUED, RunStatus.RUNNING]
        ),
    }
    # One scalar subquery per tile, selected from the user's own row.
    annotations = {
        name: Subquery(queryset.order_by().annotate(n=Func(F("pk"), function="COUNT")).values("n")[:1])
        for name, queryset in counts.items()
    }
    values = get_user_model().objects.filter(pk=user.pk).values(**annotations).first() or {}
    return {name: values.get(name) or 0 for name in counts}
