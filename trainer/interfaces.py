"""The trainer's contract with the outside world.

The trainer never talks to a database, a queue or a URL directly. It receives objects that satisfy
these protocols: the web app wires database- and HTTP-backed implementations, tests wire local ones.
Everything crossing this boundary is plain data (dataclasses, dicts, lists, str, float) so that it
can be stored as JSON without conversion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Error types a tool call can end with (also used as metric suffixes and in the UI).
TOOL_ERROR_TYPES = (
    "malformed_call",  # the model's <tool_call> could not be parsed
    "unknown_tool",  # the model named a tool the rollout may not use
    "http_4xx",  # the endpoint refused the call; its body is shown to the model
    "http_5xx",  # server error after all retries
    "timeout",  # no answer within the tool's timeout, after all retries
    "connection",  # could not connect, after all retries
    "too_large",  # the response exceeded the tool's size cap
    "invalid_response",  # a 2xx whose body could not be understood
    "blocked",  # the outbound policy refused the address (SSRF protection)
    "tool_error",  # an MCP tool answered isError; its text is shown to the model
)


@dataclass(frozen=True)
class ToolCall:
    """One function call the model made in an assistant turn."""

    call_id: str  # "call_<hex>", unique within the rollout
    name: str
    arguments: str  # the raw JSON text of the arguments, as the model wrote it


@dataclass
class ToolResult:
    """What came back for one ToolCall; `output` is exactly what the model will read."""

    call_id: str
    name: str
    output: str
    ok: bool
    error_type: str | None = None  # one of TOOL_ERROR_TYPES when not ok
    error: str | None = None  # human-readable detail for the UI (never contains secrets)
    latency_ms: float = 0.0
    status_code: int | None = None
    attempts: int = 1

    @classmethod
    def unknown_tool(cls, call: ToolCall, available: Iterable[str]) -> ToolResult:
        """The answer to a call naming no tool of the rollout: the model reads which tools it has."""
        names = ", ".join(sorted(available)) or "none"
        return cls(
            call_id=call.call_id,
            name=call.name,
            output=f"Error: unknown tool {call.name!r}. Available tools: {names}.",
            ok=False,
            error_type="unknown_tool",
            error=f"the model called {call.name!r}, which is not a tool of this run",
            attempts=0,
        )


@runtime_checkable
class ToolExecutor(Protocol):
    """Runs the tool calls of one assistant turn of one rollout.

    Implementations run the calls of one turn concurrently, and the trainer runs the turns of all
    active rollouts concurrently (asyncio.gather), so many calls are in flight at once.
    `trace_id` is the same for every call of a rollout (sent as X-RFT-Rollout-Id).
    """

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]: ...


@dataclass
class GradeResult:
    """A grader's verdict on one finished rollout.

    `score` is None when grading failed: such a rollout is excluded from the update, never scored 0.
    `errors` lists {"grader": name, "type": error_type, "message": text}.
    `passed` says, for each grader with a pass threshold, whether its score reached it.
    `token_usage` sums what judge/embedding models reported ({"prompt_tokens": n, ...}).
    """

    score: float | None
    sub_scores: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    latency_ms: float = 0.0
    passed: dict[str, bool] = field(default_factory=dict)
    token_usage: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Grader(Protocol):
    """Scores a finished rollout.

    `sample` is a dict with:
      - "output_text": str — the final assistant answer (last assistant message's text)
      - "output_tools": list — every tool call the model made, OpenAI-shaped:
            {"id": call_id, "type": "function", "function": {"name": ..., "arguments": "<json>"}}
      - "messages": list — the full trajectory in OpenAI chat format (system/user/assistant/tool),
            assistant messages carrying "tool_calls" and tool messages carrying "tool_call_id"
      - "trace_id": str
    `item` is the dataset row (its free-form fields are what `{{item.x}}` templates reach).
    """

    async def grade(
        self, sample: Mapping[str, Any], item: Mapping[str, Any], *, trace_id: str
    ) -> GradeResult: ...


@dataclass
class TrajectoryRecord:
    """One rollout as it is stored and shown (the unit the rollout browser lists)."""

    trace_id: str  # "trace_<uuid hex>"
    step: int
    split: str  # "train" or "eval"
    item_index: int  # index of the item in its dataset (train or eval)
    group_index: int  # which prompt of the step (GRPO group)
    sample_index: int  # which sample within the group
    messages: list[dict[str, Any]]  # full chat incl. tool calls/results; tool results carry latency
    final_answer: str
    reward: float | None  # score - penalty; None when the grader failed
    score: float | None
    penalty: float
    advantage: float | None
    sub_scores: dict[str, float]
    grader_errors: list[dict[str, str]]
    tool_calls: int
    tool_call_names: list[str]
    tool_errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float  # wall time of the rollout incl. tool calls and grading
    finish_reason: str  # "answer", "max_turns", "max_tokens", "budget", "timeout", "env_error", "error"
    # The per-rollout environment: started_at/ended_at (unix s), start_ms/end_ms, context, error
    # ({"phase", "type", "message"}), end_error; None for runs without an environment.
    environment: dict[str, Any] | None = None


@runtime_checkable
class Reporter(Protocol):
    """Receives everything the trainer produces. Called from the training thread."""

    def report_step(
        self, step: int, metrics: Mapping[str, float], trajectories: Sequence[TrajectoryRecord]
    ) -> None:
        """One call per step (train metrics and/or eval metrics with that step's trajectories).
        Must be idempotent for a repeated (step, metric key) / trace_id: a resumed run may report a
        step again."""
        ...

    def report_checkpoint(self, step: int, path: str, metrics: Mapping[str, float]) -> None:
        """A checkpoint directory is complete on disk (written to a temp path, fsynced, renamed)."""
        ...

    def log(self, level: str, message: str) -> None:
        """A log line for the run's log view ("info", "warning", "error")."""
        ...


@dataclass
class EnvironmentStart:
    """What an environment's start answered for one rollout."""

    context: str = ""  # appended to the system prompt ("Environment:\n<context>")
    tools: list[dict[str, Any]] | None = None  # per-rollout tool schemas
    tools_mode: str = "add"  # "add" to the run's tools (same name replaces) or "replace" them


class EnvironmentCallError(Exception):
    """A start (or end) that failed; `error_type` is a TOOL_ERROR_TYPE-like word for counting."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@runtime_checkable
class RolloutEnvironment(Protocol):
    """A fresh environment per rollout (a sandbox, a VM, a file tree), joined by `trace_id`.

    The engine calls `start(rollout)` before the rollout's first turn, with at most `max_live`
    environments alive at once, and `end(rollout)` exactly once after grading, cancellation or a
    failure, for every rollout whose start was sent. `start` raises EnvironmentCallError to exclude
    the rollout; `end` raises it when the end could not be delivered (the implementation keeps it
    for a later retry). The rollout's trace_id, item, split, finish_reason, reward and score are read.
    """

    max_live: int

    async def start(self, rollout: Any) -> EnvironmentStart: ...

    async def end(self, rollout: Any) -> None: ...
