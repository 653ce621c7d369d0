"""The streaming JSONL parser/validator on real bytes: every kind of bad line, by line number."""

import io
import tracemalloc

import pytest
from dataset_files import GREP_TOOL, item, jsonl, line, valid_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.dataset_format import LineError, ParsedItem, iter_records, parse_line, scan


def records(data: bytes, **kwargs):
    return list(iter_records(io.BytesIO(data), **kwargs))


def errors_of(data: bytes, **kwargs):
    return [(r.line_number, r.reason) for r in records(data, **kwargs) if isinstance(r, LineError)]


def test_valid_file_counts_items_and_keeps_order():
    result = scan(io.BytesIO(valid_file(25, tools=[GREP_TOOL])))
    assert result.ok and result.item_count == 25 and result.errors == []
    parsed = records(valid_file(3))
    assert [r.line_number for r in parsed] == [1, 2, 3]
    assert [r.data["answer"] for r in parsed] == ["0", "1", "2"]
    assert parsed[0].message_count == 2
    assert parsed[0].char_count == len("You find files.") + len("Question 0: which files compute totals?")


def test_bom_crlf_and_blank_lines_are_accepted():
    body = jsonl([item(0), b"", b"   ", item(1), b"", item(2)], newline=b"\r\n")
    parsed = records(b"\xef\xbb\xbf" + body + b"\r\n\n")
    assert all(isinstance(r, ParsedItem) for r in parsed)
    assert [r.line_number for r in parsed] == [1, 4, 6]
    assert not parsed[0].raw.startswith(b"\xef\xbb\xbf") and not parsed[0].raw.endswith(b"\r")


def test_last_line_without_newline_is_read():
    assert [r.line_number for r in records(line(item(0)) + b"\n" + line(item(1)))] == [1, 2]


@pytest.mark.parametrize(
    ("bad_line", "reason_part"),
    [
        (b'{"messages": [', "invalid JSON"),
        (b"[1, 2, 3]", "not a JSON object (got an array)"),
        (b'"just a string"', "not a JSON object (got a string)"),
        (b'{"prompt": "hi"}', 'missing "messages"'),
        (b'{"messages": []}', '"messages" is empty'),
        (b'{"messages": "hi"}', '"messages" must be a list'),
        (b'{"messages": [{"role": "bot", "content": "x"}]}', 'role "bot" is not one of'),
        (b'{"messages": [{"content": "x"}]}', 'has no "role"'),
        (b'{"messages": [{"role": "user", "content": 5}]}', "content must be a string or a list"),
        (b'{"messages": [{"role": "user"}]}', 'has no "content"'),
        (
            b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            'the last message must be from the user (it is from "assistant")',
        ),
        (b'{"messages": [{"role": "user", "content": "q"}], "tools": {}}', '"tools" must be a list'),
        (
            b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"name": "grep"}]}',
            'tools[0] must be {"type": "function"',
        ),
        (
            b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": '
            b'{"name": "grep", "parameters": {"type": "object", "properties": {"p": {"type": "strin"}}}}}]}',
            "tools[0].function.parameters is not valid JSON Schema",
        ),
        (
            b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": '
            b'{"name": "grep", "parameters": {"type": "object", "required": "pattern"}}}]}',
            "is not valid JSON Schema",
        ),
        (
            b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": '
            b'{"name": "has space", "parameters": {"type": "object"}}}]}',
            "function.name must be",
        ),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not valid UTF-8 (byte 0xe9"),
        (b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}', "NUL character"),
    ],
)
def test_each_kind_of_bad_line_is_reported_with_its_line_number(bad_line, reason_part):
    data = jsonl([item(0), item(1), bad_line, item(3)])
    result = scan(io.BytesIO(data))
    assert result.item_count == 3
    assert result.error_count == 1
    error = result.errors[0]
    assert error.line_number == 3
    assert reason_part in error.reason


def test_over_long_line_is_reported_and_not_kept_whole_in_memory():
    long_item = item(1, padding="x" * 5000)
    data = jsonl([item(0), long_item, item(2)])
    # A tiny read size forces the over-long line to span many chunks.
    found = list(iter_records(io.BytesIO(data), max_line_bytes=1000, chunk_size=64))
    assert [(r.line_number, type(r).__name__) for r in found] == [
        (1, "ParsedItem"),
        (2, "LineError"),
        (3, "ParsedItem"),
    ]
    assert found[1].reason == "line too long (over 1,000 bytes)"


class EndlessLine(io.RawIOBase):
    """A stream of one huge line (then a good one), produced on the fly so that the test holds none of it."""

    def __init__(self, total: int):
        self.left = total

    def readable(self):
        return True

    def read(self, size=-1):
        if self.left <= 0:
            return b"" if self.left < 0 else self._tail()
        size = min(size, self.left)
        self.left -= size
        return b"x" * size

    def _tail(self):
        self.left = -1
        return b"\n" + line(item(1)) + b"\n"


def test_an_over_long_line_is_skipped_in_constant_memory():
    tracemalloc.start()
    found = list(iter_records(EndlessLine(40 * 1024 * 1024), max_line_bytes=1024 * 1024))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(r.line_number, type(r).__name__) for r in found] == [(1, "LineError"), (2, "ParsedItem")]
    assert peak < 6 * 1024 * 1024  # a few read chunks, not the 40 MB line


def test_a_utf16_file_is_named_as_such():
    data = jsonl([item(0), item(1)]).decode().encode("utf-16")
    assert errors_of(data)[0] == (1, "the file is UTF-16; save it as UTF-8")


def test_every_error_is_counted_but_the_list_is_capped():
    data = jsonl([b"nope"] * 30 + [item(0)])
    result = scan(io.BytesIO(data), max_errors=10)
    assert result.error_count == 30 and len(result.errors) == 10
    assert [e.line_number for e in result.errors] == list(range(1, 11))


def test_assistant_tool_calls_and_content_parts_are_accepted():
    row = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Total?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "2"},
            {"role": "user", "content": [{"type": "input_text", "text": "And doubled?"}]},
        ]
    }
    parsed = parse_line(line(row), 7)
    assert isinstance(parsed, ParsedItem), parsed
    assert parsed.message_count == 5 and parsed.char_count == len("Be brief.") + len("Total?") + 1 + len(
        "And doubled?"
    )


def test_statistics_are_incremental_histograms_and_counters():
    rows = [item(i, tools=[GREP_TOOL]) if i % 4 == 0 else item(i) for i in range(40)]
    rows.append({"messages": [{"role": "user", "content": "x" * 20000}], "extra": 1})
    stats = scan(io.BytesIO(jsonl(rows))).stats.as_dict()
    assert stats["item_count"] == 41
    assert stats["fields"] == {"messages": 41, "answer": 40, "tools": 10, "extra": 1}
    assert stats["items_with_tools"] == 10 and stats["tool_names"] == {"grep": 10}
    assert stats["roles"] == {"user": 41, "system": 40}
    assert stats["messages"]["histogram"] == {"width": 1, "counts": [0, 1, 40]}
    chars = stats["chars"]["histogram"]
    assert sum(chars["counts"]) == 41 and len(chars["counts"]) <= 40 and chars["width"] * 40 > 20000
    assert stats["token_estimate"]["total"] == stats["chars"]["total"] // 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from(
                [b"{", b"}", b"[", b"\n", b"\r\n", b'"', b"\xef\xbb\xbf", b"\\u0000", b"\xff", b"null"]
            ),
            st.just(line(item(0))),
            st.just(
                b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {"a": {"pattern": "("}}}}}]}'
            ),
        ),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_arbitrary_bytes_give_only_items_or_line_numbered_errors(pieces, chunk_size):
    data = b"".join(pieces)
    line_count = data.count(b"\n") + 1
    for record in iter_records(io.BytesIO(data), max_line_bytes=300, chunk_size=chunk_size):
        assert isinstance(record, (ParsedItem, LineError))
        assert 1 <= record.line_number <= line_count
        if isinstance(record, LineError):
            assert record.reason
        else:
            assert isinstance(record.data, dict) and record.data["messages"][-1]["role"] == "user"


@settings(max_examples=80, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=30,
    )
)
def test_arbitrary_json_values_in_known_fields_never_crash(value):
    for row in (
        {"messages": value},
        {"messages": [{"role": "user", "content": value}]},
        {"messages": [value]},
        {"messages": [{"role": "user", "content": "q"}], "tools": value},
        {"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": value}]},
        {
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": value}}],
        },
    ):
        assert isinstance(parse_line(line(row), 1), (ParsedItem, LineError))
