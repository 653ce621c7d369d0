"""Downloads over the API with a token (no browser session): adapter (final and per checkpoint),
merged model with its build status, metrics CSV, rollouts JSONL; all streamed and in the schema."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from experiments.models import Checkpoint
from experiments.services.api_tokens import create_token
from experiments.services.training import run_output_dir
from tests.factories import RunFactory, UserFactory

pytestmark = [pytest.mark.django_db]


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    from trainer.tiny import build_tiny_model

    return build_tiny_model(Path(settings.DATA_DIR) / "models" / "tiny")


def _save_adapter(model_dir: Path, target: Path, *, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(target)
    (target / "optimizer.pt").write_bytes(b"server-side state")  # must not be part of the download


@pytest.fixture
def owner(db):
    return UserFactory(username="owner")


@pytest.fixture
def run(owner, tiny_model_dir):
    run = RunFactory(owner=owner, base_model=str(tiny_model_dir), status="succeeded")
    output = run_output_dir(run.pk)
    _save_adapter(tiny_model_dir, output / "checkpoints" / "step-2", seed=2)
    Checkpoint.objects.create(
        run=run, step=2, path=str(output / "checkpoints" / "step-2"), metrics={"eval/reward": 0.5}
    )
    _save_adapter(tiny_model_dir, output / "adapter", seed=9)
    return run


@pytest.fixture
def api(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user=owner, name='test').key}")
    return client


def _zip(response) -> zipfile.ZipFile:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    assert response.streaming  # never built in memory as one response body
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def _loads_with_peft(archive: zipfile.ZipFile, model_dir: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    archive.extractall(tmp_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path)
    return {
        name: parameter.detach().clone() for name, parameter in model.named_parameters() if "lora_" in name
    }


@pytest.mark.slow
def test_adapter_zips_download_with_a_token_and_load_with_peft(api, run, tiny_model_dir, tmp_path):
    final = _zip(api.get(f"/api/v1/runs/{run.pk}/download/adapter.zip", HTTP_ACCEPT="application/zip"))
    assert set(final.namelist()) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert "optimizer.pt" not in final.namelist()
    final_weights = _loads_with_peft(final, tiny_model_dir, tmp_path / "final")
    assert final_weights

    checkpoints = api.get(f"/api/v1/runs/{run.pk}/checkpoints/").json()
    assert [(c["step"], c["adapter_available"], c["metrics"]) for c in checkpoints] == [
        (2, True, {"eval/reward": 0.5})
    ]
    step = _zip(api.get(checkpoints[0]["adapter_url"]))
    step_weights = _loads_with_peft(step, tiny_model_dir, tmp_path / "step")
    import torch

    assert any(
        not torch.equal(final_weights[name], step_weights[name]) for name in final_weights
    )  # two adapters

    missing = api.get(f"/api/v1/runs/{run.pk}/download/adapter.zip?step=7", HTTP_ACCEPT="application/zip")
    assert missing.status_code == 404 and "No adapter for step 7" in missing.json()["detail"]


@pytest.mark.slow
def test_merged_model_status_build_and_download(api, run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from experiments import tasks

    assert api.get(f"/api/v1/runs/{run.pk}/merged/").json()["status"] == "not_built"
    refused = api.get(f"/api/v1/runs/{run.pk}/download/merged.zip")
    assert refused.status_code == 404 and "status: not_built" in refused.json()["detail"]
    queued = api.post(f"/api/v1/runs/{run.pk}/merged/")
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert api.get(f"/api/v1/runs/{run.pk}/merged/").json()["status"] == "queued"
    tasks.build_merged_model.apply(args=[run.pk])  # what the worker does with the queued task
    ready = api.get(f"/api/v1/runs/{run.pk}/merged/").json()
    assert ready["status"] == "ready" and ready["download_url"].endswith(
        f"/api/v1/runs/{run.pk}/download/merged.zip"
    )
    _zip(api.get(ready["download_url"])).extractall(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "qwen2"


def test_a_failed_merge_reports_why(api, owner):
    run = RunFactory(owner=owner, base_model="/nowhere/such-model", status="succeeded")
    adapter = run_output_dir(run.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    from experiments import tasks

    assert api.post(f"/api/v1/runs/{run.pk}/merged/").status_code == 202
    with pytest.raises(Exception):
        tasks.build_merged_model.apply(args=[run.pk], throw=True)
    state = api.get(f"/api/v1/runs/{run.pk}/merged/").json()
    assert state["status"] == "failed" and state["error"]
    assert api.post(f"/api/v1/runs/{run.pk}/merged/").status_code == 202  # a failed build can be retried


def test_metrics_csv_and_rollouts_jsonl_stream_with_a_token(api, owner):
    from .conftest import TrajectoryFactory, write_metrics

    run = RunFactory(owner=owner)
    write_metrics(run, [1, 2], keys=("reward",), value=lambda key, step: step / 4)
    TrajectoryFactory(run=run, step=1)
    metrics = api.get(f"/api/v1/runs/{run.pk}/download/metrics.csv", HTTP_ACCEPT="text/csv")
    assert metrics.status_code == 200 and metrics.streaming and metrics["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(metrics.streaming_content).decode())))
    reward = rows[0].index("reward")
    assert [(row[0], float(row[reward])) for row in rows[1:]] == [("1", 0.25), ("2", 0.5)]
    rollouts = api.get(f"/api/v1/runs/{run.pk}/download/rollouts.jsonl")
    assert rollouts.status_code == 200 and rollouts.streaming
    lines = b"".join(rollouts.streaming_content).splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 1


def test_downloads_need_a_token_and_only_show_ones_own_runs(api, owner):
    theirs = RunFactory(owner=UserFactory(username="someone"))
    for suffix in (
        "download/adapter.zip",
        "download/merged.zip",
        "download/metrics.csv",
        "download/rollouts.jsonl",
        "merged/",
        "checkpoints/",
    ):
        assert api.get(f"/api/v1/runs/{theirs.pk}/{suffix}").status_code == 404, suffix
        assert APIClient().get(f"/api/v1/runs/{theirs.pk}/{suffix}").status_code in (401, 403), suffix
    # No redirect to the login page for API clients.
    assert APIClient().get(f"/api/v1/runs/{theirs.pk}/download/adapter.zip").status_code != 302


def test_downloads_are_in_the_schema(tmp_path):
    from django.core.management import call_command

    output = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(output))
    schema = output.read_text()
    for path in (
        "/api/v1/runs/{run_id}/download/adapter.zip",
        "/api/v1/runs/{run_id}/download/merged.zip",
        "/api/v1/runs/{run_id}/download/metrics.csv",
        "/api/v1/runs/{run_id}/download/rollouts.jsonl",
        "/api/v1/runs/{run_id}/merged/",
        "/api/v1/runs/{run_id}/checkpoints/",
        "/api/v1/graders/run",
        "/api/v1/tools/import-list/",
    ):
        assert path in schema, path


def test_the_run_page_shows_the_merged_build_status(client, owner):
    from experiments.services import artifacts

    run = RunFactory(owner=owner, status="succeeded")
    adapter = run_output_dir(run.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    client.force_login(owner)
    assert "Build merged model" in client.get(f"/runs/{run.pk}/actions/").content.decode()
    artifacts.request_merged_model(run=run)
    assert "Merged model: queued…" in client.get(f"/runs/{run.pk}/actions/").content.decode()
    artifacts._write_merged_status(run.pk, "failed", "OSError: no such model")
    html = client.get(f"/runs/{run.pk}/actions/").content.decode()
    assert "Retry merged model build" in html and "OSError: no such model" in html
