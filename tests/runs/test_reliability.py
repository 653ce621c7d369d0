"""Runs survive what happens to real deployments: a worker killed mid-run, a task delivered twice,
and more runs than GPU workers."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.db import close_old_connections
from rest_framework.test import APIClient

from experiments import tasks
from experiments.models import Checkpoint, MetricPoint, Run, RunStatus, Trajectory
from experiments.services import runs as run_services

from .conftest import TINY_RUN_CONFIG

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def create_run(setup, model_dir, *, name: str, config: dict | None = None, start: bool = True) -> int:
    response = api_for(setup["owner"]).post(
        "/api/v1/runs/",
        {
            "name": name,
            "base_model": str(model_dir),
            "train_dataset": setup["train"].pk,
            "eval_dataset": setup["eval"].pk,
            "tools": [setup["tool"].pk],
            "grader": setup["grader"].pk,
            "config": {**TINY_RUN_CONFIG, **(config or {})},
            "start": start,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def wait_for(condition, *, timeout_s: float, what: str, logs=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        close_old_connections()
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(log()[-4000:] for log in logs))


def test_a_killed_worker_is_detected_and_resume_continues_from_the_checkpoint(
    run_setup, tiny_model_dir, celery_worker_factory
):
    sweeper = celery_worker_factory(queues="default", name="sweeper", beat=True)
    first = celery_worker_factory(queues="train", name="gpu-a")
    run_id = create_run(
        run_setup,
        tiny_model_dir,
        name="chaos",
        config={"steps": 4, "checkpoint_interval": 1, "keep_checkpoints": 0},
    )

    wait_for(
        lambda: Checkpoint.objects.filter(run_id=run_id, step__gte=1).exists(),
        timeout_s=180,
        what="a checkpoint",
        logs=[first.log],
    )
    os.killpg(first.process.pid, signal.SIGKILL)  # the host dies: main process and pool child at once
    killed_at = time.monotonic()
    first.process.wait(timeout=10)

    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status=RunStatus.FAILED).first(),
        timeout_s=30,
        what="the lost run",
        logs=[sweeper.log],
    )
    detected_after = time.monotonic() - killed_at
    assert detected_after < 4 + 1 + 5  # lease timeout + sweep interval + slack
    assert "heartbeats" in run.error
    checkpoint_step = Checkpoint.objects.filter(run_id=run_id).order_by("-step").first().step

    response = api_for(run_setup["owner"]).post(f"/api/v1/runs/{run_id}/resume/")
    assert response.status_code == 200, response.content
    second = celery_worker_factory(queues="train", name="gpu-b")
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]).first(),
        timeout_s=240,
        what="the resumed run to finish",
        logs=[second.log],
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempt == 2
    assert "resumed from" in " ".join(
        event.payload.get("message", "") for event in run.events.filter(kind="log")
    ), "the second attempt did not start from the checkpoint"
    assert checkpoint_step >= 1
    reward_steps = list(
        MetricPoint.objects.filter(run_id=run_id, key="reward")
        .order_by("step")
        .values_list("step", flat=True)
    )
    assert reward_steps == [1, 2, 3, 4]
    per_step = {
        step: Trajectory.objects.filter(run_id=run_id, split="train", step=step).count()
        for step in reward_steps
    }
    group = TINY_RUN_CONFIG["prompts_per_step"] * TINY_RUN_CONFIG["group_size"]
    assert per_step == {step: group for step in reward_steps}, "a step's rollouts were stored twice or lost"


def test_a_second_delivery_while_the_lease_is_held_does_not_train_twice(
    run_setup, tiny_model_dir, celery_worker_factory
):
    run_id = create_run(run_setup, tiny_model_dir, name="held", start=False)
    # The first delivery is running on another host: it holds the lease and keeps it fresh.
    assert run_services.acquire_lease(run_id=run_id, worker_id="first-delivery@gpu-0") is not None
    second = celery_worker_factory(queues="train", name="gpu-redelivery")
    tasks.train_run.delay(run_id)  # the broker delivers the same task again, to this worker
    wait_for(
        lambda: second.log().count("ended as None") >= 1,
        timeout_s=60,
        what="the redelivered task to finish",
        logs=[second.log],
    )
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.lease_owner, run.attempt) == (RunStatus.RUNNING, "first-delivery@gpu-0", 1)
    assert not MetricPoint.objects.filter(run_id=run_id).exists()
    assert not Trajectory.objects.filter(run_id=run_id).exists()


def test_two_gpu_workers_take_two_runs_at_once_and_the_third_waits_in_the_queue(
    run_setup, tiny_model_dir, celery_worker_factory
):
    workers = [celery_worker_factory(queues="train", name=f"gpu-{index}") for index in range(2)]
    run_ids = [
        create_run(run_setup, tiny_model_dir, name=f"scale-{index}", config={"steps": 3})
        for index in range(3)
    ]
    api = api_for(run_setup["owner"])

    def two_running_one_queued():
        states = {run_id: api.get(f"/api/v1/runs/{run_id}/").json() for run_id in run_ids}
        running = [run_id for run_id, state in states.items() if state["status"] == "running"]
        queued = [state for state in states.values() if state["status"] == "queued"]
        if len(running) == 2 and len(queued) == 1:
            return running, queued[0]
        return None

    running, waiting = wait_for(
        two_running_one_queued, timeout_s=120, what="two runs running at once", logs=[w.log for w in workers]
    )
    assert waiting["queue_position"] == 1
    owners = set(Run.objects.filter(pk__in=running).values_list("lease_owner", flat=True))
    assert len(owners) == 2, "both runs should be held by different workers"

    wait_for(
        lambda: Run.objects.filter(pk__in=run_ids, status=RunStatus.SUCCEEDED).count() == 3,
        timeout_s=300,
        what="all three runs to succeed",
        logs=[w.log for w in workers],
    )
    third = Run.objects.get(pk=waiting["id"])
    first_finish = min(Run.objects.filter(pk__in=running).values_list("finished_at", flat=True))
    assert third.started_at >= first_finish, "the third run started before a worker was free"
