"""One rollout streamed token by token: the playground's engine (no Django).

`play_rollout` runs a single multi-turn rollout through the trainer's `RolloutEngine` (so tool calls
are parsed, executed and appended exactly as in training) on the trainer's
`ContinuousBatchingBackend`, wrapped in a `StreamingBackend` that reports each token as the engine
samples it (the session's `on_token` hook), and a tool executor wrapper that reports each call and its
result. The rollout is then graded. Everything the page shows arrives through `emit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.engine import ContinuousBatchingBackend
from trainer.generation import GeneratedTurn, SamplingParams
from trainer.interfaces import Grader, ToolCall, ToolExecutor, ToolResult
from trainer.rollout import EngineLimits, Rollout, RolloutEngine, RolloutLimits, start_rollout

# emit(kind, payload): kinds are "turn", "token", "tool_call", "tool_result", "graded", "done".
Emit = Callable[[str, dict[str, Any]], None]


class StreamingBackend:
    """The model backend (`ContinuousBatchingBackend`, unchanged sampling) whose sessions report
    `emit("turn", ...)` as each assistant turn starts and `emit("token", ...)` for each token as it is
    sampled. Stop is the rollout engine's: it checks `should_stop` after every token step."""

    def __init__(
        self, *, model: Any, tokenizer: Any, pad_id: int, stop_ids: Sequence[int], emit: Emit
    ) -> None:
        self.inner = ContinuousBatchingBackend(model=model, pad_id=pad_id, stop_ids=stop_ids)
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.emit = emit
        self.turn = 0

    def auto_cache_tokens(self) -> int | None:
        return self.inner.auto_cache_tokens()

    def open_session(
        self,
        *,
        sampling: SamplingParams,
        slots: int,
        max_sequence_tokens: int,
        on_step: Callable[[], None] | None = None,
    ) -> _StreamingSession:
        session = _StreamingSession(self)
        session.inner = self.inner.open_session(
            sampling=sampling,
            slots=slots,
            max_sequence_tokens=max_sequence_tokens,
            on_step=on_step,
            on_token=session.on_token,
        )
        return session


class _StreamingSession:
    def __init__(self, backend: StreamingBackend) -> None:
        self.backend = backend
        self.inner: Any = None
        self._turn_tokens: dict[int, list[int]] = {}  # slot -> the current turn's tokens so far
        self._shown: dict[int, str] = {}  # slot -> the text of those already sent

    @property
    def stats(self):
        return self.inner.stats

    @contextlib.asynccontextmanager
    async def sequence(self) -> AsyncIterator[_StreamingSequence]:
        async with self.inner.sequence() as handle:
            yield _StreamingSequence(self, handle)

    def start_turn(self, slot: int) -> None:
        backend = self.backend
        backend.turn += 1
        backend.emit("turn", {"turn": backend.turn})
        self._turn_tokens[slot] = []
        self._shown[slot] = ""

    def on_token(self, slot: int, token_id: int) -> None:
        if token_id in self.backend.stop_ids:
            return  # the turn's end, not text
        tokens = self._turn_tokens.setdefault(slot, [])
        tokens.append(token_id)
        # Decode the whole turn and send what is new: a character split over tokens shows once whole.
        text = self.backend.tokenizer.decode(tokens, skip_special_tokens=False)
        shown = self._shown.get(slot, "")
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            self.backend.emit("token", {"text": text[len(shown) :], "t": time.time()})
            self._shown[slot] = text

    async def aclose(self) -> None:
        await self.inner.aclose()


class _StreamingSequence:
    def __init__(self, session: _StreamingSession, handle: Any) -> None:
        self.session = session
        self.handle = handle

    async def generate(
        self, new_token_ids: Sequence[int], *, max_new_tokens: int, generator: Any
    ) -> GeneratedTurn:
        self.session.start_turn(self.handle.slot)
        return await self.handle.generate(new_token_ids, max_new_tokens=max_new_tokens, generator=generator)


class ObservedToolExecutor:
    """Reports each tool call before it runs and its result after (real calls, through `inner`)."""

    def __init__(self, inner: ToolExecutor, emit: Emit) -> None:
        self.inner = inner
        self.emit = emit

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]:
        for call in calls:
            self.emit("tool_call", {"call_id": call.call_id, "name": call.name, "arguments": call.arguments})
        results = await self.inner.execute(calls, item=item, trace_id=trace_id)
        for result in results:
            self.emit(
                "tool_result",
                {
                    "call_id": result.call_id,
                    "name": result.name,
                    "output": result.output,
                    "ok": result.ok,
                    "error_type": result.error_type,
                    "latency_ms": result.latency_ms,
                },
            )
        return results

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


def load_playground_model(
    *, model: str, adapter_dir: str | Path | None, chat_template: str = "auto", gguf_file: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 on the CPU or the GPU: the base model, with the adapter if given."""
    from trainer.models import (
        load_base_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
        resolve_model_source,
    )

    source = resolve_model_source(model=model, gguf_file=gguf_file)
    device = resolve_device("auto")
    tokenizer = load_tokenizer(source=source, chat_template=chat_template)
    base = load_base_model(source=source, dtype=resolve_dtype("auto", device), device=device)
    if adapter_dir is None:
        return base.eval(), tokenizer
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tokenizer


def play_rollout(
    *,
    model: Any,
    tokenizer: Any,
    item: Mapping[str, Any],
    tools: Sequence[Mapping[str, Any]],
    tool_executor: ToolExecutor,
    grader: Grader | None,
    limits: RolloutLimits,
    sampling: SamplingParams,
    seed: int,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
) -> Rollout:
    """Plays one rollout of `item`, streaming it through `emit`; grades it unless stopped.

    Raises StopRequested when `should_stop` turns true (after emitting what was generated)."""
    import torch

    from trainer.models import stop_token_ids

    loop = asyncio.new_event_loop()
    observed = ObservedToolExecutor(tool_executor, emit)
    try:
        stop_ids = stop_token_ids(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        engine = RolloutEngine(
            backend=StreamingBackend(
                model=model, tokenizer=tokenizer, pad_id=pad_id, stop_ids=stop_ids, emit=emit
            ),
            tokenizer=tokenizer,
            tool_executor=observed,
            loop=loop,
            limits=limits,
            engine_limits=EngineLimits(max_rollouts_in_flight=1),
            should_stop=should_stop,
        )
        rollout = start_rollout(
            tokenizer=tokenizer,
            item=item,
            item_index=0,
            group_index=0,
            sample_index=0,
            split="eval",
            run_tools=tools,
        )
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        engine.run([rollout], sampling=sampling, generator=generator)
        if grader is not None:
            try:
                result = loop.run_until_complete(
                    grader.grade(rollout.grader_sample(), item, trace_id=rollout.trace_id)
                )
                rollout.grade = result
                emit(
                    "graded",
                    {
                        "score": result.score,
                        "sub_scores": dict(result.sub_scores or {}),
                        "errors": list(getattr(result, "errors", []) or []),
                    },
                )
            except Exception as error:  # a grader error is shown, not raised: the rollout stands
                emit("graded", {"score": None, "error": f"{type(error).__name__}: {error}"[:500]})
        emit(
            "done",
            {
                "finish_reason": rollout.finish_reason,
                "final_answer": rollout.final_answer,
                "messages": rollout.messages,
                "trace_id": rollout.trace_id,
                "tool_calls": len(rollout.tool_calls),
            },
        )
        return rollout
    finally:
        try:
            loop.run_until_complete(observed.aclose())
            close = getattr(grader, "aclose", None)
            if close is not None:
                loop.run_until_complete(close())
        finally:
            loop.close()
