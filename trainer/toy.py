"""The toy task: "What is the secret colour?" — answerable only by calling the `peek` tool.

Each item hides one of four colours in its `answer` field; the `peek` tool returns it (a tool server
reads it from the `item` that the wire format sends along). Answering without the tool is a 1-in-4
guess, so reward above 0.25 needs the tool. The demo, the learning test and the benchmarks use it.

A randomly initialised model almost never writes a well-formed tool call, so `warm_start_toy_model`
first fine-tunes the tiny model for a few seconds on demonstration rollouts (`trainer.warm_start`),
a third of which call the tool and copy its answer, the rest guessing without it. RL then has
signal to work with.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.interfaces import GradeResult, ToolCall, ToolResult

logger = logging.getLogger(__name__)

COLOURS = ("red", "blue", "green", "gold")
TOY_SYSTEM_PROMPT = "Answer with one colour."
TOY_QUESTION = "What is the secret colour?"
TOY_TOOL_NAME = "peek"
TOY_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": TOY_TOOL_NAME,
            "description": "Shows the secret colour.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
# The tool shows a "swatch": the colour on several lines. A tiny model learns to copy a token that
# fills a good part of its context far faster than one it must single out by attention.
SWATCH_LINES = 8
_WARM_MARKER = ".rftweb-toy-warm-complete"


def toy_items(*, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "system", "content": TOY_SYSTEM_PROMPT},
                {"role": "user", "content": TOY_QUESTION},
            ],
            "answer": rng.choice(COLOURS),
        }
        for _ in range(count)
    ]


def toy_tool_output(*, name: str, item: Mapping[str, Any]) -> tuple[int, str]:
    """(HTTP status, body text) the toy tool answers; a tool server and the local executor share it."""
    if name != TOY_TOOL_NAME:
        return 404, f"no tool named {name}"
    return 200, swatch(str(item.get("answer", "")))


def swatch(colour: str) -> str:
    return "\n".join([colour] * SWATCH_LINES)


class ToyToolExecutor:
    """In-process executor of the toy tool (the demo without a server, unit tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ToolCall]] = []

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]:
        results = []
        for call in calls:
            self.calls.append((trace_id, call))
            status, body = toy_tool_output(name=call.name, item=item)
            ok = status < 400
            results.append(
                ToolResult(
                    call_id=call.call_id,
                    name=call.name,
                    output=body,
                    ok=ok,
                    error_type=None if ok else "http_4xx",
                    status_code=status,
                    latency_ms=0.01,
                )
            )
        return results


class ToyGrader:
    """1.0 when the final answer is the secret colour (case and surrounding space ignored), else 0."""

    async def grade(
        self, sample: Mapping[str, Any], item: Mapping[str, Any], *, trace_id: str
    ) -> GradeResult:
        answer = str(sample.get("output_text", "")).strip().lower().rstrip(".")
        score = 1.0 if answer == str(item.get("answer", "")).lower() else 0.0
        return GradeResult(score=score, sub_scores={"exact": score})


def demonstration_chats(*, count: int, seed: int) -> list[list[dict[str, Any]]]:
    """A third right (call the tool, copy its answer), two thirds wrong (guess without the tool)."""
    rng = random.Random(seed)
    chats = []
    for index in range(count):
        colour = rng.choice(COLOURS)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": TOY_SYSTEM_PROMPT},
            {"role": "user", "content": TOY_QUESTION},
        ]
        if index % 3 == 0:
            messages += [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_0",
                            "type": "function",
                            "function": {"name": TOY_TOOL_NAME, "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_0", "content": swatch(colour)},
                {"role": "assistant", "content": colour},
            ]
        else:
            messages.append({"role": "assistant", "content": rng.choice(COLOURS)})
        chats.append(messages)
    return chats


def warm_start_toy_model(
    directory: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    steps: int = 500,
    seed: int = 0,
) -> Path:
    """Builds the tiny model (if needed) and fine-tunes it on the demonstrations; cached in `directory`."""
    from trainer.tiny import build_tiny_model
    from trainer.warm_start import warm_start_model

    target = Path(directory)
    base = Path(base_dir) if base_dir else target.parent / f"{target.name}-base"
    build_tiny_model(base, seed=seed)
    return warm_start_model(
        target,
        base=base,
        chats=demonstration_chats(count=64, seed=seed),
        tools=TOY_TOOLS,
        steps=steps,
        seed=seed,
        marker=_WARM_MARKER,
    )
