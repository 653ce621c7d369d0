"""The rollout engine: one asynchronous agent loop per rollout over a continuous-batching backend.

Every rollout runs its own loop on the run's event loop: generate a turn -> run its tool calls
(concurrently, through the tool executor) -> append the results -> next turn, without waiting for
the other rollouts. Tool results are appended as tokens the model did not generate (masked out of
the loss). The generation backend batches whichever rollouts are generating at each token step, so a
rollout waiting on a tool leaves the batch and its KV cache waits for its next turn. A finished
rollout is graded at once while the others still run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.chat import (
    ParsedTurn,
    openai_tool_call,
    parse_tool_calls,
    tool_names,
    tool_response_fragment,
)
from trainer.environments import environment_scope
from trainer.generation import (
    EngineStats,
    GeneratedTurn,
    GenerationBackend,
    GenerationSequence,
    SamplingParams,
)
from trainer.interfaces import (
    EnvironmentCallError,
    GradeResult,
    RolloutEnvironment,
    ToolCall,
    ToolExecutor,
    ToolResult,
)

logger = logging.getLogger(__name__)


class StopRequested(Exception):
    """should_stop() returned True: every rollout was stopped."""


@dataclass
class RolloutLimits:
    max_turns: int
    max_new_tokens_per_turn: int
    max_tokens_per_rollout: int
    tool_call_budget: int | None
    tool_call_penalty: float
    deadline_s: float | None = None  # wall time per rollout; past it the rollout ends as "timeout"


@dataclass
class EngineLimits:
    """Backpressure: how many rollouts hold a KV-cache slot at once."""

    max_rollouts_in_flight: int = 128
    max_cache_tokens: int | None = None  # None: the backend's share of free memory


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
    generation_s: float = 0.0  # time this rollout waited for its turns to be generated
    tool_wait_s: float = 0.0  # time it waited for its tool calls
    wall_s: float = 0.0  # from taking its slot to its end (generation and tools, not grading)
    calls_per_turn: list[int] = field(default_factory=list)  # calls written in each assistant turn
    latency_ms: float = 0.0
    grade: GradeResult | None = None
    penalty: float = 0.0
    reward: float | None = None
    advantage: float | None = None
    # The rollout's environment (trainer/environments.py); env_started_at stays None without one.
    env_started_at: float | None = None  # unix time the start was sent
    env_start_ms: float = 0.0
    env_context: str = ""
    env_error: dict[str, str] | None = None  # {"phase", "type", "message"}: a failed start excludes it
    env_ended_at: float | None = None  # unix time the end was delivered
    env_end_ms: float = 0.0
    env_end_error: str = ""

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


@dataclass
class RolloutRunStats:
    """What one `RolloutEngine.run` did (for the step's metrics)."""

    engine: EngineStats
    wall_s: float = 0.0  # the whole call, grading included
    rollouts_s: float = 0.0  # until the last rollout ended (its grading may still have been running)

    @property
    def prefill_per_generated_token(self) -> float:
        generated = self.engine.generated_tokens
        return self.engine.prefill_tokens / generated if generated else 0.0


class RolloutEngine:
    def __init__(
        self,
        *,
        backend: GenerationBackend,
        tokenizer: Any,
        tool_executor: ToolExecutor,
        loop: asyncio.AbstractEventLoop,
        limits: RolloutLimits,
        engine_limits: EngineLimits | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        stop_poll_s: float = 0.02,
        environment: RolloutEnvironment | None = None,
        environment_context_tokens: int = 1024,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.tool_executor = tool_executor
        self.loop = loop
        self.limits = limits
        self.engine_limits = engine_limits or EngineLimits()
        self.should_stop = should_stop
        self.stop_poll_s = stop_poll_s
        self.generation_s = 0.0  # time the backend spent computing (for tokens_per_s)
        self.last_run: RolloutRunStats | None = None
        self.environment = environment
        self.environment_context_tokens = environment_context_tokens
        self._live_environments: asyncio.Semaphore | None = None
        self._prompt_room = 0

    # --- the public entry --------------------------------------------------------------------------

    def run(
        self,
        rollouts: Sequence[Rollout],
        *,
        sampling: SamplingParams,
        generator: Any,
        grade: Callable[[Rollout], Awaitable[None]] | None = None,
    ) -> RolloutRunStats:
        """Runs every rollout to its end (answer, max turns, token limit, budget or deadline), in
        place, and awaits `grade(rollout)` for each as soon as it ends. Raises StopRequested when
        should_stop() turns True: within one token step every rollout and grading is cancelled, and
        nothing of this call is left running when it raises."""
        stats = self.loop.run_until_complete(self._run(rollouts, sampling, generator, grade))
        self.generation_s += stats.engine.busy_s
        self.last_run = stats
        return stats

    def slots_for(self, rollouts: Sequence[Rollout]) -> tuple[int, int]:
        """(slots, tokens per slot): rollouts in flight at once and the cache room of each."""
        # An environment's context and tools are added after the starts: room is kept for them.
        reserve = self.environment_context_tokens if self.environment is not None else 0
        per_slot = max(len(r.prompt_ids) for r in rollouts) + reserve + self.limits.max_tokens_per_rollout
        caps = self.engine_limits
        cache_tokens = caps.max_cache_tokens
        if cache_tokens is None:
            cache_tokens = self.backend.auto_cache_tokens()
        slots = min(len(rollouts), caps.max_rollouts_in_flight)
        if cache_tokens is not None:
            if cache_tokens < per_slot:
                raise ValueError(
                    f"the KV cache holds {cache_tokens} tokens but one rollout may need {per_slot} "
                    "(its prompt plus max_tokens_per_rollout): raise max_kv_cache_tokens or lower "
                    "max_tokens_per_rollout"
                )
            slots = min(slots, cache_tokens // per_slot)
        return slots, per_slot

    async def _run(self, rollouts, sampling, generator, grade) -> RolloutRunStats:
        started = time.perf_counter()
        if not rollouts:
            return RolloutRunStats(engine=EngineStats())
        slots, per_slot = self.slots_for(rollouts)
        tasks: list[asyncio.Task] = []
        stopping = False

        def check_stop() -> None:
            nonlocal stopping
            if not stopping and self.should_stop():
                stopping = True
                for task in tasks:
                    task.cancel()

        # Checked after every token step, and on a timer while every rollout waits on its tools.
        session = self.backend.open_session(
            sampling=sampling, slots=slots, max_sequence_tokens=per_slot, on_step=check_stop
        )
        generators = _rollout_generators(generator, rollouts)
        if self.environment is not None:
            self._live_environments = asyncio.Semaphore(self.environment.max_live)
            self._prompt_room = per_slot - self.limits.max_tokens_per_rollout
        ended: list[float] = []
        tasks.extend(
            asyncio.create_task(self._rollout_and_grade(rollout, session, rollout_generator, grade, ended))
            for rollout, rollout_generator in zip(rollouts, generators, strict=True)
        )
        watcher = asyncio.create_task(self._poll_stop(check_stop))
        try:
            check_stop()
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            if not stopping:
                raise
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
            await session.aclose()
        if stopping:
            raise StopRequested
        return RolloutRunStats(
            engine=session.stats,
            wall_s=time.perf_counter() - started,
            rollouts_s=(max(ended) if ended else time.perf_counter()) - started,
        )

    async def _poll_stop(self, check_stop: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self.stop_poll_s)
            check_stop()

    # --- one rollout -------------------------------------------------------------------------------

    async def _rollout_and_grade(self, rollout, session, generator, grade, ended: list[float]) -> None:
        # The environment (if any) starts before the cache slot is taken and ends after grading.
        async with environment_scope(
            self.environment, rollout, self._live_environments, self._rerender
        ) as ok:
            if ok:
                await self._generate_and_grade(rollout, session, generator, grade, ended)
            else:  # its start failed: excluded, never generated nor graded
                ended.append(time.perf_counter())

    async def _generate_and_grade(self, rollout, session, generator, grade, ended: list[float]) -> None:
        async with session.sequence() as sequence:  # waits for a free cache slot
            rollout.started_at = time.perf_counter()
            deadline = self.limits.deadline_s
            try:
                async with asyncio.timeout(deadline) as timer:
                    await self._agent_loop(rollout, sequence, generator)
            except TimeoutError:
                if not timer.expired():
                    raise
                self._end_at_deadline(rollout)
            rollout.wall_s = time.perf_counter() - rollout.started_at
        ended.append(time.perf_counter())
        if grade is not None:
            await grade(rollout)

    def _rerender(self, rollout: Rollout) -> None:
        """The prompt again after the environment added context or tools; it must fit the cache slot
        sized from the prompts before the starts."""
        prompt_ids = render_prompt(tokenizer=self.tokenizer, messages=rollout.messages, tools=rollout.tools)
        if len(prompt_ids) > self._prompt_room:
            raise EnvironmentCallError(
                "context_too_long",
                f"the environment's context and tools make the prompt {len(prompt_ids)} tokens, "
                f"over the {self._prompt_room} the step reserved; shorten the context",
            )
        rollout.prompt_ids = prompt_ids

    async def _agent_loop(self, rollout: Rollout, sequence: GenerationSequence, generator: Any) -> None:
        """The protocol of one rollout: generate a turn, run its tool calls, append the results, repeat."""
        new_tokens: list[int] = rollout.prompt_ids
        while True:
            turn = await self._generate_turn(rollout, sequence, new_tokens, generator)
            text = self.tokenizer.decode(turn.token_ids, skip_special_tokens=True)
            to_execute = self._record_assistant_turn(rollout, parse_tool_calls(text), text, turn.stopped)
            if to_execute is None:
                return  # an answer, the token limit or the call budget ended it
            calls, results = to_execute
            results = await self._execute(rollout, calls, results)
            if self._append_tool_results(rollout, results):
                return  # max turns
            new_tokens = self._append_tool_response_tokens(rollout)
            if not new_tokens:
                return  # no room left for the results and another turn

    async def _generate_turn(self, rollout, sequence, new_tokens, generator) -> GeneratedTurn:
        budget = min(
            self.limits.max_new_tokens_per_turn,
            self.limits.max_tokens_per_rollout - len(rollout.completion_ids),
        )
        started = time.perf_counter()
        try:
            turn = await sequence.generate(new_tokens, max_new_tokens=budget, generator=generator)
        finally:
            rollout.generation_s += time.perf_counter() - started
        rollout.turns += 1
        rollout.completion_ids.extend(turn.token_ids)
        rollout.completion_mask.extend([1] * len(turn.token_ids))
        rollout.sampling_logprobs.extend(turn.logprobs)
        return turn

    def _end_at_deadline(self, rollout: Rollout) -> None:
        """The deadline passed: calls still in flight get an error result, so the trajectory reads
        true; a turn being generated is dropped (its tokens never reached the rollout)."""
        rollout.finish_reason = "timeout"
        answered = {m.get("tool_call_id") for m in rollout.messages if m["role"] == "tool"}
        last = rollout.messages[_last_assistant_index(rollout.messages)] if rollout.messages else {}
        for call in last.get("tool_calls", []) if last.get("role") == "assistant" else []:
            if call["id"] not in answered:
                result = ToolResult(
                    call_id=call["id"],
                    name=call["function"]["name"],
                    output="Error: the rollout reached its deadline before the tool answered.",
                    ok=False,
                    error_type="timeout",
                    error=f"rollout deadline of {self.limits.deadline_s:g} s reached",
                )
                rollout.tool_results.append(result)
                rollout.messages.append(_tool_message(result))

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
        rollout.calls_per_turn.append(len(parsed.calls) + len(parsed.malformed))
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
                results.append(ToolResult.unknown_tool(call, allowed))
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

    async def _execute(
        self, rollout: Rollout, calls: list[ToolCall], results: list[ToolResult | None]
    ) -> list[ToolResult]:
        """Runs one turn's calls through the executor; `results` holds None where a call's result goes."""
        started = time.perf_counter()
        try:
            executed = (
                list(await self.tool_executor.execute(calls, item=rollout.item, trace_id=rollout.trace_id))
                if calls
                else []
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
        finally:
            rollout.tool_wait_s += time.perf_counter() - started
        by_id = {result.call_id: result for result in executed}
        slots = iter(calls)
        filled: list[ToolResult] = []
        for result in results:
            if result is None:
                call = next(slots)
                result = by_id.get(call.call_id) or ToolResult(
                    call_id=call.call_id,
                    name=call.name,
                    output="Error: the tool returned no result.",
                    ok=False,
                    error_type="invalid_response",
                    error="no result for this call_id",
                )
            filled.append(result)
        return filled

    def _append_tool_results(self, rollout: Rollout, results: list[ToolResult]) -> bool:
        """Records the results as tool messages; returns True when the rollout ends here."""
        rollout.tool_results.extend(results)
        rollout.messages.extend(_tool_message(result) for result in results)
        if rollout.turns >= self.limits.max_turns:
            rollout.finish_reason = "max_turns"
            return True
        return False

    def _append_tool_response_tokens(self, rollout: Rollout) -> list[int]:
        """Appends the rendered tool results and the next generation prompt; returns those tokens,
        or [] when they would not leave room for another generated token (the rollout ends)."""
        outputs = [m["content"] for m in rollout.messages[_last_assistant_index(rollout.messages) + 1 :]]
        fragment = self.tokenizer(tool_response_fragment(outputs), add_special_tokens=False)["input_ids"]
        remaining = self.limits.max_tokens_per_rollout - len(rollout.completion_ids)
        if len(fragment) >= remaining:
            rollout.finish_reason = "max_tokens"
            return []
        rollout.completion_ids.extend(fragment)
        rollout.completion_mask.extend([0] * len(fragment))
        rollout.sampling_logprobs.extend([0.0] * len(fragment))
        return list(fragment)


def _tool_message(result: ToolResult) -> dict[str, Any]:
    return {
        "role": "tool",
        "tool_call_id": result.call_id,
        "name": result.name,
        "content": result.output,
        "ok": result.ok,
        "error_type": result.error_type,
        "latency_ms": round(result.latency_ms, 3),
    }


def _rollout_generators(generator: Any, rollouts: Sequence[Rollout]) -> list[Any]:
    """One sampling stream per rollout, seeded from the step's seed and the rollout's place in the
    step (group, sample): what a rollout samples depends on neither the rollouts that shared its
    forward passes nor the rank it runs on, so a run split over devices samples what one process does."""
    import torch

    if generator is None:
        return [None] * len(rollouts)
    base = generator.initial_seed()
    return [
        torch.Generator(device=generator.device).manual_seed(
            _mix_seed(base, rollout.group_index, rollout.sample_index)
        )
        for rollout in rollouts
    ]


def _mix_seed(*parts: int) -> int:
    # splitmix64 over the parts: nearby seeds (step n, n + 1; groups 0, 1) give unrelated streams.
    state = 0
    for part in parts:
        state = (state + int(part) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF


def _last_assistant_index(messages: Sequence[Mapping[str, Any]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return index
    return -1


def budget_penalty(*, calls: int, budget: int | None, penalty_per_call: float) -> float:
    if budget is None:
        return 0.0
    return max(0, calls - budget) * penalty_per_call
