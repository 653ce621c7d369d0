"""The trainer's Reporter backed by the database: each step in one transaction, then announced.

Only the worker holding the run's lease may write (LeaseLost otherwise). Writes are idempotent:
a resumed run that reports a step again stores nothing twice (unique run/step/key, unique trace_id).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import orjson
from django.db import connection, models, transaction
from django.utils import timezone

from ..models import Checkpoint, MetricPoint, Run, RunEvent, Trajectory
from ..models.run import RunStatus
from ..selectors.metrics import bump_metrics_generation
from ..watch.flags import StepWatch
from . import readiness, rollups, watch
from .runs import LeaseLost, NewEvent, append_events

if TYPE_CHECKING:  # the web process never imports the trainer (torch) at run time
    from trainer.interfaces import TrajectoryRecord

logger = logging.getLogger(__name__)

TRAJECTORY_FIELDS = {field.name for field in Trajectory._meta.get_fields()} | {"run_id", "item_id"}


def _without_nul(value):
    """PostgreSQL text and jsonb cannot hold NUL characters; a model can emit them. Keep the rest."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(item) for item in value]
    return value


# Rollouts are written with COPY on PostgreSQL: a step's 50 rollouts carry tens of kilobytes of
# messages, and the ORM's bulk insert spent most of a step escaping them into array literals.
_COPY_FIELDS = [field for field in Trajectory._meta.concrete_fields if not field.primary_key]


def _copy_value(field: models.Field, row: Mapping, now):
    if field.attname in row:
        value = row[field.attname]
    elif field.name in row:
        value = row[field.name]
    elif isinstance(field, models.DateTimeField) and field.auto_now_add:
        return now
    else:
        value = field.get_default()
    if isinstance(field, models.JSONField):
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        # PostgreSQL's jsonb refuses \u0000; re-encode the rare value that holds one, without it.
        return (
            text
            if "\\u0000" not in text
            else orjson.dumps(_without_nul(value), option=orjson.OPT_NON_STR_KEYS).decode()
        )
    return _without_nul(value) if isinstance(value, str) else value


def _store_rollouts(rows: list[dict]) -> int:
    """Insert the rollouts whose trace_id is not stored yet (a step reported again stores nothing
    twice); the caller holds the run's row lock. Returns how many were inserted."""
    unique: dict[str, dict] = {}
    for row in rows:
        unique.setdefault(row["trace_id"], row)
    stored = set(Trajectory.objects.filter(trace_id__in=list(unique)).values_list("trace_id", flat=True))
    new = [row for trace_id, row in unique.items() if trace_id not in stored]
    if not new:
        return 0
    if connection.vendor != "postgresql":
        Trajectory.objects.bulk_create(
            [
                Trajectory(**{k: _without_nul(v) for k, v in row.items() if k in TRAJECTORY_FIELDS})
                for row in new
            ],
            ignore_conflicts=True,
            batch_size=500,
        )
        return len(new)
    now = timezone.now()
    columns = ", ".join(connection.ops.quote_name(field.column) for field in _COPY_FIELDS)
    table = connection.ops.quote_name(Trajectory._meta.db_table)
    with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in new:
            copy.write_row([_copy_value(field, row, now) for field in _COPY_FIELDS])
    return len(new)


def _locked_run(*, run_id: int, lease_owner: str) -> Run:
    run = Run.objects.select_for_update().get(pk=run_id)
    if run.lease_owner != lease_owner or run.status != RunStatus.RUNNING:
        raise LeaseLost(f"run {run_id} is no longer held by {lease_owner}")
    return run


def _step_summary(trajectories: Sequence[TrajectoryRecord]) -> dict:
    rewards = [record.reward for record in trajectories if record.reward is not None]
    return {
        "count": len(trajectories),
        "splits": sorted({record.split for record in trajectories}),
        "reward_mean": sum(rewards) / len(rewards) if rewards else None,
    }


@transaction.atomic
def record_step(
    *,
    run_id: int,
    lease_owner: str,
    step: int,
    metrics: Mapping[str, float],
    trajectories: Sequence[TrajectoryRecord],
    item_ids: Mapping[tuple[str, int], int] | None = None,
) -> RunEvent | None:
    """Store one step's scalars and rollouts together and announce them (after commit) as one event."""
    run = _locked_run(run_id=run_id, lease_owner=lease_owner)
    # Shallow: `dataclasses.asdict` deep-copies every message of every rollout, which dominated
    # the cost of a step; `_without_nul` copies only what it changes.
    rows = [{field.name: getattr(record, field.name) for field in fields(record)} for record in trajectories]
    # The reward-hacking watch flags the rollouts and adds its metrics before anything is stored.
    watched = watch.watch_recorded_step(
        run=run, step=step, metrics=metrics, rollouts=rows, item_ids=item_ids or {}
    )
    metrics = {**metrics, **watched.metrics}
    stored_keys = set(MetricPoint.objects.filter(run=run, step=step).values_list("key", flat=True))
    fresh = {key: float(value) for key, value in metrics.items() if key not in stored_keys}
    for row in rows:
        row["run_id"] = run.pk
        row["item_id"] = (item_ids or {}).get((row["split"], row["item_index"]))
        if watched.flags.get(row["trace_id"]):
            row["flags"] = watched.flags[row["trace_id"]]
    stored_rollouts = _store_rollouts(rows)
    if not fresh and not stored_rollouts:
        return None
    (event,) = append_events(
        run=run,
        events=[
            NewEvent(
                kind=RunEvent.Kind.METRICS,
                step=step,
                payload={"metrics": fresh, "rollouts": _step_summary(trajectories)},
            )
        ],
    )
    if fresh:
        MetricPoint.objects.bulk_create(
            [
                MetricPoint(
                    run=run, seq=event.seq, step=step, key=key, value=value, wall_time=event.created_at
                )
                for key, value in fresh.items()
            ],
            ignore_conflicts=True,
        )
        rollups.add_points(run=run, step=step, values=fresh, wall_time=event.created_at)
    updates = {}
    if step > run.current_step:
        updates["current_step"] = step
    total = metrics.get("progress/total_steps")
    if total and int(total) != run.total_steps:
        updates["total_steps"] = int(total)
    if updates:
        Run.objects.filter(pk=run.pk).update(**updates)
    _announce_watch(run=run, step=step, watched=watched)
    if step == 0 and trajectories:
        readiness.record_run_baseline(run=run, rollouts=rows)
    return event


def _announce_watch(*, run: Run, step: int, watched: StepWatch) -> None:
    """Log newly fired trends and, when the pause rule fired, ask the worker to pause (it stops after
    this step and keeps its checkpoint; see training.py)."""
    lines = [
        NewEvent(
            kind=RunEvent.Kind.LOG,
            step=step,
            payload={
                "level": "warning",
                "message": f"Watch trend {alert['rule']}: {alert['detail']}",
                "watch": alert,
            },
        )
        for alert in watched.trends
        if alert.get("new")
    ]
    if watched.pause and not run.pause_requested:
        run.pause_requested = True
        run.paused_by = {**watched.pause, "resumed_at_step": (run.paused_by or {}).get("resumed_at_step", 0)}
        Run.objects.filter(pk=run.pk).update(pause_requested=True, paused_by=run.paused_by)
        lines.append(
            NewEvent(
                kind=RunEvent.Kind.LOG,
                step=step,
                payload={
                    "level": "warning",
                    "message": f"Pausing for review: {watched.pause['detail']}.",
                    "watch": watched.pause,
                },
            )
        )
    if lines:
        append_events(run=run, events=lines)


@transaction.atomic
def record_checkpoint(
    *, run_id: int, lease_owner: str, step: int, path: str, metrics: Mapping[str, float]
) -> None:
    run = _locked_run(run_id=run_id, lease_owner=lease_owner)
    _, created = Checkpoint.objects.update_or_create(
        run=run,
        step=step,
        defaults={"path": path, "metrics": {key: float(value) for key, value in metrics.items()}},
    )
    append_events(
        run=run,
        events=[NewEvent(kind=RunEvent.Kind.CHECKPOINT, step=step, payload={"path": path, "new": created})],
    )


@transaction.atomic
def discard_steps_after(*, run_id: int, lease_owner: str, step: int) -> int:
    """Before a resumed attempt: drop what a lost attempt recorded after the checkpoint it resumes
    from (`step`; -1 when there is none), so that the steps it trains again are stored once and
    match the rollouts. Returns how many metric points were dropped."""
    run = _locked_run(run_id=run_id, lease_owner=lease_owner)
    dropped, _ = MetricPoint.objects.filter(run=run, step__gt=step).delete()
    if dropped:
        # The cached blocks of its metric events (selectors.metrics.metrics_after_json) are stale.
        transaction.on_commit(lambda: bump_metrics_generation(run.pk))
    rollups.discard_after(run_id=run.pk, step=step)
    rollouts, _ = Trajectory.objects.filter(run=run, step__gt=step).delete()
    Run.objects.filter(pk=run.pk).update(current_step=max(step, 0))
    if dropped or rollouts:
        append_events(
            run=run,
            events=[
                NewEvent(
                    kind=RunEvent.Kind.LOG,
                    payload={
                        "level": "info",
                        "message": (
                            f"Resuming from step {max(step, 0)}: discarded {dropped} metric points and "
                            f"{rollouts} rollouts that the lost attempt recorded after it."
                        ),
                        "rewound_to_step": step,
                    },
                )
            ],
        )
    return dropped


class DatabaseReporter:
    """`trainer.interfaces.Reporter` writing to the database as the lease holder `lease_owner`."""

    def __init__(self, *, run_id: int, lease_owner: str, item_ids: Mapping[tuple[str, int], int]):
        self.run_id = run_id
        self.lease_owner = lease_owner
        self.item_ids = item_ids

    pause_requested = False  # the watch's pause rule fired: the trainer stops after this step

    def report_step(
        self, step: int, metrics: Mapping[str, float], trajectories: Sequence[TrajectoryRecord]
    ) -> None:
        record_step(
            run_id=self.run_id,
            lease_owner=self.lease_owner,
            step=step,
            metrics=metrics,
            trajectories=trajectories,
            item_ids=self.item_ids,
        )
        self.pause_requested = (
            Run.objects.filter(pk=self.run_id).values_list("pause_requested", flat=True).get()
        )

    def should_stop(self) -> bool:
        return self.pause_requested

    def report_checkpoint(self, step: int, path: str, metrics: Mapping[str, float]) -> None:
        record_checkpoint(
            run_id=self.run_id, lease_owner=self.lease_owner, step=step, path=path, metrics=metrics
        )

    def log(self, level: str, message: str) -> None:
        from .runs import log_run

        log_run(run_id=self.run_id, level=level, message=message, lease_owner=self.lease_owner)
