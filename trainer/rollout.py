"""The rollout engine: multi-turn sampling with tool calls, turn by turn across all rollouts.

Each turn, every active rollout is generated in one batched backend call; the tool calls of all
rollouts are then executed concurrently through the async tool executor on the run's event loop,
and their results are appended as tokens that the model did not generate (masked out of the loss).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.chat import (
    ParsedTurn,
    openai_tool_call,
    parse_tool_calls,
    tool_names,
    tool_response_fragment,
)
from trainer.generation import GenerationBackend, SamplingParams
from trainer.interfaces import GradeResult, ToolCall, ToolExecutor, ToolResult

logger = logging.getLogger(__name__)


class StopRequested(Exception):
    """should_stop() returned True between turns."""


@dataclass
class RolloutLimits:
    max_turns: int
    max_new_tokens_per_turn: int
    max_tokens_per_rollout: int
    tool_call_budget: int | None
    tool_call_penalty: float


@dataclass
class Rollout:
    """One sampled trajectory, as tokens (for the update) and as chat messages (for people)."""

    trace_id: str
    split: str
    item: Mapping[str, Any]
    item_index: int
    group_index: int
    sample_index: int
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    # 1 where the model generated the token (trained), 0 for tool results and chat scaffolding.
    completion_mask: list[int] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    final_answer: str = ""
    finish_reason: str | None = None
    turns: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    calls_requested: int = 0  # every call the model wrote, malformed and over-budget ones included
    started_at: float = field(default_factory=time.perf_counter)
    generation_s: float = 0.0
    latency_ms: float = 0.0
    grade: GradeResult | None = None
    penalty: float = 0.0
    reward: float | None = None
    advantage: float | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(self.completion_mask)

    @property
    def score_value(self) -> float | None:
        return self.grade.score if self.grade is not None else None

    @property
    def tool_errors(self) -> list[ToolResult]:
        return [result for result in self.tool_results if not result.ok]

    @property
    def allowed_tool_names(self) -> set[str]:
        return set(tool_names(self.tools))

    def grader_sample(self) -> dict[str, Any]:
        return {
            "output_text": self.final_answer,
            "output_tools": [openai_tool_call(call) for call in self.tool_calls],
            "messages": self.messages,
            "trace_id": self.trace_id,
        }


def new_trace_id() -> str:
    return f"trace_{uuid.uuid4().hex}"


def item_tools(item: Mapping[str, Any], run_tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """An item's own "tools" restricts/overrides the run's tools for that item."""
    own = item.get("tools")
    if isinstance(own, list):
        return [dict(tool) for tool in own]
    return [dict(tool) for tool in run_tools]


def start_rollout(
    *,
    tokenizer: Any,
    item: Mapping[str, Any],
    item_index: int,
    group_index: int,
    sample_index: int,
    split: str,
    run_tools: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[int] | None = None,
) -> Rollout:
    """A rollout at its start; pass `prompt_ids` from a sibling of the same item to skip rendering."""
    tools = item_tools(item, run_tools)
    messages = [dict(message) for message in item["messages"]]
    if prompt_ids is None:
        prompt_ids = render_prompt(tokenizer=tokenizer, messages=messages, tools=tools)
    return Rollout(
        trace_id=new_trace_id(),
        split=split,
        item=item,
        item_index=item_index,
        group_index=group_index,
        sample_index=sample_index,
        tools=tools,
        messages=messages,
        prompt_ids=list(prompt_ids),
    )


def render_prompt(
    *, tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[int]:
    prompt_ids = tokenizer.apply_chat_template(
        list(messages),
        tools=list(tools) or None,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    if isinstance(prompt_ids, Mapping):  # some tokenizers return a BatchEncoding regardless
        prompt_ids = prompt_ids["input_ids"]
    return list(prompt_ids)


class RolloutEngine:
    def __init__(
        self,
        *,
        backend: GenerationBackend,
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


def _last_assistant_index(messages: Sequence[Mapping[str, Any]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return index
    return -1


def budget_penalty(*, calls: int, budget: int | None, penalty_per_call: float) -> float:
    if budget is None:
        return 0.0
    return max(0, calls - budget) * penalty_per_call
