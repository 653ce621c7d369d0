"""Run lifecycle: status changes, the worker lease, the per-run event log and step records."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import realtime
from ..models import MetricPoint, Run, RunEvent, RunStatus
from . import rollups

logger = logging.getLogger(__name__)


class RunStateError(Exception):
    """A requested change does not fit the run's current state (shown to the user as is)."""


class LeaseLost(Exception):
    """The caller no longer holds the run's lease: it must stop writing."""


@dataclass(frozen=True)
class NewEvent:
    kind: str
    payload: dict
    step: int | None = None


def append_events(*, run: Run, events: Iterable[NewEvent]) -> list[RunEvent]:
    """Store events on the run's log with the next sequence numbers and announce them live.

    Expects the caller's lock: `run` was read with `Run.objects.select_for_update()` inside the
    transaction that is still open, so that no other writer takes the same `seq` numbers (the row
    lock serialises every writer of `last_seq`). Raises RuntimeError outside a transaction.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("append_events needs the run locked with select_for_update in a transaction")
    rows = []
    for event in events:
        run.last_seq += 1
        rows.append(
            RunEvent(run=run, seq=run.last_seq, kind=event.kind, step=event.step, payload=event.payload)
        )
    if not rows:
        return []
    RunEvent.objects.bulk_create(rows)
    Run.objects.filter(pk=run.pk).update(last_seq=run.last_seq)
    realtime.publish_run_events(run_id=run.pk, events=[row.as_message() for row in rows])
    return rows


def _status_payload(run: Run) -> dict:
    return {
        "status": run.status,
        "attempt": run.attempt,
        "error": run.error,
        "current_step": run.current_step,
        "total_steps": run.total_steps,
    }


@transaction.atomic
def append_status_event(*, run_id: int) -> RunEvent:
    """Announce the run's current status (e.g. right after it was created as queued)."""
    run = Run.objects.select_for_update().get(pk=run_id)
    (event,) = append_events(
        run=run, events=[NewEvent(kind=RunEvent.Kind.STATUS, payload=_status_payload(run))]
    )
    return event


@transaction.atomic
def transition_run(*, run_id: int, status: str, error: str = "", lease_owner: str | None = None) -> Run:
    """Move a run along its status machine and announce it. With `lease_owner`, only that worker may."""
    run = Run.objects.select_for_update().get(pk=run_id)
    if lease_owner is not None and run.lease_owner != lease_owner:
        raise LeaseLost(f"run {run_id} is held by {run.lease_owner or 'nobody'}, not {lease_owner}")
    if not run.can_transition_to(status):
        raise RunStateError(f"A {run.get_status_display().lower()} run cannot become {status}.")
    now = timezone.now()
    run.status = status
    run.error = error
    if status == RunStatus.QUEUED:
        run.queued_at = now
        run.finished_at = None
        run.cancel_requested = False
        if run.pause_requested:  # a Resume after a watch pause: the rule restarts from here
            run.pause_requested = False
            run.paused_by = {**run.paused_by, "resumed_at_step": run.current_step}
    if run.is_terminal:
        run.finished_at = now
        run.lease_owner = ""
    run.save(
        update_fields=[
            "status",
            "error",
            "queued_at",
            "finished_at",
            "cancel_requested",
            "pause_requested",
            "paused_by",
            "lease_owner",
            "updated_at",
        ]
    )
    append_events(run=run, events=[NewEvent(kind=RunEvent.Kind.STATUS, payload=_status_payload(run))])
    return run


@transaction.atomic
def acquire_lease(*, run_id: int, worker_id: str) -> Run | None:
    """Take a queued run for `worker_id` (a new attempt). None if it is not queued or is held already.

    A broker redelivery of the same task while the first delivery still runs finds the run
    `running` with a fresh heartbeat and gets None: the run never trains twice at once.
    """
    run = Run.objects.select_for_update().get(pk=run_id)
    if run.status != RunStatus.QUEUED:
        return None
    if run.attempt >= run.max_attempts:
        run.status = RunStatus.FAILED
        run.error = f"Gave up after {run.attempt} attempts."
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "finished_at", "updated_at"])
        append_events(run=run, events=[NewEvent(kind=RunEvent.Kind.STATUS, payload=_status_payload(run))])
        return None
    now = timezone.now()
    run.status = RunStatus.RUNNING
    run.attempt += 1
    run.lease_owner = worker_id
    run.heartbeat_at = now
    run.started_at = run.started_at or now
    run.error = ""
    run.save(
        update_fields=[
            "status",
            "attempt",
            "lease_owner",
            "heartbeat_at",
            "started_at",
            "error",
            "updated_at",
        ]
    )
    append_events(run=run, events=[NewEvent(kind=RunEvent.Kind.STATUS, payload=_status_payload(run))])
    return run


def heartbeat(*, run_id: int, worker_id: str) -> bool:
    """Renew the lease. Returns whether the run asked to be cancelled; raises LeaseLost if not ours."""
    updated = Run.objects.filter(pk=run_id, lease_owner=worker_id, status=RunStatus.RUNNING).update(
        heartbeat_at=timezone.now()
    )
    if not updated:
        raise LeaseLost(f"run {run_id} is no longer held by {worker_id}")
    return Run.objects.filter(pk=run_id).values_list("cancel_requested", flat=True).get()


def sweep_lost_runs() -> list[int]:
    """Mark running runs whose heartbeat stopped as failed (the worker died); they can be resumed."""
    deadline = timezone.now() - timedelta(seconds=settings.RFT_LEASE_TIMEOUT_SECONDS)
    lost = list(
        Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=deadline).values_list("pk", flat=True)
    )
    failed = []
    for run_id in lost:
        with transaction.atomic():
            run = Run.objects.select_for_update().get(pk=run_id)
            if run.status != RunStatus.RUNNING or run.heartbeat_at >= deadline:
                continue  # it recovered or finished while we looked
            seconds = int((timezone.now() - run.heartbeat_at).total_seconds())
            run.status = RunStatus.FAILED
            run.error = (
                f"The worker {run.lease_owner or '?'} stopped sending heartbeats {seconds} s ago "
                "(worker lost). Resume continues from the last checkpoint."
            )
            run.lease_owner = ""
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "error", "lease_owner", "finished_at", "updated_at"])
            append_events(run=run, events=[NewEvent(kind=RunEvent.Kind.STATUS, payload=_status_payload(run))])
            failed.append(run_id)
            logger.warning("run %s marked failed: %s", run_id, run.error)
    return failed


@transaction.atomic
def log_run(*, run_id: int, level: str, message: str, lease_owner: str | None = None) -> None:
    run = Run.objects.select_for_update().get(pk=run_id)
    if lease_owner is not None and run.lease_owner != lease_owner:
        raise LeaseLost(f"run {run_id} is no longer held by {lease_owner}")
    append_events(
        run=run,
        events=[NewEvent(kind=RunEvent.Kind.LOG, payload={"level": level, "message": message[:10_000]})],
    )


@transaction.atomic
def record_metrics(
    *, run_id: int, step: int, metrics: Mapping[str, float], lease_owner: str | None = None
) -> RunEvent | None:
    """Store one step's scalars and announce them as one event. Idempotent: a step already stored
    (a resumed run repeating it) is not stored or announced twice."""
    run = Run.objects.select_for_update().get(pk=run_id)
    if lease_owner is not None and run.lease_owner != lease_owner:
        raise LeaseLost(f"run {run_id} is no longer held by {lease_owner}")
    stored_keys = set(MetricPoint.objects.filter(run=run, step=step).values_list("key", flat=True))
    fresh = {key: float(value) for key, value in metrics.items() if key not in stored_keys}
    if not fresh:
        return None
    (event,) = append_events(
        run=run, events=[NewEvent(kind=RunEvent.Kind.METRICS, step=step, payload={"metrics": fresh})]
    )
    now = timezone.now()
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, seq=event.seq, step=step, key=key, value=value, wall_time=now)
            for key, value in fresh.items()
        ],
        ignore_conflicts=True,
    )
    rollups.add_points(run=run, step=step, values=fresh, wall_time=now)
    if step > run.current_step:
        Run.objects.filter(pk=run.pk).update(current_step=step)
    return event
