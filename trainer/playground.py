"""One rollout streamed token by token: the playground's engine (no Django).

`play_rollout` runs a single multi-turn rollout through the trainer's `RolloutEngine` (so tool calls
are parsed, executed and appended exactly as in training), with a `StreamingBackend` that samples one
token at a time and reports each one as it is made, and a tool executor wrapper that reports each
call and its result. The rollout is then graded. Everything the page shows arrives through `emit`.

It depends on: `trainer.rollout.RolloutEngine`, `RolloutLimits`, `StopRequested` and `start_rollout`;
`trainer.generation.GeneratedTurn`, `SamplingParams` and `sample_next_tokens`; and the
`GenerationBackend` protocol (`generate(prompts, *, max_new_tokens, sampling, generator)` called
once per assistant turn). When the engine changes, only `StreamingBackend` and `play_rollout` need
re-pointing.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.generation import GeneratedTurn, SamplingParams, sample_next_tokens
from trainer.interfaces import Grader, ToolCall, ToolExecutor, ToolResult
from trainer.rollout import Rollout, RolloutEngine, RolloutLimits, StopRequested, start_rollout

# emit(kind, payload): kinds are "turn", "token", "tool_call", "tool_result", "graded", "done".
Emit = Callable[[str, dict[str, Any]], None]


class StreamingBackend:
    """Samples one token at a time with the KV cache and calls `emit("token", ...)` for each.

    One prompt per call (the playground plays one rollout per model). Checks `should_stop` between
    tokens, so Stop takes effect within a token."""

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        stop_ids: Sequence[int],
        emit: Emit,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.emit = emit
        self.should_stop = should_stop
        self.turn = 0
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

        self.model.eval()
        with torch.inference_mode():
            return [
                self._one(list(prompt), limit, sampling, generator)
                for prompt, limit in zip(prompts, max_new_tokens, strict=True)
            ]

    def _one(self, prompt: list[int], limit: int, sampling: SamplingParams, generator: Any) -> GeneratedTurn:
        import torch

        self.turn += 1
        self.emit("turn", {"turn": self.turn})
        device = next(self.model.parameters()).device
        tokens: list[int] = []
        logprobs: list[float] = []
        shown = ""
        stopped = False
        if limit <= 0:
            return GeneratedTurn(token_ids=[], logprobs=[], stopped=False)
        output = self.model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        while True:
            if self.should_stop():
                raise StopRequested
            token, logprob = sample_next_tokens(
                output.logits[:, -1, :], sampling=sampling, generator=generator
            )
            token_id = int(token.item())
            tokens.append(token_id)
            logprobs.append(float(logprob.item()))
            if token_id in self.stop_ids:
                stopped = True
                break
            # Decode the whole turn and send what is new: a character split over tokens shows once whole.
            text = self.tokenizer.decode(tokens, skip_special_tokens=False)
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                self.emit("token", {"text": text[len(shown) :], "t": time.time()})
                shown = text
            if len(tokens) >= limit:
                break
            cache = getattr(output, "cache", None)
            if cache is None:  # transformers before 5 names it past_key_values
                cache = output.past_key_values
            output = self.model(
                input_ids=torch.tensor([[token_id]], device=device),
                use_cache=True,
                **{self._cache_argument: cache},
            )
        return GeneratedTurn(token_ids=tokens, logprobs=logprobs, stopped=stopped)


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
        engine = RolloutEngine(
            backend=StreamingBackend(
                model=model,
                tokenizer=tokenizer,
                stop_ids=stop_token_ids(tokenizer),
                emit=emit,
                should_stop=should_stop,
            ),
            tokenizer=tokenizer,
            tool_executor=observed,
            loop=loop,
            limits=limits,
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
