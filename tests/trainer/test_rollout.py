"""The rollout engine: token masks, concurrent tool calls, budgets, malformed and unknown calls."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from trainer.generation import SamplingParams, ScriptedBackend
from trainer.interfaces import ToolResult
from trainer.rollout import RolloutEngine, RolloutLimits, start_rollout
from trainer.toy import TOY_TOOLS, ToyToolExecutor, swatch, toy_items
from trainer.update import build_micro_batches

CALL = '<tool_call>{"name": "peek", "arguments": {}}</tool_call>'


def _limits(**overrides):
    values = dict(
        max_turns=4,
        max_new_tokens_per_turn=64,
        max_tokens_per_rollout=512,
        tool_call_budget=None,
        tool_call_penalty=0.0,
    )
    values.update(overrides)
    return RolloutLimits(**values)


def _script(tokenizer, turns):
    """Answers turn n with turns[n], counting the assistant turns already in the prompt."""
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assistant = tokenizer.encode("assistant", add_special_tokens=False)

    def respond(prompt_ids):
        headers = sum(
            1
            for i, token in enumerate(prompt_ids)
            if token == start_id and prompt_ids[i + 1 : i + 1 + len(assistant)] == assistant
        )
        return turns[min(headers - 1, len(turns) - 1)]

    return respond


def _rollouts(tokenizer, count, items=None):
    items = items or toy_items(count=count, seed=0)
    return [
        start_rollout(
            tokenizer=tokenizer,
            item=items[i],
            item_index=i,
            group_index=0,
            sample_index=i,
            split="train",
            run_tools=TOY_TOOLS,
        )
        for i in range(count)
    ]


def _engine(tokenizer, turns, executor, loop, **limits):
    backend = ScriptedBackend(
        tokenizer=tokenizer,
        stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        respond=_script(tokenizer, turns),
    )
    return RolloutEngine(
        backend=backend, tokenizer=tokenizer, tool_executor=executor, loop=loop, limits=_limits(**limits)
    )


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_only_model_generated_tokens_are_trained(tiny_tokenizer, loop):
    engine = _engine(tiny_tokenizer, [CALL, "gold"], ToyToolExecutor(), loop)
    [rollout] = _rollouts(tiny_tokenizer, 1)
    engine.run([rollout], sampling=SamplingParams(), generator=torch.Generator())

    assert rollout.finish_reason == "answer"
    assert rollout.final_answer == "gold"
    trained = [t for t, m in zip(rollout.completion_ids, rollout.completion_mask, strict=True) if m]
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = tiny_tokenizer.encode(CALL, add_special_tokens=False) + [im_end]
    expected += tiny_tokenizer.encode("gold", add_special_tokens=False) + [im_end]
    assert trained == expected
    untrained_text = tiny_tokenizer.decode(
        [t for t, m in zip(rollout.completion_ids, rollout.completion_mask, strict=True) if not m]
    )
    assert swatch(rollout.item["answer"]) in untrained_text and "<tool_response>" in untrained_text

    # The update's micro-batch sees the same mask, and never a prompt token.
    [batch] = build_micro_batches(
        [rollout], micro_batch_size=4, pad_id=tiny_tokenizer.pad_token_id, device="cpu"
    )
    targets = batch.input_ids[0, -batch.completion_length :]
    assert targets[batch.completion_mask[0].bool()].tolist() == expected
    assert batch.completion_length == len(rollout.completion_ids)
    assert batch.input_ids.shape[1] == len(rollout.prompt_ids) + len(rollout.completion_ids)

    messages = rollout.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[2]["tool_calls"][0]["function"]["name"] == "peek"
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"]


def test_tool_calls_of_all_rollouts_run_concurrently_on_the_runs_loop(tiny_tokenizer, loop):
    class SlowExecutor:
        def __init__(self):
            self.loops = set()
            self.trace_ids = []

        async def execute(self, calls, *, item, trace_id):
            self.loops.add(asyncio.get_running_loop())
            self.trace_ids.append(trace_id)
            await asyncio.sleep(0.3)
            return [
                ToolResult(call_id=c.call_id, name=c.name, output="red", ok=True, latency_ms=300.0)
                for c in calls
            ]

    executor = SlowExecutor()
    engine = _engine(tiny_tokenizer, [CALL + CALL, CALL, "red"], executor, loop)
    rollouts = _rollouts(tiny_tokenizer, 8)
    started = time.perf_counter()
    engine.run(rollouts, sampling=SamplingParams(), generator=torch.Generator())
    elapsed = time.perf_counter() - started
    # 8 rollouts x 2 turns with tools, 0.3 s per call: sequential would take 7.2 s; two waves take 0.6 s.
    assert elapsed < 2.0
    assert executor.loops == {loop}
    assert len(executor.trace_ids) == 16 and len(set(executor.trace_ids)) == 8
    assert all(r.calls_requested == 3 and r.finish_reason == "answer" for r in rollouts)


def test_malformed_and_unknown_calls_become_errors_the_model_reads(tiny_tokenizer, loop):
    seen_prompts = []
    turns = [
        '<tool_call>{"name": "peek", "arguments": </tool_call><tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        "red",
    ]
    engine = _engine(tiny_tokenizer, turns, ToyToolExecutor(), loop)
    respond = engine.backend.respond
    engine.backend.respond = lambda ids: seen_prompts.append(tiny_tokenizer.decode(ids)) or respond(ids)
    [rollout] = _rollouts(tiny_tokenizer, 1)
    engine.run([rollout], sampling=SamplingParams(), generator=torch.Generator())
    assert [r.error_type for r in rollout.tool_results] == ["unknown_tool", "malformed_call"]
    assert rollout.calls_requested == 2 and len(rollout.tool_errors) == 2
    assert "not valid JSON" in seen_prompts[1] and "unknown tool 'nope'" in seen_prompts[1]


def test_a_rollout_past_its_budget_ends_without_running_the_calls(tiny_tokenizer, loop):
    executor = ToyToolExecutor()
    engine = _engine(tiny_tokenizer, [CALL, CALL + CALL, "red"], executor, loop, tool_call_budget=2)
    [rollout] = _rollouts(tiny_tokenizer, 1)
    engine.run([rollout], sampling=SamplingParams(), generator=torch.Generator())
    assert rollout.finish_reason == "budget"
    assert rollout.calls_requested == 3
    assert len(executor.calls) == 1


def test_max_turns_and_token_limits_end_rollouts(tiny_tokenizer, loop):
    engine = _engine(tiny_tokenizer, [CALL], ToyToolExecutor(), loop, max_turns=2)
    [rollout] = _rollouts(tiny_tokenizer, 1)
    engine.run([rollout], sampling=SamplingParams(), generator=torch.Generator())
    assert rollout.finish_reason == "max_turns" and rollout.turns == 2

    engine = _engine(
        tiny_tokenizer,
        ["red " * 50],
        ToyToolExecutor(),
        loop,
        max_new_tokens_per_turn=10,
        max_tokens_per_rollout=10,
    )
    [rollout] = _rollouts(tiny_tokenizer, 1)
    engine.run([rollout], sampling=SamplingParams(), generator=torch.Generator())
    assert rollout.finish_reason == "max_tokens" and len(rollout.completion_ids) == 10


def test_an_items_own_tools_restrict_the_run_tools(tiny_tokenizer, loop):
    items = toy_items(count=1, seed=0)
    items[0]["tools"] = []
    engine = _engine(tiny_tokenizer, [CALL, "red"], ToyToolExecutor(), loop)
    [rollout] = _rollouts(tiny_tokenizer, 1, items=items)
    assert "peek" not in tiny_tokenizer.decode(rollout.prompt_ids)
    engine.run([rollout], sampling=SamplingParams(), generator=torch.Generator())
    assert rollout.tool_results[0].error_type == "unknown_tool"
