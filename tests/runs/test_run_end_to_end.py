"""A run created through the API trains in a real Celery worker and streams every step to a WebSocket client."""

from __future__ import annotations

import io
import time
import zipfile

import pytest
from channels.db import database_sync_to_async as sync_to_async
from rest_framework.test import APIClient

from experiments.models import MetricPoint, Run, RunStatus, Trajectory
from tests.foundation.realtime_support import run_socket, session_cookie_for

from .conftest import TINY_RUN_CONFIG

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def create_run_through_api(setup, base_model: str) -> dict:
    api = APIClient()
    api.force_authenticate(setup["owner"])
    response = api.post(
        "/api/v1/runs/",
        {
            "name": "tiny end-to-end",
            "base_model": base_model,
            "train_dataset": setup["train"].pk,
            "eval_dataset": setup["eval"].pk,
            "tools": [setup["tool"].pk],
            "grader": setup["grader"].pk,
            "config": TINY_RUN_CONFIG,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


async def collect_until_terminal(socket, *, timeout_s: float, events: list[dict]) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frame = await socket.receive_json_from(timeout=deadline - time.monotonic())
        events.extend(frame["events"])
        if any(
            event["kind"] == "status" and event["payload"]["status"] in ("succeeded", "failed", "cancelled")
            for event in frame["events"]
        ):
            return events
    raise AssertionError(f"run did not finish; events so far: {events[-5:]}")


async def test_api_run_trains_in_a_worker_and_every_step_reaches_the_websocket(
    run_setup, tiny_model_dir, celery_worker_factory
):
    worker = await sync_to_async(celery_worker_factory)(queues="train,default", name="gpu")
    created = await sync_to_async(create_run_through_api)(run_setup, str(tiny_model_dir))
    session = await sync_to_async(session_cookie_for)(run_setup["owner"])

    socket = run_socket(created["id"], session=session, after=0)
    connected, _ = await socket.connect()
    assert connected
    events: list[dict] = []
    try:
        await collect_until_terminal(socket, timeout_s=180, events=events)
    except Exception as exc:
        raise AssertionError(
            f"the run did not finish in time; received {events}; worker log:\n{worker.log()[-6000:]}"
        ) from exc
    await socket.disconnect()

    run = await Run.objects.aget(pk=created["id"])
    assert run.status == RunStatus.SUCCEEDED, (run.error, [e for e in events if e["kind"] == "log"])
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), "the client saw a gap or a duplicate"
    metric_steps = [
        event["step"]
        for event in events
        if event["kind"] == "metrics" and "reward" in event["payload"]["metrics"]
    ]
    assert metric_steps == [1, 2, 3]
    eval_steps = [
        event["step"]
        for event in events
        if event["kind"] == "metrics" and "eval/reward" in event["payload"]["metrics"]
    ]
    assert eval_steps[0] == 0 and eval_steps[-1] == 3

    assert await MetricPoint.objects.filter(run=run, key="reward").acount() == 3
    train_rollouts = await Trajectory.objects.filter(run=run, split="train").acount()
    assert train_rollouts == 3 * 2 * 2  # steps × prompts × group size
    assert await Trajectory.objects.filter(run=run, split="eval", step=0).acount() == 2 * 2
    sample = await Trajectory.objects.filter(run=run, split="train").afirst()
    assert sample.trace_id.startswith("trace_") and sample.item_id is not None
    assert await Trajectory.objects.filter(run=run, reward__isnull=False).aexists()

    await sync_to_async(assert_adapter_downloads_and_loads)(run_setup["owner"], run.pk, tiny_model_dir)
    await sync_to_async(assert_metrics_and_rollouts_export)(run_setup["owner"], run.pk, train_rollouts)


def assert_metrics_and_rollouts_export(owner, run_id: int, train_rollouts: int):
    import csv
    import dataclasses
    import json

    from django.test import Client

    from trainer.interfaces import TrajectoryRecord

    client = Client()
    client.force_login(owner)
    table = list(
        csv.reader(
            io.StringIO(
                b"".join(client.get(f"/runs/{run_id}/download/metrics.csv").streaming_content).decode()
            )
        )
    )
    assert table[0][0] == "step" and "reward" in table[0]
    reward = table[0].index("reward")
    assert [row[0] for row in table[1:] if row[reward]] == ["1", "2", "3"]
    lines = b"".join(client.get(f"/runs/{run_id}/download/rollouts.jsonl").streaming_content).splitlines()
    records = [json.loads(line) for line in lines]
    assert sum(record["split"] == "train" for record in records) == train_rollouts
    names = {field.name for field in dataclasses.fields(TrajectoryRecord)}
    for record in records:  # each exported line reads back as what the trainer reported, plus flags
        assert isinstance(record.pop("flags"), list)
        assert TrajectoryRecord(**record).trace_id.startswith("trace_") and set(record) == names


def assert_adapter_downloads_and_loads(owner, run_id: int, model_dir, tmp_dir=None):
    import tempfile

    from django.test import Client
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    client = Client()
    client.force_login(owner)
    response = client.get(f"/runs/{run_id}/download/adapter.zip")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
    with tempfile.TemporaryDirectory() as target:
        archive.extractall(target)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), target)
        assert any("lora_" in name for name, _ in model.named_parameters())
