"""Continuous-batching generation on torch: one KV-cache slot per rollout, kept across its turns.

Each layer's cache is one tensor [slots, kv_heads, capacity + 1, head_dim]. A rollout holds a slot
for its whole life, so after a tool call only the new tokens (the previous turn's last sampled token,
the tool results, the chat scaffolding) go through the model. Every iteration of the driver runs
  - one batched decode forward for all sequences that are generating (one token each), and
  - batched prefill forwards for the sequences that just asked for a turn,
then samples, hands finished turns back to their rollouts and yields to the event loop. Sequences
join and leave between any two token steps; a rollout waiting on a tool simply has no request.

Rows of one forward sit at different cache lengths: the queries are left-padded to a common length
(so the last real token is always the last column and `logits_to_keep=1` works), every real token
writes its K/V at its own position of its own slot, pad tokens write into a scratch column past the
end, and a 4-D boolean mask lets query j of row b see exactly the keys 0..(its position). The first
group member to prefill a prompt registers it; later members copy those K/V rows and reuse the
last-position logits instead of prefilling the same prompt again.

Forwards run on one worker thread (torch releases the GIL inside its kernels), so tool I/O on the
run's event loop keeps moving while the model computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.generation import EngineStats, GeneratedTurn, SamplingParams, token_distribution

# Padded query tokens per prefill forward (rows x longest row): bounds the activations of one prefill.
MAX_PREFILL_TOKENS_PER_FORWARD = 8192
# Share of free memory the KV cache may take when the config does not cap it.
AUTO_CACHE_SHARE_GPU = 0.5
AUTO_CACHE_SHARE_CPU = 0.25


class SlotCache:
    """The cache object the decoder layers see: they call `update` once per layer and attend over
    what it returns. `prepare` tells it, before each forward, which slots the rows are and where each
    query token's K/V goes."""

    def __init__(
        self, *, layers: int, slots: int, capacity: int, kv_heads: int, head_dim: int, dtype, device
    ):
        shape = (slots, kv_heads, capacity + 1, head_dim)
        # Zeros, not empty: a masked-out key still multiplies its value by a zero weight, and 0 * NaN
        # from uninitialised memory would poison the row.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.capacity = capacity
        self.scratch = capacity  # where pad tokens write; no real query ever sees it
        self._rows: torch.Tensor | None = None
        self._row_slice: slice | None = None
        self._write_rows: torch.Tensor | None = None
        self._write_positions: torch.Tensor | None = None
        self._kv_length = 0

    def prepare(self, *, slots: list[int], write_positions: torch.Tensor, kv_length: int) -> None:
        device = write_positions.device
        first = slots[0]
        contiguous = slots == list(range(first, first + len(slots)))
        # Rows in consecutive slots are read as a view; otherwise they are gathered (a copy).
        self._row_slice = slice(first, first + len(slots)) if contiguous else None
        self._rows = torch.tensor(slots, dtype=torch.long, device=device)
        self._write_rows = self._rows[:, None].expand_as(write_positions)
        self._write_positions = write_positions
        self._kv_length = kv_length

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # (rows, heads, queries, dim) -> written at [slot, :, position] for every query token.
        keys[self._write_rows, :, self._write_positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[self._write_rows, :, self._write_positions] = value_states.transpose(1, 2).to(values.dtype)
        if self._row_slice is not None:
            return keys[self._row_slice, :, : self._kv_length], values[self._row_slice, :, : self._kv_length]
        return (
            keys[:, :, : self._kv_length].index_select(0, self._rows),
            values[:, :, : self._kv_length].index_select(0, self._rows),
        )

    def copy_prefix(self, *, source: int, target: int, length: int) -> None:
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]


def model_cache_geometry(model: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers decoder (PeftModel or plain)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class ContinuousBatchingBackend:
    """The model backend: sessions over a slot cache; see the module docstring."""

    def __init__(self, *, model: Any, pad_id: int, stop_ids: Sequence[int]) -> None:
        self.model = model
        self.pad_id = pad_id
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # transformers 5 renamed the cache argument `past_key_values` -> `cache`.
        self._cache_argument = (
            "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        )
        self.layers, self.kv_heads, self.head_dim = model_cache_geometry(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def cache_dtype(self) -> torch.dtype:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_input_embeddings().weight.dtype

    def bytes_per_cache_token(self) -> int:
        element = torch.tensor([], dtype=self.cache_dtype).element_size()
        return 2 * self.layers * self.kv_heads * self.head_dim * element

    def auto_cache_tokens(self) -> int:
        device = self.device
        share = AUTO_CACHE_SHARE_GPU if device.type == "cuda" else AUTO_CACHE_SHARE_CPU
        return int(free_memory_bytes(device) * share) // self.bytes_per_cache_token()

    def open_session(
        self,
        *,
        sampling: SamplingParams,
        slots: int,
        max_sequence_tokens: int,
        on_step: Callable[[], None] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> ContinuousBatchingSession:
        """`on_token(slot, token_id)` is called on the event loop for every token as it is sampled
        (streaming: the playground shows tokens as they are made)."""
        return ContinuousBatchingSession(
            self,
            sampling=sampling,
            slots=slots,
            max_sequence_tokens=max_sequence_tokens,
            on_step=on_step,
            on_token=on_token,
        )

    # --- hooks the benchmark overrides ---------------------------------------------------------

    def choose_tokens(
        self, logits: torch.Tensor, requests: Sequence[_Request], sampling: SamplingParams
    ) -> tuple[list[int], list[float]]:
        """One token per row under `sampling` (see `trainer.generation.sample_next_tokens`), each
        drawn from its own rollout's generator, so a rollout's samples do not depend on which other
        rollouts shared its forward."""
        logprobs, probs = token_distribution(logits, sampling=sampling)
        if probs is None:
            tokens = logits.float().argmax(dim=-1)
        else:
            # Inverse-CDF draw, batched: one uniform per row from that row's generator. The same
            # distribution as torch.multinomial, which costs about 1 ms per (1, vocab) call on a CPU.
            uniforms = torch.cat(
                [torch.rand(1, generator=request.generator, device=probs.device) for request in requests]
            )
            cdf = probs.cumsum(dim=-1)
            # side="right": the first token whose cumulative mass exceeds the draw, never a zero one.
            tokens = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], side="right")[:, 0]
            tokens = tokens.clamp(max=probs.shape[-1] - 1)
        chosen = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
        return tokens.tolist(), chosen.tolist()


@dataclass
class _Request:
    """One turn asked of one sequence."""

    sequence: _Sequence
    max_new_tokens: int
    generator: Any
    turn_index: int
    future: asyncio.Future
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass
class _Sequence:
    slot: int
    cached: int = 0  # positions of the slot holding this sequence's K/V
    feed: list[int] = field(default_factory=list)  # tokens to run through the model next
    prompt_key: tuple[int, ...] | None = None  # its first request's tokens, while it may share them
    turns: int = 0
    request: _Request | None = None
    broken: bool = False  # a turn was cancelled mid-forward: the slot's contents are unknown


@dataclass
class _Plan:
    """One driver iteration, decided on the event loop, executed on the worker thread."""

    copies: list[tuple[_Sequence, int, int]] = field(default_factory=list)  # (target, source slot, length)
    shared: list[tuple[_Request, torch.Tensor]] = field(default_factory=list)  # (request, cached logits)
    forwards: list[list[tuple[_Request, list[int]]]] = field(default_factory=list)
    decode: list[tuple[_Request, list[int]]] = field(default_factory=list)


class _Handle:
    """What a rollout holds: its slot, and `generate` for its next turn."""

    def __init__(self, session: ContinuousBatchingSession, sequence: _Sequence) -> None:
        self._session = session
        self._sequence = sequence

    @property
    def slot(self) -> int:
        """The cache slot it holds (what the session's `on_token` names)."""
        return self._sequence.slot

    async def generate(
        self, new_token_ids: Sequence[int], *, max_new_tokens: int, generator: Any
    ) -> GeneratedTurn:
        return await self._session._generate(
            self._sequence, list(new_token_ids), max_new_tokens=max_new_tokens, generator=generator
        )


class ContinuousBatchingSession:
    def __init__(
        self,
        backend: ContinuousBatchingBackend,
        *,
        sampling: SamplingParams,
        slots: int,
        max_sequence_tokens: int,
        on_step: Callable[[], None] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> None:
        self.backend = backend
        self.sampling = sampling
        self.on_step = on_step
        self.on_token = on_token
        self.stats = EngineStats(slots=slots)
        self.capacity = max_sequence_tokens
        self._free_slots = list(range(slots))
        self._slot_available = asyncio.Condition()
        self._cache: SlotCache | None = None
        self._slots = slots
        self._waiting: list[_Request] = []  # asked for a turn, not yet prefilled
        self._running: list[_Request] = []  # generating, one token per decode step
        # prompt tokens -> (slot holding them at positions 0.., logits after the last prompt token)
        self._prompts: dict[tuple[int, ...], tuple[int, torch.Tensor]] = {}
        self._wake = asyncio.Event()
        self._driver: asyncio.Task | None = None
        # OpenMP's thread count is per calling thread: the worker would otherwise use every core and
        # its spinning pool would slow the caller's next work (the update) down.
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="rft-engine",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._closed = False
        self._was_training = backend.model.training

    # --- what rollouts call ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def sequence(self) -> AsyncIterator[_Handle]:
        async with self._slot_available:
            await self._slot_available.wait_for(lambda: bool(self._free_slots))
            slot = self._free_slots.pop(0)
        sequence = _Sequence(slot=slot)
        try:
            yield _Handle(self, sequence)
        finally:
            self._release(sequence)
            async with self._slot_available:
                self._free_slots.append(slot)
                self._free_slots.sort()  # low slots first keeps running rows contiguous (a view, no copy)
                self._slot_available.notify()

    async def _generate(
        self, sequence: _Sequence, new_token_ids: list[int], *, max_new_tokens: int, generator: Any
    ) -> GeneratedTurn:
        if self._closed:
            raise RuntimeError("the generation session is closed")
        if sequence.broken:
            raise RuntimeError("this sequence's last turn was cancelled; it cannot continue")
        if sequence.turns == 0:
            sequence.prompt_key = tuple(new_token_ids)
        sequence.feed.extend(new_token_ids)
        sequence.turns += 1
        if max_new_tokens <= 0:
            return GeneratedTurn(token_ids=[], logprobs=[], stopped=False)
        needed = sequence.cached + len(sequence.feed) + max_new_tokens - 1
        if needed > self.capacity:
            raise ValueError(
                f"a sequence needs {needed} cache positions but the session was opened with {self.capacity}"
            )
        if not sequence.feed:
            raise ValueError("a turn needs at least one new token to condition on")
        request = _Request(
            sequence=sequence,
            max_new_tokens=max_new_tokens,
            generator=generator,
            turn_index=sequence.turns - 1,
            future=asyncio.get_running_loop().create_future(),
        )
        sequence.request = request
        self._waiting.append(request)
        self._ensure_driver()
        self._wake.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            # The rollout was stopped or hit its deadline: its row leaves the batch at the next step.
            sequence.request = None
            sequence.broken = True
            for queue in (self._waiting, self._running):
                if request in queue:
                    queue.remove(request)
            raise

    def _release(self, sequence: _Sequence) -> None:
        if sequence.request is not None:
            for queue in (self._waiting, self._running):
                if sequence.request in queue:
                    queue.remove(sequence.request)
            sequence.request = None
        for key, (slot, _logits) in list(self._prompts.items()):
            if slot == sequence.slot:
                del self._prompts[key]

    async def aclose(self) -> None:
        """Waits for the forward in progress, stops the driver, frees the cache."""
        self._closed = True
        for request in self._waiting + self._running:
            if not request.future.done():
                request.future.cancel()
        self._waiting.clear()
        self._running.clear()
        if self._driver is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        self._thread.shutdown(wait=True)
        self._cache = None
        self._prompts.clear()
        self.backend.model.train(self._was_training)

    # --- the driver --------------------------------------------------------------------------------

    def _ensure_driver(self) -> None:
        if self._driver is None:
            if self._cache is None:
                backend = self.backend
                backend.model.eval()
                self._cache = SlotCache(
                    layers=backend.layers,
                    slots=self._slots,
                    capacity=self.capacity,
                    kv_heads=backend.kv_heads,
                    head_dim=backend.head_dim,
                    dtype=backend.cache_dtype,
                    device=backend.device,
                )
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="rft-engine-driver")

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._waiting and not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            plan = self._plan()
            started = time.perf_counter()
            try:
                outcome = await loop.run_in_executor(self._thread, self._execute, plan)
            except BaseException as error:
                # A failing forward (out of memory, a model bug) fails every turn in flight instead
                # of leaving their rollouts waiting forever.
                self._fail_all(plan, error)
                raise
            self.stats.busy_s += time.perf_counter() - started
            self._apply(plan, outcome)
            if self.on_step is not None:
                self.on_step()
            await asyncio.sleep(0)  # let finished rollouts run their tools before the next step

    def _plan(self) -> _Plan:
        plan = _Plan()
        plan.decode = [(request, request.sequence.feed) for request in self._running]
        prefill: list[tuple[_Request, list[int]]] = []
        leading: set[tuple[int, ...]] = set()
        still_waiting: list[_Request] = []
        for request in self._waiting:
            sequence = request.sequence
            key = sequence.prompt_key if sequence.cached == 0 else None
            if key is not None and key in self._prompts:
                source, logits = self._prompts[key]
                plan.copies.append((sequence, source, len(key)))
                plan.shared.append((request, logits))
            elif key is not None and key in leading:
                still_waiting.append(request)  # a sibling prefills this prompt now; copy it next step
            else:
                if key is not None:
                    leading.add(key)
                prefill.append((request, sequence.feed))
        self._waiting = still_waiting
        # Similar lengths together waste less padding; each forward stays under the token budget.
        prefill.sort(key=lambda entry: len(entry[1]))
        batch: list[tuple[_Request, list[int]]] = []
        for entry in prefill:
            longest = max(len(entry[1]), *(len(e[1]) for e in batch)) if batch else len(entry[1])
            if batch and longest * (len(batch) + 1) > MAX_PREFILL_TOKENS_PER_FORWARD:
                plan.forwards.append(batch)
                batch = []
            batch.append(entry)
        if batch:
            plan.forwards.append(batch)
        return plan

    def _execute(self, plan: _Plan) -> dict[int, tuple[int, float, torch.Tensor | None]]:
        """On the worker thread: the copies, the forwards and the sampling of one iteration.
        Returns id(request) -> (token, logprob, last logits when a prompt was prefilled)."""
        outcome: dict[int, tuple[int, float, torch.Tensor | None]] = {}
        cache = self._cache
        assert cache is not None
        with torch.inference_mode():
            for target, source, length in plan.copies:
                cache.copy_prefix(source=source, target=target.slot, length=length)
            if plan.shared:
                logits = torch.cat([logits for _request, logits in plan.shared])
                requests = [request for request, _logits in plan.shared]
                tokens, logprobs = self.backend.choose_tokens(logits, requests, self.sampling)
                for request, token, logprob in zip(requests, tokens, logprobs, strict=True):
                    outcome[id(request)] = (token, logprob, None)
            for rows in ([plan.decode] if plan.decode else []) + plan.forwards:
                # Rows in slot order: consecutive slots are read from the cache as a view.
                rows = sorted(rows, key=lambda entry: entry[0].sequence.slot)
                logits = self._forward(rows)
                requests = [request for request, _feed in rows]
                tokens, logprobs = self.backend.choose_tokens(logits, requests, self.sampling)
                for row, (request, token, logprob) in enumerate(zip(requests, tokens, logprobs, strict=True)):
                    first_prompt = request.sequence.cached == 0
                    outcome[id(request)] = (
                        token,
                        logprob,
                        logits[row : row + 1].clone() if first_prompt else None,
                    )
        return outcome

    def _forward(self, rows: list[tuple[_Request, list[int]]]) -> torch.Tensor:
        """One batched forward over rows at different cache lengths; logits after each row's last token."""
        backend, cache = self.backend, self._cache
        device = backend.device
        width = max(len(feed) for _request, feed in rows)
        batch = len(rows)
        input_ids = torch.full((batch, width), backend.pad_id, dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        write_positions = torch.full((batch, width), cache.scratch, dtype=torch.long)
        last_visible = torch.zeros((batch, width), dtype=torch.long)  # pads see key 0 only
        if width == 1:  # the decode step: one token per row, no padding
            starts = torch.tensor([request.sequence.cached for request, _feed in rows], dtype=torch.long)
            input_ids[:, 0] = torch.tensor([feed[0] for _request, feed in rows], dtype=torch.long)
            positions[:, 0] = starts
            write_positions[:, 0] = starts
            last_visible[:, 0] = starts
        kv_length = 0 if width > 1 else int(starts.max()) + 1
        for row, (request, feed) in enumerate(rows if width > 1 else ()):
            start, count = request.sequence.cached, len(feed)
            offset = width - count
            span = torch.arange(start, start + count)
            input_ids[row, offset:] = torch.tensor(feed, dtype=torch.long)
            positions[row, offset:] = span
            write_positions[row, offset:] = span
            last_visible[row, offset:] = span
            kv_length = max(kv_length, start + count)
        mask = torch.arange(kv_length)[None, None, :] <= last_visible[:, :, None]
        cache.prepare(
            slots=[request.sequence.slot for request, _feed in rows],
            write_positions=write_positions.to(device),
            kv_length=kv_length,
        )
        output = backend.model(
            input_ids=input_ids.to(device),
            attention_mask=mask[:, None].to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=1,
            **{backend._cache_argument: cache},
        )
        return output.logits[:, -1, :]

    def _fail_all(self, plan: _Plan, error: BaseException) -> None:
        planned = [r for r, _l in plan.shared] + [
            r for rows in [plan.decode, *plan.forwards] for r, _f in rows
        ]
        for request in planned + self._waiting + self._running:
            request.sequence.broken = True
            if not request.future.done():
                if isinstance(error, asyncio.CancelledError):
                    request.future.cancel()
                else:
                    request.future.set_exception(
                        RuntimeError(f"generation failed: {type(error).__name__}: {error}")
                    )
        self._waiting.clear()
        self._running.clear()

    def _apply(self, plan: _Plan, outcome: dict[int, tuple[int, float, torch.Tensor | None]]) -> None:
        """On the event loop: append each row's token, finish the turns that ended, update stats."""
        stats = self.stats
        if plan.decode:
            stats.decode_steps += 1
            stats.decode_rows += len(plan.decode)
        for rows in plan.forwards:
            stats.prefill_forwards += 1
            stats.prefill_tokens += sum(len(feed) for _request, feed in rows)
        for target, _source, length in plan.copies:
            stats.shared_prefix_tokens += length
            target.cached = length
            target.feed = []
        fed = {id(request): len(feed) for rows in [plan.decode, *plan.forwards] for request, feed in rows}
        stop_ids = self.backend.stop_ids
        running: list[_Request] = []
        for request in [r for r, _logits in plan.shared] + [
            r for rows in [plan.decode, *plan.forwards] for r, _f in rows
        ]:
            sequence = request.sequence
            if sequence.request is not request or request.future.done():
                continue  # cancelled while its forward ran
            token, logprob, prompt_logits = outcome[id(request)]
            if id(request) in fed:
                sequence.cached += fed[id(request)]
            if prompt_logits is not None and sequence.prompt_key is not None:
                self._prompts.setdefault(sequence.prompt_key, (sequence.slot, prompt_logits))
            sequence.feed = [token]  # not in the cache yet: it is fed with the next step or turn
            request.token_ids.append(token)
            request.logprobs.append(logprob)
            stats.generated_tokens += 1
            if self.on_token is not None:
                self.on_token(sequence.slot, token)
            stopped = token in stop_ids
            if stopped or len(request.token_ids) >= request.max_new_tokens:
                sequence.request = None
                request.future.set_result(
                    GeneratedTurn(token_ids=request.token_ids, logprobs=request.logprobs, stopped=stopped)
                )
            else:
                running.append(request)
        self._running = running
