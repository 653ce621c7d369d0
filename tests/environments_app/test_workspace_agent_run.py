"""End to end: the tiny model, warm-started on file-tree demonstrations, trains in a real Celery
worker on the demo workspace environment and really uses it.

The demo is seeded as `make up` seeds it (the workspace_* HTTP tools, the environment's start/end
endpoints, the state grader, the workspace dataset). The model is the tiny offline model with a
vocabulary built on the task, warm-started (`trainer.warm_start`) on demonstrations of the task:
read the file to change, write it whole, say what changed. The stored rollouts must show, each,
its own environment's context (its workspace id and file list) and the tool calls it made over
HTTP against its own file tree, with the answers that tree gave; the rollout page shows both.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import pytest
from django.test import Client

from experiments.demo_servers.app import DemoServer
from experiments.demo_servers.filetree import (
    FILETREE_TOOL_NAMES,
    FileTreeError,
    FileTrees,
    warm_start_workspace_model,
    workspace_id,
)
from experiments.models import Dataset, Environment, Grader, MetricPoint, Run, RunStatus, Tool, Trajectory
from experiments.services import demo as demo_services
from experiments.services.run_launch import create_run
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = Path(os.environ.get("RFTWEB_TEST_MODEL_CACHE", ROOT / ".pytest_cache" / "rftweb-models"))
CONFIG = {
    "steps": 2,
    "prompts_per_step": 2,
    "group_size": 2,
    "max_turns": 3,
    "max_new_tokens_per_turn": 64,
    "max_tokens_per_rollout": 320,
    "eval_interval": 10,
    "checkpoint_interval": 2,
    "micro_batch_size": 4,
    "learning_rate": 1e-4,
    "seed": 5,
}


@pytest.fixture
def demo():
    server = DemoServer(port=0, mcp_port=0).start()
    yield server
    server.stop()


def _stored_calls(rollout: Trajectory) -> list[dict]:
    """The rollout's tool calls as stored, in order: name, arguments (None when not a JSON object),
    whether the tool answered without error, and the answer the model read (None for calls of a
    last turn that ended the rollout at its turn or token limit: they were never run)."""
    results = {m["tool_call_id"]: m for m in rollout.messages if m["role"] == "tool"}
    calls = []
    for message in rollout.messages:
        for call in message.get("tool_calls") or []:
            result = results.get(call["id"])
            try:
                arguments = json.loads(call["function"]["arguments"])
            except ValueError:
                arguments = None
            calls.append(
                {
                    "name": call["function"]["name"],
                    "arguments": arguments if isinstance(arguments, dict) else None,
                    "ok": bool(result and result["ok"]),
                    "output": result["content"] if result else None,
                }
            )
    return calls


def _executed(calls: list[dict]) -> list[dict]:
    """The calls that reached the demo server (well-formed, naming a workspace tool)."""
    return [
        c
        for c in calls
        if c["name"] in FILETREE_TOOL_NAMES and c["arguments"] is not None and c["output"] is not None
    ]


def test_the_warm_started_tiny_model_edits_its_own_workspace_in_a_real_run(demo, celery_worker_factory):
    owner = UserFactory(username="workspace-agent")
    demo_services.seed_demo(owner=owner, tool_base_url=demo.url)
    train = Dataset.objects.get(owner=owner, name=demo_services.DEMO_WORKSPACE_TRAIN)
    items = [item.data for item in train.items.order_by("index")]
    tools = list(Tool.objects.filter(owner=owner, name__in=FILETREE_TOOL_NAMES))
    # Demonstrations rendered with the tools exactly as the run renders them (from the database).
    model_dir = warm_start_workspace_model(
        MODEL_CACHE / "workspace-warm",
        items=items,
        tools=[tool.openai_schema() for tool in tools],
        base_dir=MODEL_CACHE / "workspace-tiny",
    )
    worker = celery_worker_factory(queues="train,default", name="agentrun")
    run = create_run(
        owner=owner,
        name="workspace agent",
        base_model=str(model_dir),
        train_dataset=train,
        eval_dataset=None,
        tools=tools,
        grader=Grader.objects.get(owner=owner, name=demo_services.DEMO_WORKSPACE_GRADER),
        config=CONFIG,
        environment=Environment.objects.get(owner=owner, name=demo_services.DEMO_ENVIRONMENT),
    )
    deadline = time.monotonic() + 600
    while Run.objects.get(pk=run.pk).status not in (
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
    ):
        assert time.monotonic() < deadline, f"the run did not finish; worker log:\n{worker.log()[-4000:]}"
        time.sleep(1)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.error, worker.log()[-4000:])
    for rollout in Trajectory.objects.filter(run=run):  # what the model did, for the test's log
        print(
            rollout.step,
            rollout.reward,
            [(c["name"], c["arguments"], c["ok"]) for c in _stored_calls(rollout)],
        )

    rollouts = list(Trajectory.objects.filter(run=run).select_related("item"))
    assert len(rollouts) == 2 * 2 * 2
    server_calls = list(demo.httpd.trees.calls)
    for rollout in rollouts:
        # The environment's context for this rollout: its own workspace id and its file list.
        env = rollout.environment
        assert env["error"] is None and not env["end_error"] and env["ended_at"] >= env["started_at"]
        assert env["context"].endswith(f"Workspace id: {workspace_id(rollout.trace_id)}")
        assert "src/config.py" in env["context"]
        assert rollout.messages[0]["content"].endswith(env["context"])

        # Its tool calls, as stored, are the calls the demo server ran on this rollout's tree.
        calls = _stored_calls(rollout)
        executed = _executed(calls)
        seen = [c for c in server_calls if c["trace_id"] == rollout.trace_id]
        assert [(c["name"], c["arguments"], c["ok"]) for c in seen] == [
            (c["name"], c["arguments"], c["ok"]) for c in executed
        ]
        # ...and their answers are what a fresh tree of this rollout's item gives for the same calls:
        # nothing another rollout wrote leaked into it.
        replay = FileTrees()
        replay.start(rollout.trace_id, rollout.item.data)
        for call, server_call in zip(executed, seen, strict=True):
            try:
                expected = replay.call(rollout.trace_id, call["name"], call["arguments"])
            except FileTreeError as exc:
                assert not call["ok"] and str(exc) in call["output"] and server_call["output"] == str(exc)
            else:
                assert call["ok"] and call["output"] == expected == server_call["output"]
        assert rollout.reward is not None  # graded on the live tree, before the end removed it

    # A sampled policy: most rollouts (all 8 in the runs measured) make a well-formed call; a test
    # that needed every one of them would hang on one unlucky sample.
    with_calls = [r.trace_id for r in rollouts if _executed(_stored_calls(r))]
    assert len(with_calls) >= 6, [r.messages[1:] for r in rollouts if r.trace_id not in with_calls]
    every_call = [call for rollout in rollouts for call in _executed(_stored_calls(rollout))]
    names = {call["name"] for call in every_call if call["ok"]}
    assert {"workspace_read_file", "workspace_write_file"} <= names, every_call
    events = demo.httpd.trees.log
    stored = {r.trace_id for r in rollouts}
    assert sorted(e["trace_id"] for e in events if e["event"] == "start") == sorted(stored)
    assert sorted(e["trace_id"] for e in events if e["event"] == "end") == sorted(stored)  # one end each
    assert demo.httpd.trees.live() == 0
    assert MetricPoint.objects.filter(run=run, key="env/excluded", value=0).count() == 2

    # The rollout page shows the context and every tool call with its arguments and answer.
    client = Client()
    client.force_login(owner)
    rollout = max(rollouts, key=lambda r: len([c for c in _executed(_stored_calls(r)) if c["ok"]]))
    page = client.get(f"/runs/{run.pk}/rollouts/{rollout.trace_id}/")
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    assert "Context appended to the system prompt" in text and env_text(rollout) in text
    for call in _executed(_stored_calls(rollout)):
        assert f'data-tool-call="{call["name"]}"' in text
        assert call["output"].strip() in text
        for value in call["arguments"].values():
            # The page shows the arguments as JSON; a sampled value may hold any character, written
            # escaped or as itself.
            first_line = {json.dumps(value, ensure_ascii=a)[1:-1].split("\\n")[0] for a in (True, False)}
            assert any(line in text for line in first_line), (first_line, call)


def env_text(rollout: Trajectory) -> str:
    return rollout.environment["context"]
