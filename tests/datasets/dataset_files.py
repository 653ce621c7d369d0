"""Builders for dataset test files (bytes), shared by the dataset tests."""

from __future__ import annotations

import json

GREP_TOOL = {
    "type": "function",
    "function": {
        "name": "grep",
        "description": "Search the repository.",
        "parameters": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}},
            "required": ["pattern"],
        },
    },
}


def item(index: int, **extra) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You find files."},
            {"role": "user", "content": f"Question {index}: which files compute totals?"},
        ],
        "answer": str(index),
        **extra,
    }


def line(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def jsonl(rows, *, newline: bytes = b"\n") -> bytes:
    """Rows (dicts, or bytes taken as a raw line) joined into a JSONL file."""
    return newline.join(row if isinstance(row, bytes) else line(row) for row in rows) + newline


def valid_file(count: int, **extra) -> bytes:
    return jsonl(item(index, **extra) for index in range(count))
