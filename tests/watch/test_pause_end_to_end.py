"""The watch's pause rule pauses a real run (real Celery worker, tiny model): the worker stops
cleanly after the step that fired it, the checkpoint is kept, and Resume continues from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.models import Checkpoint, MetricPoint, ReadinessReport, Run, RunEvent, RunStatus, Trajectory
from experiments.services import run_launch
from tests.runs.conftest import TINY_RUN_CONFIG
from tests.runs.test_reliability import api_for, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Threshold 0 over a 1-step window: the rule must fire at the first watched step.
PAUSE_ALWAYS = {"pause": {"enabled": True, "rule": "any", "threshold": 0.0, "window": 1}}


def unique_run_ids():
    """Run output folders are named by run id under the shared data/test: start this test's ids
    far from other test sessions' on the same machine, so no one else's run writes into ours."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('experiments_run', 'id'), %s)", [100_000 + os.getpid() * 10]
        )


STOPPED = [RunStatus.PAUSED, RunStatus.FAILED, RunStatus.SUCCEEDED]


def start_watched_run(run_setup, tiny_model_dir, *, name: str, steps: int) -> int:
    """Create a run whose pause rule fires at its first watched step, through the API; its id."""
    response = api_for(run_setup["owner"]).post(
        "/api/v1/runs/",
        {
            "name": name,
            "base_model": str(tiny_model_dir),
            "train_dataset": run_setup["train"].pk,
            "eval_dataset": run_setup["eval"].pk,
            "tools": [run_setup["tool"].pk],
            "grader": run_setup["grader"].pk,
            "config": {**TINY_RUN_CONFIG, "steps": steps, "checkpoint_interval": 10},
            "watch_config": PAUSE_ALWAYS,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def wait_until_stopped(run_id: int, worker, what: str = "the run to stop") -> Run:
    return wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=STOPPED).first(),
        timeout_s=180,
        what=what,
        logs=[worker.log],
    )


def test_the_pause_rule_pauses_a_real_run_keeps_its_checkpoint_and_resume_continues(
    run_setup, tiny_model_dir, celery_worker_factory
):
    unique_run_ids()
    worker = celery_worker_factory(queues="train,default", name="gpu")
    run_id = start_watched_run(run_setup, tiny_model_dir, name="watched", steps=4)
    run = wait_until_stopped(run_id, worker)
    assert run.status == RunStatus.PAUSED, (run.error, worker.log()[-3000:])
    assert run.paused_by["rule"] == "any" and run.paused_by["step"] == 1
    assert "reward-hacking watch" in run.error and "pause threshold 0%" in run.error
    assert run.lease_owner == "" and run.current_step == 1
    checkpoint = Checkpoint.objects.get(run_id=run_id)
    assert checkpoint.step == 1 and Path(checkpoint.path).is_dir()  # stopped cleanly, checkpoint kept
    # the watch's metrics went into the step's own metrics, and the baseline got its readiness report
    keys = set(MetricPoint.objects.filter(run_id=run_id, step=1).values_list("key", flat=True))
    assert {"reward", "watch/flagged_share", "watch/no_tool_calls", "watch/trend/zero_std_collapse"} <= keys
    assert RunEvent.objects.filter(
        run_id=run_id, kind="log", payload__message__startswith="Pausing for review"
    ).exists()
    report = ReadinessReport.objects.get(run_id=run_id)
    assert report.results["rollouts"] == Trajectory.objects.filter(run_id=run_id, step=0).count() == 4

    run_launch.resume_run(run_id=run_id)
    run = wait_until_stopped(run_id, worker, "the resumed run to stop")
    # It continued from the step-1 checkpoint; the rule only counts steps after the Resume, so it
    # fires again at step 2 (the threshold is 0), not at once.
    assert run.status == RunStatus.PAUSED, run.error
    assert run.attempt == 2 and run.paused_by["step"] == 2 and run.paused_by["resumed_at_step"] == 1
    assert sorted(Checkpoint.objects.filter(run_id=run_id).values_list("step", flat=True)) == [1, 2]
    assert MetricPoint.objects.filter(run_id=run_id, key="reward").count() == 2

    run_launch.cancel_run(run_id=run_id)
    assert Run.objects.get(pk=run_id).status == RunStatus.CANCELLED


def test_a_pause_rule_firing_at_the_last_step_ends_the_run_succeeded_with_a_warning(
    run_setup, tiny_model_dir, celery_worker_factory
):
    unique_run_ids()
    worker = celery_worker_factory(queues="train,default", name="gpu")
    run = wait_until_stopped(
        start_watched_run(run_setup, tiny_model_dir, name="watched to the end", steps=1), worker
    )
    assert run.status == RunStatus.SUCCEEDED, (run.error, worker.log()[-3000:])
    assert not run.pause_requested and run.paused_by["step"] == 1  # what fired is kept for the record
    warning = RunEvent.objects.get(run=run, kind="log", payload__message__icontains="fired at the last step")
    assert (
        warning.payload["level"] == "warning" and "Review the flagged rollouts" in warning.payload["message"]
    )
