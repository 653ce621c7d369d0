"""Synchronous helpers for the "Run grader" panel."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from trainer.graders.spec import GraderContext, build_grader
from trainer.interfaces import GradeResult
from trainer.outbound.client import run_sync


def make_sample(
    *,
    output_text: str,
    output_tools: Sequence[Mapping[str, Any]] = (),
    messages: Sequence[Mapping[str, Any]] | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """A sample as a rollout produces it, from what the panel offers (text and optional tool calls)."""
    tools = [dict(tool) for tool in output_tools]
    if messages is None:
        assistant: dict[str, Any] = {"role": "assistant", "content": output_text}
        messages = [
            *([{"role": "assistant", "content": "", "tool_calls": tools}] if tools else []),
            assistant,
        ]
    return {
        "output_text": output_text,
        "output_tools": tools,
        "messages": [dict(message) for message in messages],
        "trace_id": trace_id or f"trace_{uuid.uuid4().hex}",
    }


def run_grader(
    spec: Mapping[str, Any],
    sample: Mapping[str, Any],
    item: Mapping[str, Any],
    *,
    context: GraderContext | None = None,
    trace_id: str | None = None,
) -> GradeResult:
    """Build (raises GraderSpecError) and run a grader once, from synchronous code."""
    grader = build_grader(spec, context=context)
    trace = trace_id or str(sample.get("trace_id") or f"trace_{uuid.uuid4().hex}")

    async def grade() -> GradeResult:
        try:
            return await grader.grade(sample, item, trace_id=trace)
        finally:
            await grader.aclose()

    return run_sync(grade)
