"""The generation interface the rollout engine talks to, and the sampling rule every backend shares.

A backend opens one `GenerationSession` per batch of rollouts. A session owns a fixed number of
sequence slots (the cap on rollouts in flight); each rollout holds one slot for its whole life and
asks it for one assistant turn at a time, passing only the tokens appended since its last turn
(the prompt at first, then tool results and chat scaffolding). The model backend lives in
`trainer/engine.py` (continuous batching, KV cache kept across turns); `ScriptedBackend` below
answers from a script (tests, benchmarks, demos).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
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


@dataclass
class EngineStats:
    """What a session did, for the step's metrics."""

    slots: int = 0  # sequences the session could hold at once (rollouts in flight)
    decode_steps: int = 0  # batched forwards that advanced running sequences by one token
    decode_rows: int = 0  # sequences summed over those forwards (occupancy = rows / steps / slots)
    prefill_forwards: int = 0
    prefill_tokens: int = 0  # tokens run through the model that were not the previous sampled token
    shared_prefix_tokens: int = 0  # prompt tokens copied from a sibling's cache instead of prefilled
    generated_tokens: int = 0
    busy_s: float = 0.0  # wall time inside forwards and sampling

    @property
    def batch_occupancy(self) -> float:
        if not self.decode_steps or not self.slots:
            return 0.0
        return self.decode_rows / self.decode_steps / self.slots


class GenerationSequence(Protocol):
    async def generate(
        self, new_token_ids: Sequence[int], *, max_new_tokens: int, generator: Any
    ) -> GeneratedTurn:
        """The next assistant turn after appending `new_token_ids`; `generator` is this rollout's
        torch.Generator (on the model's device) for sampling."""
        ...


class GenerationSession(Protocol):
    stats: EngineStats

    def sequence(self) -> contextlib.AbstractAsyncContextManager[GenerationSequence]:
        """Waits for a free slot (backpressure) and holds it until the block ends."""
        ...

    async def aclose(self) -> None:
        """Stops the driver and frees the cache; no task of the session runs after it returns."""
        ...


class GenerationBackend(Protocol):
    def open_session(
        self,
        *,
        sampling: SamplingParams,
        slots: int,
        max_sequence_tokens: int,
        on_step: Callable[[], None] | None = None,
    ) -> GenerationSession:
        """`max_sequence_tokens` bounds prompt plus completion of every sequence; `on_step` is called
        on the event loop after every token step (the rollout engine checks for a stop there)."""
        ...

    def auto_cache_tokens(self) -> int | None:
        """The KV-cache token budget to use when the config leaves it to us (None: no cache)."""
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


def token_distribution(logits: Any, *, sampling: SamplingParams) -> tuple[Any, Any]:
    """logits (batch, vocab) -> (logprobs under the temperature-scaled softmax, sampling probabilities
    after top-p); probabilities are None for greedy decoding."""
    import torch

    logits = logits.float()
    if sampling.temperature <= 0:
        return torch.log_softmax(logits, dim=-1), None
    logprobs = torch.log_softmax(logits / sampling.temperature, dim=-1)
    probs = logprobs.exp()
    if sampling.top_p < 1.0:
        sorted_probs, sorted_index = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, sorted_index, sorted_probs)
    return logprobs, probs


def sample_next_tokens(logits: Any, *, sampling: SamplingParams, generator: Any) -> tuple[Any, Any]:
    """logits (batch, vocab) -> (tokens (batch,), logprobs (batch,)) under the temperature-scaled softmax."""
    import torch

    logprobs, probs = token_distribution(logits, sampling=sampling)
    if probs is None:
        tokens = logits.float().argmax(dim=-1)
    else:
        # The generator lives on the model's device (copying (batch, vocab) probabilities to the CPU
        # every token would cost more than the sampling itself on a GPU).
        tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class ScriptedBackend:
    """A stand-in policy that answers from a script instead of a model (benchmarks, tests, demos).

    `respond(token_ids)` gets the whole conversation so far (prompt and completion) and returns the
    text of the next assistant turn; the backend encodes it, ends it with the stop token, and honours
    the per-turn token limit exactly as the model backend does.
    """

    def __init__(self, *, tokenizer: Any, stop_id: int, respond: Any) -> None:
        self.tokenizer = tokenizer
        self.stop_id = stop_id
        self.respond = respond

    def auto_cache_tokens(self) -> int | None:
        return None

    def open_session(
        self,
        *,
        sampling: SamplingParams,
        slots: int,
        max_sequence_tokens: int,
        on_step: Callable[[], None] | None = None,
    ) -> _ScriptedSession:
        return _ScriptedSession(self, slots=slots, on_step=on_step)


class _ScriptedSequence:
    def __init__(self, session: _ScriptedSession) -> None:
        self.session = session
        self.history: list[int] = []

    async def generate(
        self, new_token_ids: Sequence[int], *, max_new_tokens: int, generator: Any
    ) -> GeneratedTurn:
        backend, stats = self.session.backend, self.session.stats
        self.history.extend(new_token_ids)
        stats.prefill_tokens += len(new_token_ids)
        ids = backend.tokenizer.encode(backend.respond(list(self.history)), add_special_tokens=False)
        ids.append(backend.stop_id)
        stopped = len(ids) <= max_new_tokens
        ids = ids[: max(max_new_tokens, 0)]
        self.history.extend(ids)
        stats.generated_tokens += len(ids)
        stats.decode_steps += 1
        stats.decode_rows += 1
        if self.session.on_step is not None:
            self.session.on_step()
        await asyncio.sleep(0)  # a turn is a scheduling point, as it is for the model backend
        return GeneratedTurn(token_ids=ids, logprobs=[0.0] * len(ids), stopped=stopped)


class _ScriptedSession:
    def __init__(self, backend: ScriptedBackend, *, slots: int, on_step: Callable[[], None] | None) -> None:
        self.backend = backend
        self.on_step = on_step
        self.stats = EngineStats(slots=slots)
        self._slots = asyncio.Semaphore(slots)

    @contextlib.asynccontextmanager
    async def sequence(self) -> AsyncIterator[_ScriptedSequence]:
        async with self._slots:
            yield _ScriptedSequence(self)

    async def aclose(self) -> None:
        return None
