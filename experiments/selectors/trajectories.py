"""Rollout reads: the filtered table with keyset pagination, one rollout's turns, a GRPO group, and
the distribution of tool calls per rollout.

The table pages by a cursor on (run, step, id) — the order of the (run, step, id) index — so the
next page costs the same at row 50 as at row 1,000,000 (an OFFSET would rescan what it skips).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Min, Q, QuerySet, TextField
from django.db.models.functions import Cast

from ..models import Run, Trajectory

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
FULL_TRACE_ID_LENGTH = len("trace_") + 32

# What the table shows: everything but the conversation itself (which can be megabytes per row).
TABLE_FIELDS = (
    "id",
    "run_id",
    "trace_id",
    "step",
    "split",
    "item_index",
    "group_index",
    "sample_index",
    "reward",
    "score",
    "penalty",
    "advantage",
    "sub_scores",
    "grader_errors",
    "tool_calls",
    "tool_call_names",
    "tool_errors",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "finish_reason",
    "final_answer",
    "flags",
    "created_at",
)


class CursorError(ValueError):
    """A pagination cursor that this server did not hand out."""


@dataclass(frozen=True)
class RolloutFilters:
    """The rollout table's filters; None means "any"."""

    run_id: int | None = None
    step: int | None = None
    split: str | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    has_error: bool | None = None
    tool: str | None = None
    flagged: bool | None = None
    trace_id: str | None = None  # a full trace id, or a fragment of one


@dataclass
class RolloutPage:
    rows: list[Trajectory]
    next_cursor: str | None
    filters: RolloutFilters = field(default_factory=RolloutFilters)


def rollouts_for(*, user) -> QuerySet[Trajectory]:
    return Trajectory.objects.visible_to(user)


def encode_cursor(row: Trajectory) -> str:
    return f"{row.run_id}.{row.step}.{row.pk}"


def decode_cursor(cursor: str) -> tuple[int, int, int]:
    try:
        run_id, step, pk = (int(part) for part in cursor.split("."))
    except ValueError:
        raise CursorError("This cursor is not one the server handed out.") from None
    return run_id, step, pk


def _error_q() -> Q:
    return Q(tool_errors__gt=0) | ~Q(grader_errors=[]) | Q(finish_reason="error")


def _tool_q(tool: str) -> Q:
    if connection.vendor == "postgresql":
        return Q(tool_call_names__contains=[tool])  # jsonb @>
    # SQLite has no JSON containment: match the quoted name in the stored JSON text.
    return Q(tool_names_text__contains=json.dumps(tool))


def filter_rollouts(queryset: QuerySet[Trajectory], filters: RolloutFilters) -> QuerySet[Trajectory]:
    """Apply the table's filters (all of them must hold)."""
    if filters.run_id is not None:
        queryset = queryset.filter(run_id=filters.run_id)
    if filters.step is not None:
        queryset = queryset.filter(step=filters.step)
    if filters.split:
        queryset = queryset.filter(split=filters.split)
    if filters.min_reward is not None:
        queryset = queryset.filter(reward__gte=filters.min_reward)
    if filters.max_reward is not None:
        queryset = queryset.filter(reward__lte=filters.max_reward)
    if filters.has_error is True:
        queryset = queryset.filter(_error_q())
    elif filters.has_error is False:
        queryset = queryset.exclude(_error_q())
    if filters.tool:
        if connection.vendor != "postgresql":
            queryset = queryset.annotate(tool_names_text=Cast("tool_call_names", TextField()))
        queryset = queryset.filter(_tool_q(filters.tool))
    if filters.flagged is True:
        queryset = queryset.exclude(flags=[])
    elif filters.flagged is False:
        queryset = queryset.filter(flags=[])
    if filters.trace_id:
        fragment = filters.trace_id.strip()
        if len(fragment) == FULL_TRACE_ID_LENGTH and fragment.startswith("trace_"):
            queryset = queryset.filter(trace_id=fragment)
        else:
            queryset = queryset.filter(trace_id__contains=fragment)
    return queryset


def _after_cursor(
    queryset: QuerySet[Trajectory], filters: RolloutFilters, position: tuple[int, int, int]
) -> QuerySet[Trajectory]:
    """Rows after `position` in (run, step, id) order, written so the index starts right there.

    Columns the filters pin with an equality (the run, then the step) are left out of the
    comparison: B-tree uses `run = r` as the start of the scan and would otherwise walk every row
    of the run before the cursor, testing a row comparison on each (the OFFSET cost again).
    """
    run_id, step, pk = position
    columns, values = ["run_id", "step", "id"], [run_id, step, pk]
    if filters.run_id is not None:
        if run_id != filters.run_id:
            raise CursorError("This cursor belongs to another run's listing.")
        columns, values = columns[1:], values[1:]
        if filters.step is not None:
            if step != filters.step:
                raise CursorError("This cursor belongs to another step's listing.")
            columns, values = columns[1:], values[1:]
    if len(columns) == 1:
        return queryset.filter(pk__gt=pk)
    table = Trajectory._meta.db_table
    names = ", ".join(f'"{table}"."{column}"' for column in columns)
    placeholders = ", ".join(["%s"] * len(values))
    return queryset.extra(where=[f"({names}) > ({placeholders})"], params=values)


def rollout_page(
    *, user, filters: RolloutFilters, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE
) -> RolloutPage:
    """One page of the rollout table in (run, step, id) order, and the cursor of the next page.

    Raises CursorError for a cursor the server did not hand out.
    """
    limit = max(1, min(int(limit), MAX_PAGE_SIZE))
    queryset = filter_rollouts(rollouts_for(user=user), filters).only(*TABLE_FIELDS)
    if cursor:
        queryset = _after_cursor(queryset, filters, decode_cursor(cursor))
    rows = list(queryset.order_by("run_id", "step", "id")[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return RolloutPage(rows=rows[:limit], next_cursor=next_cursor, filters=filters)


def tool_call_summary(names: list[str]) -> str:
    """["lookup", "lookup", "grep"] -> "lookup ×2, grep" (in order of first call)."""
    counts: dict[str, int] = {}
    for name in names or []:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(name if count == 1 else f"{name} ×{count}" for name, count in counts.items())


def rollout_detail(*, user, trace_id: str) -> Trajectory | None:
    return rollouts_for(user=user).select_related("run", "item").filter(trace_id=trace_id).first()


def rollout_step_range(*, run_id: int, split: str) -> tuple[int, int] | None:
    """The first and the latest step that stored rollouts of `split` (None when there are none).

    Two probes of the (run, split, step) index, however long the run: the pages ask for a step
    with a number field bounded by these, not a list of every step (20,000 of them for a long run).
    """
    bounds = Trajectory.objects.filter(run_id=run_id, split=split).aggregate(
        first=Min("step"), latest=Max("step")
    )
    if bounds["first"] is None:
        return None
    return bounds["first"], bounds["latest"]


def rollout_splits(*, run_id: int) -> list[str]:
    """The splits the run has rollouts of (train first)."""
    return [
        split
        for split in (Trajectory.Split.TRAIN, Trajectory.Split.EVAL)
        if Trajectory.objects.filter(run_id=run_id, split=split).exists()
    ]


def tool_names(*, run: Run) -> list[str]:
    """The tools a run may call (for the "tool used" filter)."""
    return sorted(run.tools.values_list("name", flat=True))


@dataclass
class RolloutGroup:
    run_id: int
    step: int
    split: str
    group_index: int
    item_index: int | None
    rollouts: list[Trajectory]
    reward_mean: float | None
    reward_std: float | None
    best_reward: float | None


def rollout_group(*, user, run_id: int, step: int, split: str, group_index: int) -> RolloutGroup | None:
    """The rollouts of one prompt at one step (a GRPO group), by sample, with their advantages."""
    rollouts = list(
        rollouts_for(user=user)
        .filter(run_id=run_id, step=step, split=split, group_index=group_index)
        .order_by("sample_index", "id")
    )
    if not rollouts:
        return None
    rewards = [r.reward for r in rollouts if r.reward is not None]
    return RolloutGroup(
        run_id=run_id,
        step=step,
        split=split,
        group_index=group_index,
        item_index=rollouts[0].item_index,
        rollouts=rollouts,
        reward_mean=statistics.fmean(rewards) if rewards else None,
        reward_std=statistics.stdev(rewards) if len(rewards) > 1 else (0.0 if rewards else None),
        best_reward=max(rewards) if rewards else None,
    )


def tool_call_histogram(*, run_id: int, step: int, split: str = Trajectory.Split.TRAIN) -> dict[int, int]:
    """{tool calls in a rollout: rollouts} for one step, in ascending order of calls."""
    rows = (
        Trajectory.objects.filter(run_id=run_id, step=step, split=split)
        .values("tool_calls")
        .annotate(rollouts=Count("id"))
        .order_by("tool_calls")
    )
    return {row["tool_calls"]: row["rollouts"] for row in rows}


def tool_call_histograms(
    *, run_id: int, split: str = Trajectory.Split.TRAIN, step: int | None = None
) -> dict:
    """The chosen step's histogram next to the first (baseline) and the latest step of `split`.

    `{"split", "first_step", "latest_step", "baseline": {"step", "counts"}, "latest": {...}, "chosen": {...}}`;
    a part is None when the run has no rollouts of `split` (or the chosen step has none).
    """
    first, latest = rollout_step_range(run_id=run_id, split=split) or (None, None)

    def part(at: int | None) -> dict | None:
        if at is None:
            return None
        counts = tool_call_histogram(run_id=run_id, step=at, split=split)
        return {"step": at, "counts": counts} if counts else None

    return {
        "split": split,
        "first_step": first,
        "latest_step": latest,
        "baseline": part(first),
        "latest": part(latest),
        "chosen": part(step if step is not None else latest),
    }


# ---- one rollout as a chat -------------------------------------------------------------------


@dataclass
class ToolCallView:
    call_id: str
    name: str
    arguments: str  # pretty-printed when it is JSON, else as the model wrote it
    arguments_valid: bool
    result: str | None = None
    latency_ms: float | None = None
    error_type: str | None = None
    error: str | None = None


@dataclass
class TurnView:
    role: str
    content: str
    reasoning: str = ""
    tool_calls: list[ToolCallView] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _pretty_arguments(arguments: Any) -> tuple[str, bool]:
    if not isinstance(arguments, str):
        return json.dumps(arguments, indent=2, ensure_ascii=False), True
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False), True
    except (TypeError, ValueError):
        return arguments, False


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return json.dumps(content, ensure_ascii=False)


def rollout_turns(messages: list[dict]) -> list[TurnView]:
    """The conversation as turns: each assistant tool call carries its result, latency and error.

    Tool messages are folded into the call they answer (by `tool_call_id`); one that answers no
    call is kept as a turn of its own so nothing stored is hidden.
    """
    turns: list[TurnView] = []
    calls_by_id: dict[str, ToolCallView] = {}
    for message in messages or []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", "?"))
        if role == "tool":
            call = calls_by_id.get(str(message.get("tool_call_id", "")))
            if call is not None and call.result is None:
                call.result = _text(message.get("content"))
                call.latency_ms = message.get("latency_ms")
                call.error_type = message.get("error_type")
                call.error = message.get("error")
                continue
        turn = TurnView(
            role=role,
            content=_text(message.get("content")),
            reasoning=_text(message.get("reasoning") or message.get("reasoning_content")),
        )
        if role == "tool":
            turn.extra = {
                key: message[key]
                for key in ("tool_call_id", "name", "latency_ms", "error_type")
                if key in message
            }
        for raw in message.get("tool_calls") or []:
            function = raw.get("function", {}) if isinstance(raw, dict) else {}
            arguments, valid = _pretty_arguments(function.get("arguments", ""))
            call = ToolCallView(
                call_id=str(raw.get("id", "")) if isinstance(raw, dict) else "",
                name=str(function.get("name", "?")),
                arguments=arguments,
                arguments_valid=valid,
            )
            calls_by_id[call.call_id] = call
            turn.tool_calls.append(call)
        turns.append(turn)
    return turns


def rollout_neighbours(rollout: Trajectory) -> tuple[str | None, str | None]:
    """The trace ids before and after this rollout among its step's rollouts of the same split, in
    the order a reader goes through them (group, then sample)."""
    same_step = Trajectory.objects.filter(run_id=rollout.run_id, split=rollout.split, step=rollout.step)
    position = (rollout.group_index, rollout.sample_index, rollout.pk)
    before = (
        same_step.filter(
            Q(group_index__lt=position[0])
            | Q(group_index=position[0], sample_index__lt=position[1])
            | Q(group_index=position[0], sample_index=position[1], pk__lt=position[2])
        )
        .order_by("-group_index", "-sample_index", "-pk")
        .values_list("trace_id", flat=True)
        .first()
    )
    after = (
        same_step.filter(
            Q(group_index__gt=position[0])
            | Q(group_index=position[0], sample_index__gt=position[1])
            | Q(group_index=position[0], sample_index=position[1], pk__gt=position[2])
        )
        .order_by("group_index", "sample_index", "pk")
        .values_list("trace_id", flat=True)
        .first()
    )
    return before, after


def tools_offered(rollout: Trajectory) -> list[dict[str, Any]]:
    """The tool definitions the model was given for this rollout: the item's own `tools`, else the
    run's tools (as registered now: a tool edited since the run shows its new definition)."""
    from trainer.rollout import item_tools

    run_tools = [tool.openai_schema() for tool in rollout.run.tools.all()]
    offered = item_tools(rollout.item.data if rollout.item is not None else {}, run_tools)
    shown = []
    for tool in offered:
        function = tool.get("function", tool)
        shown.append(
            {
                "name": function.get("name", "?"),
                "description": function.get("description", ""),
                "parameters": json.dumps(function.get("parameters", {}), indent=2, ensure_ascii=False),
            }
        )
    return shown


def system_prompts(rollout: Trajectory) -> list[str]:
    """The system (and developer) messages the model was given: from the stored conversation, or
    from the dataset item when the stored conversation starts after them."""
    roles = ("system", "developer")
    stored = [m for m in rollout.messages or [] if isinstance(m, dict) and m.get("role") in roles]
    if not stored and rollout.item is not None:
        stored = [
            m for m in rollout.item.data.get("messages", []) if isinstance(m, dict) and m.get("role") in roles
        ]
    return [_text(message.get("content")) for message in stored]
