"""A fork trained by a real Celery worker starts from its parent's adapter: its step-0 eval (greedy,
the same items) equals the parent's eval at the checkpoint it forked from."""

from __future__ import annotations

import time

import pytest
from rest_framework.test import APIClient

from experiments.demo_servers import DemoServer
from experiments.models import Run, RunStatus, Trajectory
from experiments.services import demo

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

GREEDY_CONFIG = {
    **demo.QUICK_DEMO_CONFIG,
    "steps": 2,
    "prompts_per_step": 2,
    "group_size": 4,
    "learning_rate": 2e-2,  # moves the tiny model's greedy answers within two steps
    "eval_interval": 2,
    "eval_samples_per_item": 1,
    "eval_temperature": 0.0,
    "checkpoint_interval": 2,
}


def _wait_finished(run_id: int, timeout_s: float = 240) -> Run:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = Run.objects.get(pk=run_id)
        if run.is_terminal:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish within {timeout_s} s")


def _eval_answers(run_id: int, step: int):
    rows = Trajectory.objects.filter(run_id=run_id, split="eval", step=step).order_by("item_index")
    return [
        (
            row.item_index,
            row.final_answer,
            row.reward,
            row.tool_call_names,
            [m.get("content") for m in row.messages if m["role"] == "assistant"],
        )
        for row in rows
    ]


def test_a_fork_starts_from_its_parents_checkpoint(celery_worker_factory):
    from experiments.services.training import toy_model_dir
    from tests.factories import UserFactory

    toy_model_dir()  # built once, as `up` does
    worker = celery_worker_factory(queues="train", name="forks")
    with DemoServer() as tools:
        owner = UserFactory(username="forker")
        demo.seed_demo(owner=owner, tool_base_url=tools.url)
        api = APIClient()
        api.force_authenticate(owner)
        try:
            parent = demo.start_quick_demo_run(owner=owner)
            Run.objects.filter(pk=parent.pk).update(config=GREEDY_CONFIG)
            parent = _wait_finished(parent.pk)
            assert parent.status == RunStatus.SUCCEEDED, parent.error
            response = api.post(
                f"/api/v1/runs/{parent.pk}/fork/",
                {"step": 2, "name": "fork", "config": {**GREEDY_CONFIG, "steps": 1, "learning_rate": 1e-3}},
                format="json",
            )
            assert response.status_code == 201, response.content
            fork = _wait_finished(response.json()["id"])
            assert fork.status == RunStatus.SUCCEEDED, fork.error
        except Exception:
            print(worker.log()[-6000:])
            raise
    parent_at_checkpoint = _eval_answers(parent.pk, 2)
    assert len(parent_at_checkpoint) == demo.QUICK_EVAL_ITEMS
    assert _eval_answers(fork.pk, 0) == parent_at_checkpoint
    # ... and not the base model's (else this test could not tell a fork from a fresh start).
    assert _eval_answers(parent.pk, 0) != parent_at_checkpoint
    assert fork.parent_id == parent.pk and fork.parent_step == 2
    assert api.get(f"/api/v1/runs/{parent.pk}/").json()["forks"] == [fork.pk]
    log = " ".join(str(e.payload) for e in fork.events.filter(kind="log"))
    assert f"forked from run {parent.pk} at step 2" in log
