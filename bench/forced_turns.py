"""Scripted turns for comparing rollout engines on models that do not call tools on their own.

The model still runs every forward pass and samples every token with the trainer's sampling; the
sampled token is then replaced by the script's token for that turn and position, and its
log-probability is read from the same distribution. Turns without a script (None) keep the model's
own tokens. Both engines get the same script, so they do the same work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.engine import ContinuousBatchingBackend
from trainer.generation import SamplingParams, sample_next_tokens, token_distribution


class TurnScript:
    def __init__(self, *, tokenizer: Any, turns: Sequence[str | None], stop_id: int) -> None:
        self.turns = [
            None if text is None else tokenizer.encode(text, add_special_tokens=False) + [stop_id]
            for text in turns
        ]
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.assistant = tokenizer.encode("assistant", add_special_tokens=False)

    def token(self, turn_index: int, position: int) -> int | None:
        script = self.turns[min(turn_index, len(self.turns) - 1)]
        if script is None:
            return None
        return script[min(position, len(script) - 1)]

    def turn_index_of(self, conversation: Sequence[int]) -> int:
        """Assistant headers in a conversation that ends with one, minus that last one."""
        width = len(self.assistant)
        headers = sum(
            1
            for i, token in enumerate(conversation)
            if token == self.im_start and list(conversation[i + 1 : i + 1 + width]) == self.assistant
        )
        return headers - 1


def force(logits: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor, wanted, sampling):
    """Replaces the sampled tokens of the rows that have a wanted token."""
    if all(w is None for w in wanted):
        return tokens, logprobs
    distribution, _probs = token_distribution(logits, sampling=sampling)
    tokens = tokens.clone()
    logprobs = logprobs.clone()
    for row, token in enumerate(wanted):
        if token is not None:
            tokens[row] = token
            logprobs[row] = distribution[row, token]
    return tokens, logprobs


def turn_sync_pick(script: TurnScript):
    """The `pick` hook of the turn-synchronous KVCacheBackend."""

    def pick(logits, *, sampling: SamplingParams, generator, prompts, step):
        tokens, logprobs = sample_next_tokens(logits, sampling=sampling, generator=generator)
        wanted = [script.token(script.turn_index_of(prompt), step) for prompt in prompts]
        return force(logits, tokens, logprobs, wanted, sampling)

    return pick


class ForcedContinuousBackend(ContinuousBatchingBackend):
    def __init__(self, *, script: TurnScript, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.script = script

    def choose_tokens(self, logits, requests, sampling):
        tokens, logprobs = super().choose_tokens(logits, requests, sampling)
        wanted = [self.script.token(r.turn_index, len(r.token_ids)) for r in requests]
        forced, forced_logprobs = force(
            logits, torch.tensor(tokens), torch.tensor(logprobs, dtype=torch.float32), wanted, sampling
        )
        return forced.tolist(), forced_logprobs.tolist()
