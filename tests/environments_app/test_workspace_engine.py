"""The rollout engine on the demo file-tree environment, with real tool calls: HTTP and MCP tools
joined to each rollout's own tree by trace_id, graded on the final tree, ended after grading.

The policy is scripted (a random tiny model writes no tool calls); everything else is real: the
demo server's lifecycle endpoints, its HTTP tools, its MCP server through the SDK, its grader.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest
import torch

from experiments.demo_servers.app import DemoServer
from trainer.environments import EnvironmentEndpoint, HttpEnvironment
from trainer.generation import SamplingParams, ScriptedBackend
from trainer.interfaces import GradeResult
from trainer.metrics import rollout_metrics
from trainer.outbound.client import OutboundClient
from trainer.outbound.mcp import McpServerEndpoint, McpToolExecutor, RoutingToolExecutor, list_tools
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint
from trainer.rollout import RolloutEngine, RolloutLimits, start_rollout

ROOT = Path(__file__).resolve().parents[2]
POLICY = OutboundPolicy(allow_loopback=True)
READ = '<tool_call>{"name": "workspace_read_file", "arguments": {"path": "src/config.py"}}</tool_call>'
WRITE = (
    '<tool_call>{"name": "workspace_write_file", "arguments": '
    '{"path": "src/config.py", "content": "DEBUG = False\\nVERSION = \'1.0.0\'\\n"}}</tool_call>'
)


@pytest.fixture(scope="module")
def demo():
    server = DemoServer(port=0, mcp_port=0).start()
    yield server
    server.stop()


def test_rollouts_edit_their_own_tree_through_http_and_mcp_tools(demo):
    from transformers import AutoTokenizer

    from trainer.tiny import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(
        build_tiny_model(ROOT / ".pytest_cache" / "rftweb-models" / "tiny")
    )
    header = tokenizer.encode("<|im_start|>assistant", add_special_tokens=False)

    def respond(ids):
        turns = sum(1 for i in range(len(ids)) if ids[i : i + len(header)] == header)
        return {1: READ, 2: WRITE}.get(turns, "I turned debugging off in src/config.py.")

    loop = asyncio.new_event_loop()
    mcp = McpServerEndpoint(url=demo.mcp_url, timeout_s=20)
    schemas = {tool.name: tool.openai_schema() for tool in loop.run_until_complete(list_tools(mcp, POLICY))}
    # Reads go to the HTTP tool, writes to the MCP tool: both reach the same per-rollout tree.
    http = HttpToolExecutor(
        {"workspace_read_file": ToolEndpoint(url=demo.tool_url("workspace_read_file"))}, POLICY
    )
    mcp_executor = McpToolExecutor({"workspace_write_file": mcp}, POLICY)
    executor = RoutingToolExecutor({"workspace_read_file": http, "workspace_write_file": mcp_executor})
    start_url, end_url = demo.environment_urls
    environment = HttpEnvironment(
        EnvironmentEndpoint(start_url=start_url, end_url=end_url), POLICY, max_live=3
    )
    engine = RolloutEngine(
        backend=ScriptedBackend(
            tokenizer=tokenizer, stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), respond=respond
        ),
        tokenizer=tokenizer,
        tool_executor=executor,
        loop=loop,
        limits=RolloutLimits(
            max_turns=4,
            max_new_tokens_per_turn=200,
            max_tokens_per_rollout=1200,
            tool_call_budget=None,
            tool_call_penalty=0,
        ),
        environment=environment,
    )
    item = json.loads((ROOT / "examples" / "workspace_edit" / "train.jsonl").read_text().splitlines()[0])
    rollouts = [
        start_rollout(
            tokenizer=tokenizer,
            item=item,
            item_index=0,
            group_index=0,
            sample_index=i,
            split="train",
            run_tools=[schemas["workspace_read_file"], schemas["workspace_write_file"]],
        )
        for i in range(6)
    ]
    grader_client = OutboundClient(policy=POLICY)

    async def grade(rollout):
        body = orjson.dumps(
            {"sample": rollout.grader_sample(), "item": dict(rollout.item), "trace_id": rollout.trace_id}
        )
        response = await grader_client.request(
            "POST", f"{demo.url}/env/grade", content=body, headers={"Content-Type": "application/json"}
        )
        score = json.loads(response.body)["score"]
        rollout.grade = GradeResult(score=score)
        rollout.reward = score

    try:
        engine.run(
            rollouts, sampling=SamplingParams(temperature=1.0), generator=torch.Generator(), grade=grade
        )
    finally:
        for closable in (executor, environment, grader_client):
            loop.run_until_complete(closable.aclose())
        loop.close()

    for rollout in rollouts:
        assert rollout.env_error is None and rollout.finish_reason == "answer"
        assert "Your workspace (workspace_* tools) holds these files" in rollout.messages[0]["content"]
        read, write = rollout.tool_results
        # Every rollout read its own fresh tree: the others' writes never leaked into it.
        assert read.ok and "DEBUG = True" in read.output
        assert write.ok and write.output.startswith("wrote src/config.py")
        assert rollout.reward == 1.0  # graded on the rollout's final tree, before its end
    events = demo.httpd.trees.log
    traces = {r.trace_id for r in rollouts}
    assert sorted(e["trace_id"] for e in events if e["event"] == "end" and e["trace_id"] in traces) == sorted(
        traces
    )
    assert all(e["reward"] == 1.0 for e in events if e["event"] == "end" and e["trace_id"] in traces)
    assert demo.httpd.trees.live() == 0 and demo.httpd.trees.live_max <= 3
    assert rollout_metrics(rollouts)["env/excluded"] == 0
