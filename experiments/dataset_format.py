"""The dataset JSONL format: a streaming, line-by-line parser and validator (no Django here).

One JSON object per line (see docs/PRODUCT.md): `messages` is required and its last message is from
the user; optional `tools` are OpenAI function schemas whose `parameters` must be valid JSON Schema
(the flat Responses shape is accepted and stored in the Chat Completions shape);
every other field is free-form. A UTF-8 BOM, CRLF line ends and blank lines are accepted.

`iter_records(stream)` reads a binary file object in chunks (the whole file is never in memory) and
yields, in file order, a `ParsedItem` for every good line and a `LineError` (1-based line number and
a short reason) for every bad one. It never raises for bad input, whatever the bytes are.
`scan(stream)` runs it to the end and returns the counts, the first errors and the statistics.
"""

from __future__ import annotations

import functools
import operator
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_ERRORS = 1000
READ_CHUNK_BYTES = 1024 * 1024
ROLES = ("system", "developer", "user", "assistant", "tool")
# Deeper nesting than this is refused: SQLite's JSON functions stop at 1000 levels (orjson at 1024).
MAX_NESTING = 900
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
_ROLE_SET = frozenset(ROLES)
_BOM = b"\xef\xbb\xbf"


class ParsedItem(NamedTuple):
    line_number: int  # 1-based line in the file
    raw: bytes  # the line's JSON text (without BOM and line end): what is stored
    data: dict[str, Any]
    message_count: int
    char_count: int  # characters of message text (the basis of the token estimate)
    has_tools: bool
    tools_key: bytes | None = None  # the item's tools as canonical JSON (None without tools)


class LineError(NamedTuple):
    line_number: int
    reason: str


def iter_lines(
    stream: IO[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, chunk_size: int = READ_CHUNK_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for every line, the line end (LF or CRLF) removed; None for an over-long line.

    An over-long line is skipped up to its end without being kept in memory.
    """
    line_number = 0
    pending: list[bytes] = []  # the start of a line that continues in the next chunk
    pending_size = 0
    overlong = False
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        parts = chunk.split(b"\n")
        tail = parts.pop()  # after the chunk's last newline: an unfinished line (or b"")
        for part in parts:
            line_number += 1
            if overlong:
                overlong = False
                yield line_number, None
                continue
            if pending:
                pending.append(part)
                part = b"".join(pending)
                pending.clear()
                pending_size = 0
            if part.endswith(b"\r"):
                part = part[:-1]
            yield line_number, (part if len(part) <= max_line_bytes else None)
        if overlong or not tail:
            continue
        pending.append(tail)
        pending_size += len(tail)
        if pending_size > max_line_bytes + 1:  # +1: a CR that the next chunk's LF may end
            overlong = True
            pending.clear()
            pending_size = 0
    if overlong:
        yield line_number + 1, None
    elif pending:
        last = b"".join(pending)
        if last.endswith(b"\r"):
            last = last[:-1]
        yield line_number + 1, (last if len(last) <= max_line_bytes else None)


def iter_records(
    stream: IO[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, chunk_size: int = READ_CHUNK_BYTES
) -> Iterator[ParsedItem | LineError]:
    """A ParsedItem or a LineError for every non-blank line, in order."""
    for line_number, line in iter_lines(stream, max_line_bytes=max_line_bytes, chunk_size=chunk_size):
        if line is None:
            yield LineError(line_number, f"line too long (over {max_line_bytes:,} bytes)")
            continue
        if line_number == 1 and line.startswith(_BOM):
            line = line[3:]
        if not line or line.isspace():
            continue
        yield parse_line(line, line_number)


def is_blank_line(line_number: int, line: bytes | None) -> bool:
    """Whether iter_records skips this line (empty, only whitespace, or only the BOM on line 1)."""
    if line is None:
        return False
    if line_number == 1 and line.startswith(_BOM):
        line = line[3:]
    return not line or line.isspace()


def parse_line(line: bytes, line_number: int) -> ParsedItem | LineError:
    """Parse and check one line (no line end)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if line_number == 1 and line.startswith((b"\xff\xfe", b"\xfe\xff")):
            return LineError(line_number, "the file is UTF-16; save it as UTF-8")
        return LineError(line_number, _json_error_reason(line, exc))
    if not isinstance(data, dict):
        return LineError(line_number, f"not a JSON object (got {_json_type(data)})")
    try:
        return _check_item(data, line, line_number)
    except _Invalid as exc:
        return LineError(line_number, str(exc))


class _Invalid(Exception):
    pass


def _check_item(data: dict[str, Any], line: bytes, line_number: int) -> ParsedItem:
    # Nesting this deep needs two bytes a level, so most lines skip the count.
    if (
        len(line) > 2 * MAX_NESTING
        and line.count(b"[") + line.count(b"{") > MAX_NESTING
        and _depth(data) > MAX_NESTING
    ):
        raise _Invalid(f"nested deeper than {MAX_NESTING} levels")
    if b"\\u0000" in line and _has_nul(data):
        raise _Invalid("contains a NUL character (\\u0000), which cannot be stored")
    messages = data.get("messages")
    if messages is None:
        raise _Invalid('missing "messages"')
    if not isinstance(messages, list):
        raise _Invalid(f'"messages" must be a list (got {_json_type(messages)})')
    if not messages:
        raise _Invalid('"messages" is empty')
    char_count = 0
    for position, message in enumerate(messages):
        char_count += _check_message(message, position)
    last_role = messages[-1]["role"]
    if last_role != "user":
        raise _Invalid(f'the last message must be from the user (it is from "{last_role}")')
    tools = data.get("tools")
    key = None
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid(f'"tools" must be a list (got {_json_type(tools)})')
        normalised = [_chat_completions_tool(tool) for tool in tools]
        if normalised != tools:
            # Stored in the one shape the rest of the app reads (the line is re-serialised for that).
            tools = data["tools"] = normalised
            line = orjson.dumps(data)
        try:
            key = orjson.dumps(tools, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            raise _Invalid('"tools" is nested too deeply') from None
        problem = _tools_problem(key)
        if problem:
            raise _Invalid(problem)
    return ParsedItem(line_number, line, data, len(messages), char_count, key is not None, key)


def _check_message(message: Any, position: int) -> int:
    """Raise _Invalid for a bad message; return how many characters of text it holds."""
    where = f"messages[{position}]"
    if not isinstance(message, dict):
        raise _Invalid(f"{where} must be an object (got {_json_type(message)})")
    role = message.get("role")
    if not isinstance(role, str):
        raise _Invalid(f'{where} has no "role"' if role is None else f"{where}.role must be a string")
    if role not in _ROLE_SET:
        raise _Invalid(f'{where}.role "{_clip(role)}" is not one of {", ".join(ROLES)}')
    content = message.get("content")
    chars = 0
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        for index, part in enumerate(content):
            chars += _check_content_part(part, f"{where}.content[{index}]")
    elif content is None:
        if role != "assistant" or not message.get("tool_calls"):
            if "content" not in message:
                raise _Invalid(f'{where} ({role}) has no "content"')
            raise _Invalid(f"{where}.content may be null only in an assistant message with tool_calls")
    else:
        raise _Invalid(
            f"{where}.content must be a string or a list of content parts (got {_json_type(content)})"
        )
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            raise _Invalid(f"{where}: only assistant messages carry tool_calls")
        if not isinstance(tool_calls, list):
            raise _Invalid(f"{where}.tool_calls must be a list")
        for index, call in enumerate(tool_calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _Invalid(
                    f'{where}.tool_calls[{index}] must be {{"function": {{"name": ..., "arguments": ...}}}}'
                )
            arguments = function.get("arguments")
            if arguments is not None and not isinstance(arguments, (str, dict)):
                raise _Invalid(f"{where}.tool_calls[{index}].function.arguments must be a JSON string")
    return chars


def _check_content_part(part: Any, where: str) -> int:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _Invalid(f'{where} must be an object with a "type"')
    if part["type"] in TEXT_PART_TYPES:
        text = part.get("text")
        if not isinstance(text, str):
            raise _Invalid(f'{where} ({part["type"]}) needs a string "text"')
        return len(text)
    return 0


_FUNCTION_KEYS = ("name", "description", "parameters", "strict")


def _chat_completions_tool(tool: Any) -> Any:
    """A tool in the flat Responses shape ({"type": "function", "name", "parameters", ...}) in the
    Chat Completions shape ({"type": "function", "function": {...}}); anything else as it is."""
    if (
        isinstance(tool, dict)
        and tool.get("type") == "function"
        and "function" not in tool
        and "name" in tool
    ):
        return {"type": "function", "function": {key: tool[key] for key in _FUNCTION_KEYS if key in tool}}
    return tool


@functools.lru_cache(maxsize=4096)
def _tools_problem(tools_json: bytes) -> str | None:
    """What is wrong with a `tools` list, or None. Cached: most files repeat the same tools on every line."""
    tools = orjson.loads(tools_json)
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            return (
                f'{where} must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}} '
                'or {"type": "function", "name": ..., "parameters": ...}'
            )
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            return f"{where}.function.name must be 1-64 letters, digits, _ or -"
        if name in names:
            return f'{where}: the tool name "{name}" appears twice'
        names.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            return f"{where}.function.description must be a string"
        if "parameters" not in function:
            continue
        parameters = function["parameters"]
        if not isinstance(parameters, dict):
            return f"{where}.function.parameters must be a JSON Schema object (got {_json_type(parameters)})"
        if parameters.get("type", "object") != "object":
            return f'{where}.function.parameters must describe an object ("type": "object")'
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            path = "".join(f"[{part!r}]" for part in exc.path)
            return f"{where}.function.parameters is not valid JSON Schema: {_clip(exc.message, 120)} at {path or 'top'}"
        except Exception as exc:  # e.g. RecursionError on absurd nesting: still a bad schema, never a crash
            return f"{where}.function.parameters could not be checked: {exc.__class__.__name__}"
    return None


def _json_error_reason(line: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte 0x{line[bad.start]:02x} at byte {bad.start + 1})"
    message = exc.msg.split(": line ", 1)[0]
    return f"invalid JSON: {_clip(message, 100)} (column {exc.colno})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node)
    return deepest


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


# --- statistics, computed incrementally (memory does not grow with the number of items) ------------


class Histogram:
    """Counts in `bins` equal bins starting at 0; the bin width doubles (neighbours merge) as values grow."""

    def __init__(self, *, bins: int = 40, width: int = 1) -> None:
        self.width = width
        self.counts = [0] * bins

    def add(self, value: int) -> None:
        slot = value // self.width
        while slot >= len(self.counts):
            self.counts = [a + b for a, b in zip(self.counts[::2], self.counts[1::2], strict=True)] + [0] * (
                len(self.counts) // 2
            )
            self.width *= 2
            slot = value // self.width
        self.counts[slot] += 1

    def as_dict(self) -> dict[str, Any]:
        last = max((i for i, count in enumerate(self.counts) if count), default=-1)
        return {"width": self.width, "counts": self.counts[: last + 1]}


MAX_TRACKED_NAMES = 200  # distinct field / tool names counted one by one; the rest are lumped together


MAX_DISTINCT_SHAPES = 1000  # distinct field / tool sets counted whole before being folded into names
_role_of = operator.itemgetter("role")


class DatasetStats:
    """Field presence, roles, message-count and length distributions and a token estimate.

    Per item the work is small: the item's field names and roles (and its tools) are counted as one
    key, and keys are only expanded into per-name counts when the distinct keys pile up or at the end.
    """

    def __init__(self) -> None:
        self.item_count = 0
        self.message_total = 0
        self.message_min = sys.maxsize
        self.message_max = 0
        self.char_total = 0
        self.char_min = sys.maxsize
        self.char_max = 0
        self.items_with_tools = 0
        self.fields: Counter = Counter()
        self.roles: Counter = Counter()
        self.tool_names: Counter = Counter()
        self.message_histogram = Histogram(width=1)
        self.char_histogram = Histogram(width=64)
        # (field names, roles in order) -> items: expanded into fields/roles by _fold
        self._shapes: Counter = Counter()
        self._tool_sets: Counter = Counter()

    def add(self, item: ParsedItem) -> None:
        self.item_count += 1
        messages, chars = item.message_count, item.char_count
        self.message_total += messages
        self.char_total += chars
        if messages > self.message_max:
            self.message_max = messages
        if messages < self.message_min:
            self.message_min = messages
        if chars > self.char_max:
            self.char_max = chars
        if chars < self.char_min:
            self.char_min = chars
        self.message_histogram.add(messages)
        self.char_histogram.add(chars)
        data = item.data
        self._shapes[tuple(data), tuple(map(_role_of, data["messages"]))] += 1
        if item.tools_key is not None:
            self.items_with_tools += 1
            self._tool_sets[item.tools_key] += 1
        if len(self._shapes) > MAX_DISTINCT_SHAPES or len(self._tool_sets) > MAX_DISTINCT_SHAPES:
            self._fold()

    def _fold(self) -> None:
        for (names, roles), count in self._shapes.items():
            _count_names(self.fields, names, count)
            for role in roles:
                self.roles[role] += count
        for key, count in self._tool_sets.items():
            _count_names(self.tool_names, [tool["function"]["name"] for tool in orjson.loads(key)], count)
        self._shapes.clear()
        self._tool_sets.clear()

    def as_dict(self) -> dict[str, Any]:
        self._fold()
        count = self.item_count or 1
        return {
            "item_count": self.item_count,
            "fields": dict(self.fields.most_common()),
            "roles": dict(self.roles.most_common()),
            "items_with_tools": self.items_with_tools,
            "tool_names": dict(self.tool_names.most_common()),
            "messages": {
                "total": self.message_total,
                "min": self.message_min if self.item_count else 0,
                "max": self.message_max,
                "mean": round(self.message_total / count, 2),
                "histogram": self.message_histogram.as_dict(),
            },
            "chars": {
                "total": self.char_total,
                "min": self.char_min if self.item_count else 0,
                "max": self.char_max,
                "mean": round(self.char_total / count, 1),
                "histogram": self.char_histogram.as_dict(),
            },
            # Roughly four characters per token for English text and code.
            "token_estimate": {"total": self.char_total // 4, "mean": round(self.char_total / count / 4, 1)},
        }


def _count_names(counter: Counter, names, count: int = 1) -> None:
    for name in names:
        if name in counter or len(counter) < MAX_TRACKED_NAMES:
            counter[name] += count
        else:
            counter["(other)"] += count


@dataclass
class ScanResult:
    item_count: int = 0
    errors: list[LineError] = field(default_factory=list)  # the first `max_errors`
    error_count: int = 0  # all of them
    stats: DatasetStats = field(default_factory=DatasetStats)

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def scan(
    stream: IO[bytes],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_errors: int = DEFAULT_MAX_ERRORS,
    on_item: Callable[[ParsedItem], None] | None = None,
) -> ScanResult:
    """Read the whole stream: count items, keep the first errors, count all, gather statistics."""
    result = ScanResult()
    for record in iter_records(stream, max_line_bytes=max_line_bytes):
        if isinstance(record, LineError):
            result.error_count += 1
            if len(result.errors) < max_errors:
                result.errors.append(record)
            continue
        result.item_count += 1
        result.stats.add(record)
        if on_item is not None:
            on_item(record)
    return result
