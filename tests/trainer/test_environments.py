"""The per-rollout environment lifecycle in the rollout engine, against a real local HTTP server.

Normal path: every started rollout gets exactly one end after grading, its context reaches the
system prompt; a failing start excludes the rollout (never scored) and is counted; the live cap is
never exceeded; a stop mid-step still ends every started environment.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from environment_test_server import EnvironmentServer  # noqa: E402
from forced_turns import ForcedContinuousBackend, TurnScript  # noqa: E402

from trainer.environments import EnvironmentEndpoint, HttpEnvironment  # noqa: E402
from trainer.generation import SamplingParams  # noqa: E402
from trainer.interfaces import GradeResult  # noqa: E402
from trainer.metrics import rollout_metrics, trajectory_record  # noqa: E402
from trainer.models import stop_token_ids  # noqa: E402
from trainer.outbound.policy import OutboundPolicy  # noqa: E402
from trainer.rollout import RolloutEngine, RolloutLimits, StopRequested, start_rollout  # noqa: E402
from trainer.toy import TOY_TOOLS, ToyToolExecutor, toy_items  # noqa: E402

CALL = '<tool_call>{"name": "peek", "arguments": {}}</tool_call>'
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from trainer.config import TrainerConfig
    from trainer.models import load_policy

    torch.manual_seed(0)
    return load_policy(config=TrainerConfig.from_dict({"model": str(tiny_model_dir), "lora_r": 4}))


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def env_server():
    server = EnvironmentServer()
    yield server
    server.close()


def _rollouts(tokenizer, count, item_overrides=None):
    rollouts = []
    for index, item in enumerate(toy_items(count=count, seed=0)):
        item.update((item_overrides or {}).get(index, {}))
        rollouts.append(
            start_rollout(
                tokenizer=tokenizer,
                item=item,
                item_index=index,
                group_index=index,
                sample_index=0,
                split="train",
                run_tools=TOY_TOOLS,
            )
        )
    return rollouts


def _engine(policy, loop, environment, turns, *, should_stop=lambda: False, max_new_tokens_per_turn=40):
    model, tokenizer = policy
    script = TurnScript(
        tokenizer=tokenizer, turns=turns, stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    backend = ForcedContinuousBackend(
        script=script, model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_token_ids(tokenizer)
    )
    return RolloutEngine(
        backend=backend,
        tokenizer=tokenizer,
        tool_executor=ToyToolExecutor(),
        loop=loop,
        limits=RolloutLimits(
            max_turns=3,
            max_new_tokens_per_turn=max_new_tokens_per_turn,
            max_tokens_per_rollout=300,
            tool_call_budget=None,
            tool_call_penalty=0.0,
        ),
        should_stop=should_stop,
        environment=environment,
        environment_context_tokens=256,
    )


def _environment(server, loop, **kwargs):
    return HttpEnvironment(
        EnvironmentEndpoint(start_url=server.start_url, end_url=server.end_url, signing_secret="s" * 32),
        OutboundPolicy(allow_loopback=True),
        run_id="run_1",
        **kwargs,
    )


async def _grade(rollout):
    rollout.grade = GradeResult(score=0.75)
    rollout.reward = 0.75


def test_every_started_rollout_gets_exactly_one_end_after_grading(policy, loop, env_server):
    environment = _environment(env_server, loop, max_live=64)
    rollouts = _rollouts(policy[1], 6)
    engine = _engine(policy, loop, environment, [CALL, "red"])
    try:
        engine.run(rollouts, sampling=GREEDY, generator=torch.Generator(), grade=_grade)
    finally:
        loop.run_until_complete(environment.aclose())

    assert [r.env_error for r in rollouts] == [None] * 6
    traces = {r.trace_id for r in rollouts}
    assert set(env_server.starts) == traces and len(env_server.starts) == 6
    assert env_server.ends_by_trace() == {trace: 1 for trace in traces}
    assert not env_server.live
    for end in env_server.ends:
        assert end == {
            "trace_id": end["trace_id"],
            "run_id": "run_1",
            "finish_reason": "answer",
            "reward": 0.75,
            "score": 0.75,
        }
    for rollout in rollouts:
        assert rollout.finish_reason == "answer" and rollout.turns == 2
        system = rollout.messages[0]
        assert system["role"] == "system"
        assert system["content"].endswith(
            f"Environment:\nsandbox for {rollout.trace_id} at /srv/{rollout.trace_id[-6:]}"
        )
        # The model saw it: the rendered prompt carries the context.
        assert rollout.trace_id[-6:] in policy[1].decode(rollout.prompt_ids)
        record = trajectory_record(rollout, step=1).environment
        assert record["context"].startswith("sandbox for") and record["error"] is None
        assert record["ended_at"] >= record["started_at"] and not record["end_error"]
    metrics = rollout_metrics(rollouts)
    assert metrics["env/excluded"] == 0 and metrics["env/end_errors"] == 0


def test_a_failing_start_is_excluded_counted_and_still_ended(policy, loop, env_server):
    environment = _environment(env_server, loop)
    rollouts = _rollouts(policy[1], 4, {1: {"fail_start": True}})
    graded = []

    async def grade(rollout):
        graded.append(rollout.trace_id)
        await _grade(rollout)

    engine = _engine(policy, loop, environment, [CALL, "red"])
    try:
        engine.run(rollouts, sampling=GREEDY, generator=torch.Generator(), grade=grade)
    finally:
        loop.run_until_complete(environment.aclose())
    failed = rollouts[1]
    assert failed.finish_reason == "env_error"
    assert failed.env_error["type"] == "http_5xx" and "no sandbox available" in failed.env_error["message"]
    assert failed.reward is None and failed.grade is None and failed.turns == 0
    assert failed.trace_id not in graded and len(graded) == 3
    metrics = rollout_metrics(rollouts)
    assert metrics["env/start_errors/http_5xx"] == 1 and metrics["env/excluded"] == 1
    assert metrics["grader_errors/excluded"] == 1  # no reward: left out of the update
    # Its start was sent, so the server may hold a sandbox: it is ended like the others.
    assert env_server.ends_by_trace() == {r.trace_id: 1 for r in rollouts}
    (failed_end,) = [e for e in env_server.ends if e["trace_id"] == failed.trace_id]
    assert failed_end["finish_reason"] == "env_error" and failed_end["reward"] is None


def test_the_live_environment_cap_is_never_exceeded(policy, loop):
    server = EnvironmentServer(start_delay_s=0.15, end_delay_s=0.05)
    environment = _environment(server, loop, max_live=3)
    rollouts = _rollouts(policy[1], 9)
    engine = _engine(policy, loop, environment, ["red"])
    try:
        engine.run(rollouts, sampling=GREEDY, generator=torch.Generator(), grade=_grade)
    finally:
        loop.run_until_complete(environment.aclose())
        server.close()
    assert server.max_live == 3  # reached, never exceeded
    assert server.ends_by_trace() == {r.trace_id: 1 for r in rollouts}


def test_a_stop_mid_step_ends_every_started_environment(policy, loop, env_server):
    steps = {"n": 0}

    class CountingBackend(ForcedContinuousBackend):
        def choose_tokens(self, logits, requests, sampling):
            steps["n"] += 1
            return super().choose_tokens(logits, requests, sampling)

    environment = _environment(env_server, loop, max_live=4)
    engine = _engine(
        policy,
        loop,
        environment,
        ["red " * 80],
        should_stop=lambda: steps["n"] >= 3,
        max_new_tokens_per_turn=100,
    )
    engine.backend.__class__ = CountingBackend
    rollouts = _rollouts(policy[1], 8)
    try:
        with pytest.raises(StopRequested):
            engine.run(rollouts, sampling=GREEDY, generator=torch.Generator(), grade=_grade)
    finally:
        loop.run_until_complete(environment.aclose())
    assert env_server.starts, "the stop came before any start"
    assert env_server.ends_by_trace() == {trace: 1 for trace in env_server.starts}
    assert not env_server.live
    assert all(end["finish_reason"] == "error" for end in env_server.ends)  # cut before an answer
    assert not [task for task in asyncio.all_tasks(loop) if not task.done()]
