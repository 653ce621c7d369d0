"""Checkpoints with their eval metrics, and forks with their lineage: service, pages and API."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from experiments.models import Checkpoint, Run, RunStatus
from experiments.services import demo, forks
from experiments.services.run_launch import RunValidationError
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _checkpoint(run, step, *, eval_reward, tmp_path, kept=True):
    directory = tmp_path / f"run{run.pk}" / f"checkpoint-{step:06d}"
    if kept:
        directory.mkdir(parents=True)
        (directory / "adapter_config.json").write_text(json.dumps({"r": 16, "step": step}))
        (directory / "adapter_model.safetensors").write_bytes(f"weights@{step}".encode())
    metrics = {"reward": 0.5, "eval/time_s": 3.0}
    if eval_reward is not None:
        metrics |= {"eval/reward": eval_reward, "eval/pass@1": eval_reward, "eval/pass@4": 1.0}
    return Checkpoint.objects.create(run=run, step=step, path=str(directory), metrics=metrics)


@pytest.fixture
def parent(tmp_path, settings):
    settings.RFT_RUNS_DIR = tmp_path / "runs"
    owner = UserFactory(username="trainer")
    demo.seed_demo(owner=owner, tool_base_url="http://127.0.0.1:8765")
    run = demo.start_quick_demo_run(owner=owner)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, current_step=40)
    _checkpoint(run, 10, eval_reward=0.6, tmp_path=tmp_path)
    _checkpoint(run, 20, eval_reward=0.9, tmp_path=tmp_path)
    _checkpoint(run, 30, eval_reward=None, tmp_path=tmp_path, kept=False)  # pruned
    _checkpoint(run, 40, eval_reward=0.8, tmp_path=tmp_path)
    run.refresh_from_db()
    return run


def test_the_checkpoint_list_shows_eval_metrics_ranks_and_actions(client, parent):
    client.force_login(parent.owner)
    page = client.get(f"/runs/{parent.pk}/").content.decode()
    assert 'id="checkpoint-table"' in page
    assert "<th>Eval pass@1</th><th>Eval pass@4</th><th>Eval reward</th>" in page
    assert 'data-step="20" data-eval-rank="1"' in page  # the best by eval reward
    assert 'data-step="30">' in page and "pruned" in page
    assert f"/runs/{parent.pk}/download/adapter.zip?step=20" in page
    assert f"/runs/{parent.pk}/fork/?step=20" in page
    assert f"/runs/{parent.pk}/fork/?step=30" not in page  # nothing to fork from a pruned checkpoint

    rows = APIClient()
    rows.force_authenticate(parent.owner)
    data = rows.get(f"/api/v1/runs/{parent.pk}/checkpoints/").json()  # oldest first
    assert [row["step"] for row in data] == [10, 20, 30, 40]
    assert [row["eval_rank"] for row in data] == [3, 1, None, 2]
    assert data[1]["eval"] == {"pass@1": 0.9, "pass@4": 1.0, "reward": 0.9}
    assert [row["available"] for row in data] == [True, True, False, True]
    assert [row["adapter_available"] for row in data] == [True, True, False, True]
    assert data[1]["adapter_url"].endswith(f"/api/v1/runs/{parent.pk}/download/adapter.zip?step=20")


def test_a_fork_from_the_form_starts_from_the_checkpoint_with_edited_settings(
    client, parent, django_capture_on_commit_callbacks
):
    client.force_login(parent.owner)
    form = client.get(f"/runs/{parent.pk}/fork/?step=20")
    assert form.status_code == 200
    text = form.content.decode()
    assert 'id="fork-source"' in text and "checkpoint at step 20" in text
    # What the browser would post: every field as the form renders it, a few of them edited.
    fields = {}
    for bound in form.context["form"]:
        value = bound.value()
        if isinstance(value, bool):
            if value:
                fields[bound.name] = "on"
        elif isinstance(value, list) and bound.name not in ("tools", "mcp_tools"):  # multiple choices
            fields[bound.name] = json.dumps(value)
        elif value is not None:
            fields[bound.name] = value
    fields.update(name="lower lr", learning_rate="0.0002", fork_step="20")
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        response = client.post(f"/runs/{parent.pk}/fork/", fields)
    assert response.status_code == 302, response.context["form"].errors if response.context else response
    fork = Run.objects.get(name="lower lr")
    assert response["Location"] == f"/runs/{fork.pk}/"
    assert fork.parent == parent and fork.parent_step == 20
    assert fork.config["learning_rate"] == pytest.approx(2e-4)
    assert fork.base_model == parent.base_model and fork.status == RunStatus.QUEUED
    assert len(enqueued) >= 1
    # The adapter was copied: pruning the parent's checkpoint later cannot take the fork's start away.
    start = forks.start_adapter_dir(fork.pk)
    assert (start / "adapter_model.safetensors").read_bytes() == b"weights@20"

    # Lineage on both run pages and in the API.
    fork_page = client.get(f"/runs/{fork.pk}/").content.decode()
    assert 'id="run-parent"' in fork_page and "at step 20" in fork_page
    parent_page = client.get(f"/runs/{parent.pk}/").content.decode()
    assert f'href="/runs/{fork.pk}/" class="run-fork">lower lr</a> (step 20)' in parent_page
    api = APIClient()
    api.force_authenticate(parent.owner)
    assert api.get(f"/api/v1/runs/{fork.pk}/").json()["parent"] == parent.pk
    assert api.get(f"/api/v1/runs/{parent.pk}/").json()["forks"] == [fork.pk]
    compare = client.get(f"/compare/?runs={parent.pk},{fork.pk}").content.decode()
    assert f'fork of <a href="/runs/{parent.pk}/">#{parent.pk}</a> @ step 20' in compare


def test_the_fork_api_and_what_it_refuses(parent, django_capture_on_commit_callbacks):
    from experiments.models import Environment

    # The parent's per-rollout environment goes with the fork when the API does not name another.
    parent.environment = Environment.objects.create(
        owner=parent.owner,
        name="sandbox",
        start_url="http://127.0.0.1:1/start",
        end_url="http://127.0.0.1:1/end",
    )
    parent.save(update_fields=["environment"])
    api = APIClient()
    api.force_authenticate(parent.owner)
    with django_capture_on_commit_callbacks(execute=False):
        created = api.post(
            f"/api/v1/runs/{parent.pk}/fork/",
            {"step": 40, "config": {**parent.config, "learning_rate": 5e-4}},
            format="json",
        )
    assert created.status_code == 201, created.content
    assert created.json()["parent"] == parent.pk and created.json()["parent_step"] == 40
    assert created.json()["config"]["learning_rate"] == 5e-4
    assert Run.objects.get(pk=created.json()["id"]).environment == parent.environment
    # The final adapter (none here) falls back to the latest checkpoint.
    with django_capture_on_commit_callbacks(execute=False):
        latest = api.post(f"/api/v1/runs/{parent.pk}/fork/", {}, format="json")
    assert latest.status_code == 201 and latest.json()["parent_step"] == 40

    pruned = api.post(f"/api/v1/runs/{parent.pk}/fork/", {"step": 30}, format="json")
    assert pruned.status_code == 400 and "pruned" in pruned.json()["parent_step"][0]
    reshaped = api.post(
        f"/api/v1/runs/{parent.pk}/fork/",
        {"step": 20, "config": {**parent.config, "lora_r": 4}},
        format="json",
    )
    assert reshaped.status_code == 400 and "LoRA shape" in reshaped.json()["config"][0]
    stranger = APIClient()
    stranger.force_authenticate(UserFactory(username="stranger"))
    assert stranger.post(f"/api/v1/runs/{parent.pk}/fork/", {"step": 20}, format="json").status_code == 404
    with pytest.raises(RunValidationError):
        forks.fork_run(owner=UserFactory(username="other"), parent=parent, step=20, name="x", config={})
