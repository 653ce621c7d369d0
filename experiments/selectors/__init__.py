"""Reads. Keyword-only, typed functions; every one filters by what the user may see."""

from __future__ import annotations

from django.db import connection
from django.db.models import QuerySet

from ..models import Dataset, Grader, Run, RunEvent, Tool


def runs_for(*, user) -> QuerySet[Run]:
    return Run.objects.visible_to(user).select_related("train_dataset", "eval_dataset", "grader")


# What the run tables (templates/experiments/_run_table.html) show of each run.
RUN_ROW_FIELDS = (
    "id",
    "owner_id",
    "name",
    "status",
    "base_model",
    "current_step",
    "total_steps",
    "created_at",
)


def run_rows_for(*, user) -> QuerySet[Run]:
    """Runs as the run tables list them: their own columns only. Loading each run's datasets and
    grader with their JSON (runs_for) was most of the dashboard's and the runs list's query cost."""
    return Run.objects.visible_to(user).only(*RUN_ROW_FIELDS)


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
    """The dashboard's tiles, in one query. Rejected uploads are not datasets: they are counted apart.

    Written as SQL: the ORM took longer to compile the five counts (as five queries or as subqueries)
    than PostgreSQL took to answer them. Visibility as `visible_to`: staff see everything."""
    from ..models import RunStatus
    from ..models.dataset import DatasetStatus

    names = ("dataset_count", "rejected_upload_count", "tool_count", "grader_count", "active_run_count")
    if not user or not user.is_authenticated:
        return dict.fromkeys(names, 0)
    owned = "TRUE" if user.is_staff else "owner_id = %(owner)s"
    sql = f"""
    SELECT
        (SELECT count(*) FROM {Dataset._meta.db_table} WHERE {owned} AND status = %(ready)s),
        (SELECT count(*) FROM {Dataset._meta.db_table} WHERE {owned} AND status <> %(ready)s),
        (SELECT count(*) FROM {Tool._meta.db_table} WHERE {owned}),
        (SELECT count(*) FROM {Grader._meta.db_table} WHERE {owned}),
        (SELECT count(*) FROM {Run._meta.db_table} WHERE {owned} AND status IN (%(queued)s, %(running)s))
    """
    params = {
        "owner": user.pk,
        "ready": DatasetStatus.READY,
        "queued": RunStatus.QUEUED,
        "running": RunStatus.RUNNING,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(zip(names, cursor.fetchone(), strict=True))
