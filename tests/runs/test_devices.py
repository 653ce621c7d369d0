"""A `devices: 2` run end to end through a real Celery worker on the CPU (two gloo ranks started by
torch's elastic launcher from the task process): live curves, cancel, a killed rank, a killed worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from django.db import close_old_connections

from experiments.models import Checkpoint, MetricPoint, Run, RunStatus, Trajectory
from tests.foundation.realtime_support import run_socket, session_cookie_for

from .conftest import TINY_RUN_CONFIG
from .test_reliability import api_for, create_run, wait_for
from .test_run_end_to_end import collect_until_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TWO_DEVICES = {"devices": 2}


def rank_pids(run_id: int) -> dict[int, int]:
    folder = Path(settings.RFT_RUNS_DIR) / str(run_id) / "ranks"
    return {int(p.stem.split("-")[1]): int(p.read_text()) for p in folder.glob("rank-*.pid")}


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def assert_no_rank_left(run_id: int, *, timeout_s: float = 15) -> None:
    pids = rank_pids(run_id)
    assert len(pids) == 2, pids
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    assert not [pid for pid in pids.values() if alive(pid)], f"rank processes left: {pids}"


def assert_steps_contiguous(run_id: int, steps: int) -> None:
    reward_steps = list(
        MetricPoint.objects.filter(run_id=run_id, key="reward")
        .order_by("step")
        .values_list("step", flat=True)
    )
    assert reward_steps == list(range(1, steps + 1)), reward_steps
    group = TINY_RUN_CONFIG["prompts_per_step"] * TINY_RUN_CONFIG["group_size"]
    per_step = {
        step: Trajectory.objects.filter(run_id=run_id, split="train", step=step).count()
        for step in reward_steps
    }
    assert per_step == {step: group for step in reward_steps}, "a step's rollouts were stored twice or lost"


def log_text(run: Run) -> str:
    return "\n".join(event.payload.get("message", "") for event in run.events.filter(kind="log"))


async def test_a_two_device_run_streams_every_step_to_the_run_page(
    run_setup, tiny_model_dir, celery_worker_factory
):
    worker = await sync_to_async(celery_worker_factory)(queues="train,default", name="gpu")
    run_id = await sync_to_async(create_run)(
        run_setup, tiny_model_dir, name="two devices", config=TWO_DEVICES
    )
    session = await sync_to_async(session_cookie_for)(run_setup["owner"])
    socket = run_socket(run_id, session=session, after=0)
    connected, _ = await socket.connect()
    assert connected
    events: list[dict] = []
    try:
        await collect_until_terminal(socket, timeout_s=300, events=events)
    except Exception as exc:
        raise AssertionError(
            f"the run did not finish; received {events[-5:]}; worker log:\n{worker.log()[-6000:]}"
        ) from exc
    await socket.disconnect()
    run = await Run.objects.aget(pk=run_id)
    assert run.status == RunStatus.SUCCEEDED, (run.error, [e for e in events if e["kind"] == "log"])
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), "the client saw a gap or a duplicate"
    step_metrics = [
        event["payload"]["metrics"]
        for event in events
        if event["kind"] == "metrics" and "reward" in event["payload"]["metrics"]
    ]
    assert [
        event["step"]
        for event in events
        if event["kind"] == "metrics" and "reward" in event["payload"]["metrics"]
    ] == [1, 2, 3]
    for metrics in step_metrics:  # one frame per step with the whole step, gathered from both ranks
        assert metrics["world_size"] == 2.0
        assert {"timing/rank0/rollout_s", "timing/rank1/update_s", "timing/communication_s"} <= set(metrics)
    await sync_to_async(assert_steps_contiguous)(run_id, 3)
    assert await Trajectory.objects.filter(run_id=run_id, split="eval", step=0).acount() == 2 * 2
    logs = await sync_to_async(log_text)(run)
    assert "2 devices (none sharding)" in logs
    await sync_to_async(assert_no_rank_left)(run_id)


def test_cancel_stops_both_ranks_within_a_step_and_leaves_no_process(
    run_setup, tiny_model_dir, celery_worker_factory
):
    worker = celery_worker_factory(queues="train,default", name="gpu")
    run_id = create_run(
        run_setup,
        tiny_model_dir,
        name="cancel two",
        config={**TWO_DEVICES, "steps": 40, "eval_interval": 100},
    )
    wait_for(
        lambda: MetricPoint.objects.filter(run_id=run_id, key="reward").exists(),
        timeout_s=240,
        what="the first step",
        logs=[worker.log],
    )
    response = api_for(run_setup["owner"]).post(f"/api/v1/runs/{run_id}/cancel/")
    assert response.status_code == 200, response.content
    close_old_connections()
    step_at_cancel = MetricPoint.objects.filter(run_id=run_id, key="reward").count()
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status=RunStatus.CANCELLED).first(),
        timeout_s=120,
        what="the cancelled run",
        logs=[worker.log],
    )
    steps_after = MetricPoint.objects.filter(run_id=run_id, key="reward").count() - step_at_cancel
    assert steps_after <= 1, f"{steps_after} steps ran after the cancel"
    assert Checkpoint.objects.filter(run_id=run_id).exists(), "the cancelled run kept no checkpoint"
    assert run.current_step < 40
    assert_no_rank_left(run_id)


def test_a_killed_rank_fails_the_run_naming_it_and_resume_completes_it(
    run_setup, tiny_model_dir, celery_worker_factory
):
    worker = celery_worker_factory(queues="train,default", name="gpu")
    steps = 5
    run_id = create_run(
        run_setup,
        tiny_model_dir,
        name="rank dies",
        config={
            **TWO_DEVICES,
            "steps": steps,
            "checkpoint_interval": 1,
            "keep_checkpoints": 0,
            "eval_interval": 100,
        },
    )
    wait_for(
        lambda: Checkpoint.objects.filter(run_id=run_id, step__gte=1).exists(),
        timeout_s=240,
        what="a checkpoint",
        logs=[worker.log],
    )
    pids = rank_pids(run_id)
    os.kill(pids[1], signal.SIGKILL)  # e.g. the kernel's OOM killer
    killed_at = time.monotonic()
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status=RunStatus.FAILED).first(),
        timeout_s=60,
        what="the run to fail",
        logs=[worker.log],
    )
    failed_after = time.monotonic() - killed_at
    assert failed_after < settings.RFT_LEASE_TIMEOUT_SECONDS + 6, failed_after
    assert f"Rank 1 of 2 (pid {pids[1]}) was killed by SIGKILL" in run.error
    assert f"Rank 1 of 2 (pid {pids[1]}) was killed by SIGKILL" in log_text(run)
    assert_no_rank_left(run_id)

    response = api_for(run_setup["owner"]).post(f"/api/v1/runs/{run_id}/resume/")
    assert response.status_code == 200, response.content
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]).first(),
        timeout_s=300,
        what="the resumed run to finish",
        logs=[worker.log],
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempt == 2
    assert "resumed from" in log_text(run)
    assert_steps_contiguous(run_id, steps)


def test_a_killed_worker_takes_its_ranks_along_and_resume_completes_the_run(
    run_setup, tiny_model_dir, celery_worker_factory
):
    sweeper = celery_worker_factory(queues="default", name="sweeper", beat=True)
    worker = celery_worker_factory(queues="train", name="gpu")
    steps = 4
    run_id = create_run(
        run_setup,
        tiny_model_dir,
        name="worker dies",
        config={
            **TWO_DEVICES,
            "steps": steps,
            "checkpoint_interval": 1,
            "keep_checkpoints": 0,
            "eval_interval": 100,
        },
    )
    wait_for(
        lambda: Checkpoint.objects.filter(run_id=run_id, step__gte=1).exists(),
        timeout_s=240,
        what="a checkpoint",
        logs=[worker.log],
    )
    task_pid = int(Run.objects.get(pk=run_id).lease_owner.split(":")[1])
    os.kill(task_pid, signal.SIGKILL)  # the task process alone: its ranks get no chance to be told
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status=RunStatus.FAILED).first(),
        timeout_s=60,
        what="the lost run",
        logs=[sweeper.log],
    )
    assert "heartbeats" in run.error
    assert_no_rank_left(run_id)  # the kernel killed them with their parent (PR_SET_PDEATHSIG)

    response = api_for(run_setup["owner"]).post(f"/api/v1/runs/{run_id}/resume/")
    assert response.status_code == 200, response.content
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]).first(),
        timeout_s=300,
        what="the resumed run to finish",
        logs=[worker.log],
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert_steps_contiguous(run_id, steps)
