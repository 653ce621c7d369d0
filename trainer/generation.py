"""Generation backends: turn a batch of token sequences into one assistant turn each.

The rollout engine only sees `GenerationBackend`. The default backend runs all active rollouts in
one batched forward per token (left padding, attention mask, position ids, KV cache) and records
the log-probability of every sampled token under the temperature-scaled distribution.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0


@dataclass
class GeneratedTurn:
    token_ids: list[int]  # the new tokens, including the stop token when one was produced
    logprobs: list[float]  # log-probability of each new token (temperature-scaled, before top-p)
    stopped: bool  # True when the turn ended with a stop token (not at the length limit)


class GenerationBackend(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
        generator: Any,
    ) -> list[GeneratedTurn]:
        """One turn for every prompt; `max_new_tokens[i]` bounds row i; `generator` is a torch.Generator
        on the model's device."""
        ...


def left_pad(sequences: Sequence[Sequence[int]], *, pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, position_ids), all (batch, max_len), sequences aligned right."""
    import torch

    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            input_ids[row, length - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
            attention_mask[row, length - len(sequence) :] = 1
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device)


def sample_next_tokens(logits: Any, *, sampling: SamplingParams, generator: Any) -> tuple[Any, Any]:
    """logits (batch, vocab) -> (tokens (batch,), logprobs (batch,)) under the temperature-scaled softmax."""
    import torch

    logits = logits.float()
    if sampling.temperature <= 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    logprobs = torch.log_softmax(logits / sampling.temperature, dim=-1)
    probs = logprobs.exp()
    if sampling.top_p < 1.0:
        sorted_probs, sorted_index = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, sorted_index, sorted_probs)
    # The generator lives on the model's device (copying (batch, vocab) probabilities to the CPU every
    # token would cost more than the sampling itself on a GPU).
    tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class KVCacheBackend:
    """Batched token-by-token sampling with the model's KV cache (transformers DynamicCache)."""

    def __init__(self, *, model: Any, pad_id: int, stop_ids: Sequence[int]) -> None:
        self.model = model
        self.pad_id = pad_id
        self.stop_ids = list(stop_ids)
        # transformers 5 renamed the cache argument `past_key_values` -> `cache`.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._cache_argument = (
            "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        )

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
        generator: Any,
    ) -> list[GeneratedTurn]:
        import torch

        if not prompts:
            return []
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return self._generate(prompts, max_new_tokens, sampling, generator, device)
        finally:
            self.model.train(was_training)

    def _generate(self, prompts, max_new_tokens, sampling, generator, device) -> list[GeneratedTurn]:
        import torch

        batch = len(prompts)
        input_ids, prompt_mask, position_ids = left_pad(prompts, pad_id=self.pad_id, device=device)
        limits = torch.tensor(list(max_new_tokens), device=device)
        steps = int(limits.max().item())
        stop_ids = torch.tensor(self.stop_ids, device=device)
        # Preallocated so the per-token loop does no Python work per row.
        new_tokens = torch.full((batch, max(steps, 1)), self.pad_id, dtype=torch.long, device=device)
        new_logprobs = torch.zeros((batch, max(steps, 1)), dtype=torch.float32, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        attention_mask = torch.cat(
            [prompt_mask, torch.zeros((batch, steps), dtype=torch.long, device=device)], dim=1
        )
        prompt_length = prompt_mask.shape[1]
        finished = limits <= 0
        if steps > 0:
            output = self.model(
                input_ids=input_ids,
                attention_mask=prompt_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = _returned_cache(output)
            logits = output.logits[:, -1, :]
            next_positions = position_ids[:, -1:] + 1
        for step in range(steps):
            tokens, logprobs = sample_next_tokens(logits, sampling=sampling, generator=generator)
            active = ~finished
            new_tokens[:, step] = tokens.masked_fill(finished, self.pad_id)
            new_logprobs[:, step] = logprobs.masked_fill(finished, 0.0)
            lengths += active.long()
            is_stop = active & torch.isin(tokens, stop_ids)
            stopped |= is_stop
            finished = finished | is_stop | (step + 1 >= limits)
            if step + 1 == steps or bool(finished.all()):
                break
            attention_mask[:, prompt_length + step] = (~finished).long()
            output = self.model(
                input_ids=new_tokens[:, step : step + 1],
                attention_mask=attention_mask[:, : prompt_length + step + 1],
                position_ids=next_positions,
                use_cache=True,
                **{self._cache_argument: cache},
            )
            cache = _returned_cache(output)
            logits = output.logits[:, -1, :]
            next_positions = next_positions + 1
        token_rows, logprob_rows = new_tokens.tolist(), new_logprobs.tolist()
        return [
            GeneratedTurn(
                token_ids=token_rows[row][:length], logprobs=logprob_rows[row][:length], stopped=bool(stop)
            )
            for row, (length, stop) in enumerate(zip(lengths.tolist(), stopped.tolist(), strict=True))
        ]


def _returned_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class ScriptedBackend:
    """A stand-in policy that answers from a script instead of a model (benchmarks, tests, demos).

    `respond(prompt_ids)` returns the text of the next assistant turn; the backend encodes it, ends it
    with the stop token, and honours the per-row token limit exactly as a model backend does.
    """

    def __init__(self, *, tokenizer: Any, stop_id: int, respond: Any) -> None:
        self.tokenizer = tokenizer
        self.stop_id = stop_id
        self.respond = respond

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int],
        sampling: SamplingParams,
        generator: Any,
    ) -> list[GeneratedTurn]:
        turns = []
        for prompt, limit in zip(prompts, max_new_tokens, strict=True):
            ids = self.tokenizer.encode(self.respond(list(prompt)), add_special_tokens=False) + [self.stop_id]
            stopped = len(ids) <= limit
            ids = ids[: max(limit, 0)]
            turns.append(GeneratedTurn(token_ids=ids, logprobs=[0.0] * len(ids), stopped=stopped))
        return turns
