"""The continuous-batching backend: batching does not change greedy tokens; sampled log-probs
match training's; each rollout's samples come from its own seeded stream."""

from __future__ import annotations

import asyncio

import pytest
import torch

from trainer.engine import ContinuousBatchingBackend
from trainer.generation import GeneratedTurn, SamplingParams
from trainer.models import stop_token_ids


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # Sharpen the random model a little so that greedy decoding has no near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def _prompts(tokenizer):
    texts = [
        "What is the secret colour?",
        "hello",
        "The quick brown fox jumps over the lazy dog. " * 3,
        "0 1 2 3",
    ]
    return [tokenizer.encode(text) for text in texts]


def _generate(backend, prompts, *, limits, sampling, seeds=None, slots=None):
    """One turn per prompt, all prompts in one session (so they share forward passes)."""

    async def run():
        session = backend.open_session(
            sampling=sampling, slots=slots or len(prompts), max_sequence_tokens=256
        )

        async def one(prompt, limit, seed):
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            async with session.sequence() as sequence:
                return await sequence.generate(prompt, max_new_tokens=limit, generator=generator)

        try:
            return await asyncio.gather(
                *(
                    one(p, n, s)
                    for p, n, s in zip(prompts, limits, seeds or [None] * len(prompts), strict=True)
                )
            )
        finally:
            await session.aclose()

    return asyncio.run(run())


def _backend(model, tokenizer):
    return ContinuousBatchingBackend(
        model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_token_ids(tokenizer)
    )


def test_batched_greedy_generation_equals_unbatched(tiny_model, tiny_tokenizer):
    backend = _backend(tiny_model, tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)
    greedy = SamplingParams(temperature=0.0)
    limits = [12, 7, 12, 3]
    batched = _generate(backend, prompts, limits=limits, sampling=greedy)
    single = [
        _generate(backend, [p], limits=[n], sampling=greedy)[0] for p, n in zip(prompts, limits, strict=True)
    ]
    assert [t.token_ids for t in batched] == [t.token_ids for t in single]
    assert [len(t.token_ids) for t in batched] == [
        n if not t.stopped else len(t.token_ids) for t, n in zip(batched, limits, strict=True)
    ]
    for a, b in zip(batched, single, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_sampling_is_seeded_per_rollout_and_logprobs_match_a_training_forward(tiny_model, tiny_tokenizer):
    from trainer.update import MicroBatch, token_logprobs

    backend = _backend(tiny_model, tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)
    sampling = SamplingParams(temperature=0.7, top_p=1.0)
    seeds = [3, 4, 5, 6]
    first = _generate(backend, prompts, limits=[10] * 4, sampling=sampling, seeds=seeds)
    # Two slots instead of four: other rows share the forwards, each rollout's tokens stay the same.
    again = _generate(backend, prompts, limits=[10] * 4, sampling=sampling, seeds=seeds, slots=2)
    assert [t.token_ids for t in first] == [t.token_ids for t in again]
    for prompt, turn in zip(prompts, first, strict=True):
        assert isinstance(turn, GeneratedTurn) and turn.token_ids
        ids = torch.tensor([prompt + turn.token_ids])
        batch = MicroBatch(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(ids.shape[1])[None],
            completion_mask=torch.ones((1, len(turn.token_ids))),
            advantages=torch.zeros(1),
        )
        with torch.no_grad():
            logprobs, _ = token_logprobs(tiny_model, batch, temperature=0.7)
        assert logprobs[0].tolist() == pytest.approx(turn.logprobs, abs=1e-4)


def test_top_p_keeps_only_the_nucleus():
    from trainer.generation import sample_next_tokens

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).repeat(200, 1)
    tokens, _ = sample_next_tokens(
        logits,
        sampling=SamplingParams(temperature=1.0, top_p=0.8),
        generator=torch.Generator().manual_seed(0),
    )
    assert set(tokens.tolist()) == {0, 1}


def test_on_token_reports_each_sequences_tokens_as_they_are_sampled(tiny_model, tiny_tokenizer):
    """The streaming hook (the playground's): every sampled token, in order, named by its slot, and
    reported before the turn is handed back."""
    backend = _backend(tiny_model, tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)[:2]
    seen: list[tuple[int, int]] = []
    at_return: dict[int, int] = {}

    async def run():
        session = backend.open_session(
            sampling=SamplingParams(temperature=0.7),
            slots=2,
            max_sequence_tokens=256,
            on_token=lambda slot, token: seen.append((slot, token)),
        )

        async def one(prompt, seed):
            async with session.sequence() as sequence:
                turn = await sequence.generate(
                    prompt, max_new_tokens=9, generator=torch.Generator().manual_seed(seed)
                )
                at_return[sequence.slot] = sum(1 for slot, _token in seen if slot == sequence.slot)
                return sequence.slot, turn

        try:
            return await asyncio.gather(*(one(p, s) for p, s in zip(prompts, [1, 2], strict=True)))
        finally:
            await session.aclose()

    results = asyncio.run(run())
    assert sorted(slot for slot, _turn in results) == [0, 1]
    for slot, turn in results:
        assert [token for s, token in seen if s == slot] == turn.token_ids
        assert at_return[slot] == len(turn.token_ids)
