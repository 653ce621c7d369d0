"""The continuous-batching engine and the per-rollout agent loop, on the tiny model with LoRA.

Against the turn-synchronous engine it replaced (kept in bench/turn_sync_engine.py): the same greedy
tokens, masks, log-probs and loss on multi-turn conversations with tool calls; the KV cache kept
across turns gives what a full re-prefill gives; a hanging tool ends its rollout at the deadline
while the others finish and are graded at once; a stop ends everything within one token step.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from forced_turns import ForcedContinuousBackend, TurnScript, turn_sync_pick  # noqa: E402
from http_test_server import Reply, ScriptedServer  # noqa: E402
from turn_sync_engine import KVCacheBackend, TurnSyncRolloutEngine  # noqa: E402

from trainer.config import TrainerConfig  # noqa: E402
from trainer.engine import ContinuousBatchingBackend  # noqa: E402
from trainer.generation import SamplingParams  # noqa: E402
from trainer.models import stop_token_ids  # noqa: E402
from trainer.outbound.policy import OutboundPolicy  # noqa: E402
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint  # noqa: E402
from trainer.rollout import EngineLimits, RolloutEngine, RolloutLimits, StopRequested, start_rollout  # noqa: E402
from trainer.toy import TOY_TOOLS, ToyToolExecutor, toy_items  # noqa: E402

CALL = '<tool_call>{"name": "peek", "arguments": {}}</tool_call>'
GREEDY = SamplingParams(temperature=0.0)
QUESTIONS = [
    "What is the secret colour?",
    "hello",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "0 1 2 3",
    "Please call the tool, read the result and give the final answer.",
    "Answer with one word.",
]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """The tiny model behind a LoRA adapter whose B matrices are non-zero, so the adapter matters."""
    from trainer.models import load_policy

    config = TrainerConfig.from_dict({"model": str(tiny_model_dir), "lora_r": 8})
    torch.manual_seed(0)
    model, tokenizer = load_policy(config=config)
    with torch.no_grad():
        # Sharpen the random model a little so that greedy decoding has no near-ties.
        model.get_base_model().lm_head.weight.mul_(20.0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    return model, tokenizer


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _items(count):
    items = toy_items(count=count, seed=0)
    for item, question in zip(items, QUESTIONS * count, strict=False):
        item["messages"] = [item["messages"][0], {"role": "user", "content": question}]
    return items


def _rollouts(tokenizer, items, group_size=1):
    rollouts = []
    for group, item in enumerate(items):
        for sample in range(group_size):
            rollouts.append(
                start_rollout(
                    tokenizer=tokenizer,
                    item=item,
                    item_index=group,
                    group_index=group,
                    sample_index=sample,
                    split="train",
                    run_tools=TOY_TOOLS,
                )
            )
    return rollouts


def _limits(**overrides):
    values = dict(
        max_turns=3,
        max_new_tokens_per_turn=40,
        max_tokens_per_rollout=200,
        tool_call_budget=None,
        tool_call_penalty=0.0,
    )
    values.update(overrides)
    return RolloutLimits(**values)


def _script(tokenizer, turns):
    return TurnScript(tokenizer=tokenizer, turns=turns, stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))


def _new_engine(model, tokenizer, loop, script, *, executor=None, engine_limits=None, **limits):
    backend = ForcedContinuousBackend(
        script=script, model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_token_ids(tokenizer)
    )
    return RolloutEngine(
        backend=backend,
        tokenizer=tokenizer,
        tool_executor=executor or ToyToolExecutor(),
        loop=loop,
        limits=_limits(**limits),
        engine_limits=engine_limits,
    )


def _old_engine(model, tokenizer, loop, script, **limits):
    backend = KVCacheBackend(
        model=model,
        pad_id=tokenizer.pad_token_id,
        stop_ids=stop_token_ids(tokenizer),
        pick=turn_sync_pick(script),
    )
    return TurnSyncRolloutEngine(
        backend=backend,
        tokenizer=tokenizer,
        tool_executor=ToyToolExecutor(),
        loop=loop,
        limits=_limits(**limits),
    )


def _loss(model, rollouts, tokenizer):
    """The step's loss and gradient norm from these rollouts, the adapter restored afterwards."""
    from trainer.update import build_optimizer, update_policy

    config = TrainerConfig.from_dict(
        {
            "model": "unused",
            "micro_batch_size": 4,
            "temperature": 1.0,
            "max_tokens_per_rollout": 200,
            "max_new_tokens_per_turn": 40,
        }
    )
    for index, rollout in enumerate(rollouts):
        rollout.advantage = 1.0 if index % 2 == 0 else -0.5
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer, scheduler = build_optimizer(model=model, config=config, total_optimizer_steps=1)
    model.train()
    try:
        metrics = update_policy(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            rollouts=rollouts,
            config=config,
            pad_id=tokenizer.pad_token_id,
        )
    finally:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in saved:
                    parameter.copy_(saved[name])
    return metrics["loss"], metrics["grad_norm"]


def test_greedy_rollouts_equal_the_turn_synchronous_engine(policy, loop):
    """Two forced tool-call turns, then the model's own greedy answer: same tokens, masks,
    log-probs at every generated token (so the same logits across turns), same loss."""
    model, tokenizer = policy
    script = _script(tokenizer, [CALL, CALL + CALL, None])
    items = _items(6)
    old = _rollouts(tokenizer, items)
    _old_engine(model, tokenizer, loop, script).run(old, sampling=GREEDY, generator=torch.Generator())
    new = _rollouts(tokenizer, items)
    stats = _new_engine(model, tokenizer, loop, script).run(new, sampling=GREEDY, generator=torch.Generator())

    assert [r.turns for r in new] == [3] * 6
    assert all(r.calls_requested == 3 for r in new)
    for a, b in zip(old, new, strict=True):
        assert b.completion_ids == a.completion_ids
        assert b.completion_mask == a.completion_mask
        assert b.sampling_logprobs == pytest.approx(a.sampling_logprobs, abs=1e-4)
        assert b.finish_reason == a.finish_reason
        assert [(m["role"], m["content"]) for m in b.messages] == [
            (m["role"], m["content"]) for m in a.messages
        ]
    # Log-probs depend on each conversation: the comparison is not of one constant.
    assert len({round(r.sampling_logprobs[0], 4) for r in new}) == len(new)
    old_loss, old_norm = _loss(model, old, tokenizer)
    new_loss, new_norm = _loss(model, new, tokenizer)
    assert new_loss == pytest.approx(old_loss, rel=1e-5, abs=1e-7) and old_loss != 0.0
    assert new_norm == pytest.approx(old_norm, rel=1e-4)
    # Only the tool results and scaffolding were prefilled after the first turn.
    # Only the tool results, scaffolding and each turn's last sampled token were prefilled after
    # the first turn (the turn-synchronous engine prefilled the whole conversation every turn).
    engine = stats.engine
    prompts = sum(len(r.prompt_ids) for r in new)
    assert engine.prefill_tokens == prompts + sum(r.completion_mask.count(0) + r.turns - 1 for r in new)
    assert engine.generated_tokens == sum(r.generated_tokens for r in new)


def test_the_kv_cache_kept_across_turns_gives_what_a_full_re_prefill_gives(policy, loop):
    model, tokenizer = policy
    backend = ContinuousBatchingBackend(
        model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_token_ids(tokenizer)
    )
    conversations = [tokenizer.encode(q) for q in QUESTIONS[:4]]
    follow_ups = [tokenizer.encode(text) for text in ("\nuser: and then?\n", " ok", "0 0 7", "blue red")]

    async def kept():
        session = backend.open_session(sampling=GREEDY, slots=2, max_sequence_tokens=256)

        async def one(prompt):
            async with session.sequence() as sequence:
                turns = [await sequence.generate(prompt, max_new_tokens=10, generator=None)]
                for extra in follow_ups:
                    turns.append(await sequence.generate(extra, max_new_tokens=6, generator=None))
                return turns

        try:
            return await asyncio.gather(*(one(p) for p in conversations))
        finally:
            await session.aclose()

    async def re_prefilled(prefix, max_new_tokens):
        session = backend.open_session(sampling=GREEDY, slots=1, max_sequence_tokens=256)
        try:
            async with session.sequence() as sequence:
                return await sequence.generate(prefix, max_new_tokens=max_new_tokens, generator=None)
        finally:
            await session.aclose()

    results = loop.run_until_complete(kept())
    for prompt, turns in zip(conversations, results, strict=True):
        history = list(prompt)
        for index, turn in enumerate(turns):
            expected = loop.run_until_complete(re_prefilled(history, 10 if index == 0 else 6))
            assert turn.token_ids == expected.token_ids
            assert turn.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
            history += turn.token_ids + (follow_ups[index] if index < len(follow_ups) else [])


def test_a_groups_prompt_is_prefilled_once(policy, loop):
    model, tokenizer = policy
    script = _script(tokenizer, [CALL, "red"])
    rollouts = _rollouts(tokenizer, _items(2), group_size=4)
    stats = _new_engine(model, tokenizer, loop, script).run(
        rollouts, sampling=GREEDY, generator=torch.Generator()
    )
    prompt_lengths = [len(rollouts[0].prompt_ids), len(rollouts[4].prompt_ids)]
    # Each prompt went through the model once; its three siblings copied it from the cache.
    assert stats.engine.shared_prefix_tokens == 3 * sum(prompt_lengths)
    # After that, each second turn fed the first turn's stop token and the tool-result fragment.
    fragments = sum(r.completion_mask.count(0) for r in rollouts)
    assert stats.engine.prefill_tokens == sum(prompt_lengths) + fragments + len(rollouts)
    assert all(r.finish_reason == "answer" and r.final_answer == "red" for r in rollouts)


def test_backpressure_caps_rollouts_in_flight_and_cache_tokens(policy, loop):
    model, tokenizer = policy
    in_flight, peak = 0, 0

    class CountingExecutor(ToyToolExecutor):
        async def execute(self, calls, *, item, trace_id):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            return await super().execute(calls, item=item, trace_id=trace_id)

    script = _script(tokenizer, [CALL, "red"])
    rollouts = _rollouts(tokenizer, _items(6), group_size=2)
    engine = _new_engine(
        model,
        tokenizer,
        loop,
        script,
        executor=CountingExecutor(),
        engine_limits=EngineLimits(max_rollouts_in_flight=3),
    )
    stats = engine.run(rollouts, sampling=GREEDY, generator=torch.Generator())
    assert stats.engine.slots == 3 and peak <= 3
    assert all(r.finish_reason == "answer" for r in rollouts)

    per_rollout = max(len(r.prompt_ids) for r in rollouts) + 200
    engine.engine_limits = EngineLimits(max_rollouts_in_flight=100, max_cache_tokens=2 * per_rollout + 1)
    assert engine.slots_for(rollouts) == (2, per_rollout)
    engine.engine_limits = EngineLimits(max_cache_tokens=per_rollout - 1)
    with pytest.raises(ValueError, match="max_kv_cache_tokens"):
        engine.run(rollouts, sampling=GREEDY, generator=torch.Generator())
    # Unset, the cap comes from free memory: a positive number of slots.
    engine.engine_limits = EngineLimits()
    assert engine.slots_for(rollouts)[0] >= 1


def test_a_hanging_tool_ends_its_rollout_at_the_deadline_while_the_others_finish(policy, loop):
    model, tokenizer = policy
    server = ScriptedServer()

    def peek(request):
        body = json.loads(request.body)
        output = json.dumps({"type": "function_call_output", "call_id": body["call_id"], "output": "red"})
        return Reply(body=output.encode(), delay_s=60.0 if body["item"].get("hang") else 0.0)

    server.routes["/tools/peek"] = peek
    executor = HttpToolExecutor(
        endpoints={"peek": ToolEndpoint(url=server.url("/tools/peek"), timeout_s=30.0)},
        policy=OutboundPolicy(allow_loopback=True),
    )
    items = _items(4)
    items[1]["hang"] = True
    rollouts = _rollouts(tokenizer, items)
    graded: dict[int, float] = {}

    async def grade(rollout):
        graded[rollout.item_index] = time.perf_counter()

    script = _script(tokenizer, [CALL, CALL, "red"])
    engine = _new_engine(model, tokenizer, loop, script, executor=executor, deadline_s=4.0)
    started = time.perf_counter()
    try:
        engine.run(rollouts, sampling=GREEDY, generator=torch.Generator(), grade=grade)
    finally:
        loop.run_until_complete(executor.aclose())
        server.close()
    elapsed = time.perf_counter() - started

    hung = rollouts[1]
    assert hung.finish_reason == "timeout" and 4.0 <= hung.wall_s < 5.5
    assert hung.tool_results[-1].error_type == "timeout" and hung.messages[-1]["role"] == "tool"
    assert "deadline" in hung.messages[-1]["content"]
    others = [r for r in rollouts if r is not hung]
    assert all(r.finish_reason == "answer" and r.turns == 3 and r.wall_s < 4.0 for r in others)
    # Each finished rollout was graded as it ended, long before the hanging one gave up.
    assert all(graded[r.item_index] < graded[1] - 1.0 for r in others)
    assert elapsed < 8.0


def test_a_stop_ends_every_rollout_within_one_token_step_and_leaves_nothing_running(policy, loop):
    model, tokenizer = policy
    steps = {"n": 0, "at_stop": None}

    class CountingBackend(ForcedContinuousBackend):
        def choose_tokens(self, logits, requests, sampling):
            steps["n"] += 1
            return super().choose_tokens(logits, requests, sampling)

    def should_stop():
        if steps["n"] >= 4 and steps["at_stop"] is None:
            steps["at_stop"] = steps["n"]
        return steps["at_stop"] is not None

    script = _script(tokenizer, ["red " * 60])
    backend = CountingBackend(
        script=script, model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_token_ids(tokenizer)
    )
    engine = RolloutEngine(
        backend=backend,
        tokenizer=tokenizer,
        tool_executor=ToyToolExecutor(),
        loop=loop,
        limits=_limits(max_new_tokens_per_turn=100),
        should_stop=should_stop,
    )
    rollouts = _rollouts(tokenizer, _items(6))
    model.train()
    with pytest.raises(StopRequested):
        engine.run(rollouts, sampling=GREEDY, generator=torch.Generator())
    assert steps["n"] == steps["at_stop"]  # no token step began after the stop was seen
    assert all(r.finish_reason is None and r.turns == 0 for r in rollouts)
    assert not [task for task in asyncio.all_tasks(loop) if not task.done()]
    assert not [t for t in threading.enumerate() if t.name.startswith("rft-engine")]
    assert model.training  # the session put the model back into training mode
