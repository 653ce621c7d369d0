"""The turn-synchronous rollout engine this project had before issue 11, kept for comparison only.

`bench/bench_rollouts.py` runs it against the continuous-batching engine, and the tests in
`tests/trainer/test_engine.py` check that the new engine reproduces its tokens, masks, log-probs and
loss. It is the code of trainer/generation.py (`KVCacheBackend`) and trainer/rollout.py
(`RolloutEngine`) at commit 8d541d7, with a `pick` hook and token counters added to the backend.
Each turn, every active rollout is generated in one batched call that prefills the whole
conversation again (the KV cache is dropped after each turn); then all rollouts wait for every tool
call of that turn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from trainer.chat import ParsedTurn, openai_tool_call, parse_tool_calls, tool_response_fragment
from trainer.generation import GeneratedTurn, SamplingParams, left_pad, sample_next_tokens
from trainer.interfaces import ToolCall, ToolExecutor, ToolResult
from trainer.rollout import Rollout, RolloutLimits, StopRequested, _last_assistant_index

logger = logging.getLogger(__name__)


class KVCacheBackend:
    """Batched token-by-token sampling with the model's KV cache (transformers DynamicCache)."""

    def __init__(self, *, model: Any, pad_id: int, stop_ids: Sequence[int], pick: Any = None) -> None:
        self.model = model
        # pick(logits, sampling=..., generator=..., prompts=..., step=...) -> (tokens, logprobs);
        # the benchmark uses it to force scripted tokens, the default is the trainer's sampling.
        self.pick = pick
        self.prefill_tokens = 0
        self.generated_tokens = 0
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
        self.prefill_tokens += sum(len(p) for p in prompts)
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
            if self.pick is None:
                tokens, logprobs = sample_next_tokens(logits, sampling=sampling, generator=generator)
            else:
                tokens, logprobs = self.pick(
                    logits, sampling=sampling, generator=generator, prompts=prompts, step=step
                )
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
        self.generated_tokens += int(lengths.sum().item())
        return [
            GeneratedTurn(
                token_ids=token_rows[row][:length], logprobs=logprob_rows[row][:length], stopped=bool(stop)
            )
            for row, (length, stop) in enumerate(zip(lengths.tolist(), stopped.tolist(), strict=True))
        ]


def _returned_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class TurnSyncRolloutEngine:
    """The previous engine: every turn of every rollout in lockstep, full re-prefill each turn."""

    def __init__(
        self,
        *,
        backend: Any,
        tokenizer: Any,
        tool_executor: ToolExecutor,
        loop: asyncio.AbstractEventLoop,
        limits: RolloutLimits,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.tool_executor = tool_executor
        self.loop = loop
        self.limits = limits
        self.should_stop = should_stop
        self.generation_s = 0.0  # time spent inside the backend (for tokens_per_s)
        self.tool_s = 0.0

    def run(self, rollouts: Sequence[Rollout], *, sampling: SamplingParams, generator: Any) -> None:
        """Runs every rollout to its end (answer, max turns, token limit or budget), in place."""
        for turn in range(self.limits.max_turns):
            active = [rollout for rollout in rollouts if rollout.finish_reason is None]
            if not active:
                break
            if self.should_stop():
                raise StopRequested
            used = [len(rollout.completion_ids) for rollout in active]
            budgets = [
                min(self.limits.max_new_tokens_per_turn, self.limits.max_tokens_per_rollout - n) for n in used
            ]
            started = time.perf_counter()
            generated = self.backend.generate(
                [rollout.prompt_ids + rollout.completion_ids for rollout in active],
                max_new_tokens=budgets,
                sampling=sampling,
                generator=generator,
            )
            elapsed = time.perf_counter() - started
            self.generation_s += elapsed
            pending: list[tuple[Rollout, list[ToolCall], list[ToolResult | None]]] = []
            texts = self.tokenizer.batch_decode([t.token_ids for t in generated], skip_special_tokens=True)
            for rollout, turn_output, text in zip(active, generated, texts, strict=True):
                rollout.generation_s += elapsed
                rollout.turns += 1
                rollout.completion_ids.extend(turn_output.token_ids)
                rollout.completion_mask.extend([1] * len(turn_output.token_ids))
                rollout.sampling_logprobs.extend(turn_output.logprobs)
                parsed = parse_tool_calls(text)
                to_execute = self._record_assistant_turn(rollout, parsed, text, turn_output.stopped)
                if to_execute is not None:
                    pending.append((rollout, *to_execute))
            if pending:
                started = time.perf_counter()
                self.loop.run_until_complete(self._execute_all(pending))
                self.tool_s += time.perf_counter() - started
                finished = [
                    self._append_tool_results(rollout, [r for r in results if r is not None], turn=turn)
                    for rollout, _calls, results in pending
                ]
                continuing = [
                    rollout for (rollout, _c, _r), done in zip(pending, finished, strict=True) if not done
                ]
                self._append_tool_response_tokens(continuing)

    def _record_assistant_turn(
        self, rollout: Rollout, parsed: ParsedTurn, raw_text: str, stopped: bool
    ) -> tuple[list[ToolCall], list[ToolResult | None]] | None:
        """Adds the assistant message; returns the calls to execute, or None when the rollout ended."""
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if parsed.has_calls:
            message["tool_calls"] = [openai_tool_call(call) for call in parsed.calls] + [
                {"id": call_id, "type": "function", "function": {"name": "", "arguments": raw}}
                for call_id, raw, _ in parsed.malformed
            ]
        if raw_text != parsed.content:
            message["raw"] = raw_text
        rollout.messages.append(message)
        if not stopped:
            rollout.finish_reason = "max_tokens"
            rollout.final_answer = parsed.content
            return None
        if not parsed.has_calls:
            rollout.finish_reason = "answer"
            rollout.final_answer = parsed.content
            return None
        rollout.calls_requested += len(parsed.calls) + len(parsed.malformed)
        budget = self.limits.tool_call_budget
        if budget is not None and rollout.calls_requested > budget:
            # Past the budget the calls are not run: the rollout ends and pays for the excess.
            rollout.finish_reason = "budget"
            rollout.final_answer = parsed.content
            return None
        allowed = rollout.allowed_tool_names
        calls: list[ToolCall] = []
        results: list[ToolResult | None] = []
        for call in parsed.calls:
            if call.name in allowed:
                calls.append(call)
                results.append(None)  # filled in by the executor
            else:
                results.append(
                    ToolResult(
                        call_id=call.call_id,
                        name=call.name,
                        output=f"Error: unknown tool {call.name!r}. Available tools: {', '.join(sorted(allowed)) or 'none'}.",
                        ok=False,
                        error_type="unknown_tool",
                        error=f"unknown tool {call.name!r}",
                    )
                )
            rollout.tool_calls.append(call)
        for call_id, _raw, reason in parsed.malformed:
            results.append(
                ToolResult(
                    call_id=call_id,
                    name="",
                    output=f'Error: {reason}. Write <tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>.',
                    ok=False,
                    error_type="malformed_call",
                    error=reason,
                )
            )
        return calls, results

    async def _execute_all(
        self, pending: list[tuple[Rollout, list[ToolCall], list[ToolResult | None]]]
    ) -> None:
        async def run_one(rollout: Rollout, calls: list[ToolCall], results: list[ToolResult | None]) -> None:
            if not calls:
                return
            started = time.perf_counter()
            try:
                executed = list(
                    await self.tool_executor.execute(calls, item=rollout.item, trace_id=rollout.trace_id)
                )
            except Exception as error:  # an executor bug must not kill the run: the model sees an error
                logger.exception("tool executor failed for %s", rollout.trace_id)
                latency = (time.perf_counter() - started) * 1000
                executed = [
                    ToolResult(
                        call_id=call.call_id,
                        name=call.name,
                        output="Error: the tool could not be called.",
                        ok=False,
                        error_type="connection",
                        error=f"{type(error).__name__}: {error}",
                        latency_ms=latency,
                    )
                    for call in calls
                ]
            by_id = {result.call_id: result for result in executed}
            slots = iter(call for call in calls)
            for index, result in enumerate(results):
                if result is None:
                    call = next(slots)
                    results[index] = by_id.get(call.call_id) or ToolResult(
                        call_id=call.call_id,
                        name=call.name,
                        output="Error: the tool returned no result.",
                        ok=False,
                        error_type="invalid_response",
                        error="no result for this call_id",
                    )

        await asyncio.gather(*(run_one(rollout, calls, results) for rollout, calls, results in pending))

    def _append_tool_results(self, rollout: Rollout, results: list[ToolResult], *, turn: int) -> bool:
        """Records the results as tool messages; returns True when the rollout ends here."""
        rollout.tool_results.extend(results)
        for result in results:
            rollout.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": result.call_id,
                    "name": result.name,
                    "content": result.output,
                    "ok": result.ok,
                    "error_type": result.error_type,
                    "latency_ms": round(result.latency_ms, 3),
                }
            )
        if turn + 1 >= self.limits.max_turns:
            rollout.finish_reason = "max_turns"
            return True
        return False

    def _append_tool_response_tokens(self, rollouts: Sequence[Rollout]) -> None:
        """Appends the rendered tool results (one batched tokenizer call for the whole turn)."""
        if not rollouts:
            return
        texts = []
        for rollout in rollouts:
            outputs = [m["content"] for m in rollout.messages[_last_assistant_index(rollout.messages) + 1 :]]
            texts.append(tool_response_fragment(outputs))
        fragments = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for rollout, fragment in zip(rollouts, fragments, strict=True):
            remaining = self.limits.max_tokens_per_rollout - len(rollout.completion_ids)
            if len(fragment) >= remaining:
                rollout.finish_reason = "max_tokens"
                continue
            rollout.completion_ids.extend(fragment)
            rollout.completion_mask.extend([0] * len(fragment))
            rollout.sampling_logprobs.extend([0.0] * len(fragment))
