"""End to end: a run on the demo file-tree environment, in a real Celery worker with the tiny model.

The run uses the demo's workspace tools from its MCP server (listed through the SDK, schemas recorded
on the run) and its lifecycle endpoints. Every stored rollout shows its environment's context (in
the system prompt and in `Trajectory.environment`), and the demo server saw exactly one start and
one end for each of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from django.conf import settings

from experiments.demo_servers.app import DemoServer
from experiments.models import Environment, McpServer, MetricPoint, Run, RunStatus, Trajectory
from experiments.services import graders as grader_services
from experiments.services.environments import refresh_mcp_tools
from experiments.services.run_launch import create_run
from tests.factories import DatasetFactory, DatasetItemFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "steps": 2,
    "prompts_per_step": 2,
    "group_size": 2,
    "max_turns": 2,
    "max_new_tokens_per_turn": 12,
    "max_tokens_per_rollout": 64,
    "eval_interval": 10,
    "checkpoint_interval": 2,
    "micro_batch_size": 4,
    "learning_rate": 1e-3,
    "seed": 5,
}


@pytest.fixture
def demo():
    server = DemoServer(port=0, mcp_port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    from trainer.tiny import build_tiny_model

    return build_tiny_model(Path(settings.DATA_DIR) / "models" / "tiny")


def test_a_run_on_the_workspace_environment_stores_context_and_ends_every_rollout(
    demo, tiny_model_dir, celery_worker_factory
):
    owner = UserFactory(username="workspace-user")
    lines = (ROOT / "examples" / "workspace_edit" / "train.jsonl").read_text().splitlines()[:4]
    train = DatasetFactory(owner=owner, name="workspace-train", item_count=len(lines))
    for index, line in enumerate(lines):
        DatasetItemFactory(dataset=train, index=index, data=json.loads(line), message_count=2)
    server = refresh_mcp_tools(McpServer.objects.create(owner=owner, name="workspace", url=demo.mcp_url))
    assert server.last_error == "" and {t["name"] for t in server.tools} == {
        "workspace_list_files",
        "workspace_read_file",
        "workspace_write_file",
    }
    start_url, end_url = demo.environment_urls
    environment = Environment.objects.create(
        owner=owner, name="workspace", start_url=start_url, end_url=end_url, max_live=3
    )
    grader = grader_services.create_grader(
        owner=owner, spec={"type": "endpoint", "name": "workspace-state", "url": f"{demo.url}/env/grade"}
    )
    worker = celery_worker_factory(queues="train,default", name="envrun")
    run = create_run(
        owner=owner,
        name="workspace run",
        base_model=str(tiny_model_dir),
        train_dataset=train,
        eval_dataset=None,
        tools=[],
        grader=grader,
        config=CONFIG,
        environment=environment,
        mcp_tools=[
            {"server": server.pk, "name": name} for name in ("workspace_read_file", "workspace_write_file")
        ],
    )
    deadline = time.monotonic() + 240
    while Run.objects.get(pk=run.pk).status not in (
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
    ):
        assert time.monotonic() < deadline, f"the run did not finish; worker log:\n{worker.log()[-4000:]}"
        time.sleep(1)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.error, worker.log()[-4000:])
    # The exact schemas the run used, as the MCP server listed them.
    assert [tool["name"] for tool in run.mcp_tools] == ["workspace_read_file", "workspace_write_file"]
    assert run.mcp_tools[1]["input_schema"]["required"] == ["path", "content"]

    rollouts = list(Trajectory.objects.filter(run=run))
    assert len(rollouts) == 2 * 2 * 2
    for rollout in rollouts:
        env = rollout.environment
        assert env["error"] is None and not env["end_error"]
        assert env["context"].startswith("Your workspace (workspace_* tools) holds these files:")
        assert env["ended_at"] >= env["started_at"]
        system = rollout.messages[0]
        assert system["role"] == "system" and system["content"].endswith(env["context"])
        assert rollout.reward is not None  # graded on the live tree, before the end removed it
    events = demo.httpd.trees.log
    stored = {r.trace_id for r in rollouts}
    assert {e["trace_id"] for e in events if e["event"] == "start"} == stored
    ends = [e["trace_id"] for e in events if e["event"] == "end"]
    assert sorted(ends) == sorted(stored)  # exactly one end each
    assert demo.httpd.trees.live() == 0 and demo.httpd.trees.live_max <= 3
    assert MetricPoint.objects.filter(run=run, key="env/excluded", value=0).count() == 2
