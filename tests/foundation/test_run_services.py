"""The run status machine, the lease, and the per-run event sequence."""

from datetime import timedelta

import pytest
from django.utils import timezone

from experiments.models import MetricPoint, Run, RunEvent, RunStatus
from experiments.services import runs as run_services
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db


def test_a_second_delivery_cannot_take_a_run_that_is_held():
    run = RunFactory()
    assert run_services.acquire_lease(run_id=run.pk, worker_id="gpu-a") is not None
    assert run_services.acquire_lease(run_id=run.pk, worker_id="gpu-b") is None
    run.refresh_from_db()
    assert (run.status, run.lease_owner, run.attempt) == (RunStatus.RUNNING, "gpu-a", 1)


def test_only_the_lease_holder_may_write():
    run = RunFactory()
    run_services.acquire_lease(run_id=run.pk, worker_id="gpu-a")
    with pytest.raises(run_services.LeaseLost):
        run_services.record_metrics(run_id=run.pk, step=1, metrics={"reward": 1.0}, lease_owner="gpu-b")
    with pytest.raises(run_services.LeaseLost):
        run_services.heartbeat(run_id=run.pk, worker_id="gpu-b")
    assert not MetricPoint.objects.filter(run=run).exists()


def test_invalid_transitions_are_refused():
    run = RunFactory()
    with pytest.raises(run_services.RunStateError):
        run_services.transition_run(run_id=run.pk, status=RunStatus.SUCCEEDED)


def test_attempts_are_capped():
    run = RunFactory(max_attempts=1, attempt=1)
    assert run_services.acquire_lease(run_id=run.pk, worker_id="gpu-a") is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "attempts" in run.error


def test_event_seq_is_per_run_and_strictly_increasing_and_metrics_are_idempotent():
    run, other = RunFactory(), RunFactory()
    run_services.acquire_lease(run_id=run.pk, worker_id="w")
    run_services.acquire_lease(run_id=other.pk, worker_id="w")
    run_services.record_metrics(run_id=run.pk, step=1, metrics={"reward": 0.5, "kl": 0.0}, lease_owner="w")
    run_services.record_metrics(run_id=other.pk, step=1, metrics={"reward": 0.1}, lease_owner="w")
    run_services.log_run(run_id=run.pk, level="info", message="hello")
    # A resumed run repeating step 1 stores and announces nothing new.
    assert (
        run_services.record_metrics(
            run_id=run.pk, step=1, metrics={"reward": 0.5, "kl": 0.0}, lease_owner="w"
        )
        is None
    )
    run_services.record_metrics(run_id=run.pk, step=2, metrics={"reward": 0.7}, lease_owner="w")
    seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == [1, 2, 3, 4]  # status(running), step 1, log, step 2
    assert list(RunEvent.objects.filter(run=other).values_list("seq", flat=True)) == [1, 2]
    assert MetricPoint.objects.filter(run=run).count() == 3
    assert Run.objects.get(pk=run.pk).current_step == 2


def test_sweep_marks_runs_with_a_stale_heartbeat_as_failed_and_keeps_fresh_ones():
    stale, fresh = RunFactory(), RunFactory()
    for run in (stale, fresh):
        run_services.acquire_lease(run_id=run.pk, worker_id="w")
    Run.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert run_services.sweep_lost_runs() == [stale.pk]
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == RunStatus.FAILED and "heartbeats" in stale.error
    assert fresh.status == RunStatus.RUNNING
    # A failed run can be resumed (queued again) and then taken as a new attempt.
    run_services.transition_run(run_id=stale.pk, status=RunStatus.QUEUED)
    assert run_services.acquire_lease(run_id=stale.pk, worker_id="w2").attempt == 2
