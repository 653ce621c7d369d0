"""Reads about datasets: items in order (keyset pages, search), the error report, chart data."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from ..dataset_format import DEFAULT_MAX_LINE_BYTES, LineError, iter_records
from ..models import Dataset, DatasetItem, Run

ITEM_PAGE_SIZE = 20
MAX_ITEM_PAGE_SIZE = 500


def dataset_items(*, dataset_id: int) -> list[dict[str, Any]]:
    """Every item of a dataset as the uploaded dicts, in file order (what a run trains or evaluates on)."""
    return list(iter_dataset_items(dataset_id=dataset_id))


def iter_dataset_items(*, dataset_id: int, chunk_size: int = 2000) -> Iterator[dict[str, Any]]:
    """The same as dataset_items, streamed from the database in chunks."""
    rows = DatasetItem.objects.filter(dataset_id=dataset_id).order_by("index").values_list("data", flat=True)
    yield from rows.iterator(chunk_size=chunk_size)


@dataclass
class ItemView:
    """One item as the item browser shows it: the chat, the item's own tools, the other fields."""

    index: int
    line_number: int
    message_count: int
    char_count: int
    messages: list[dict[str, Any]]
    tool_names: list[str]
    extra_json: str  # every field but messages and tools, pretty-printed ("" when none)
    data: dict[str, Any] = field(repr=False)


@dataclass
class ItemPage:
    items: list[ItemView]
    next_after: int | None  # pass as `after` for the next page; None on the last page
    previous_before: int | None  # pass as `before` for the previous page; None on the first page
    query: str
    with_tools: bool = False


def dataset_item_page(
    *,
    dataset: Dataset,
    after: int | None = None,
    before: int | None = None,
    query: str = "",
    with_tools: bool = False,
    limit: int = ITEM_PAGE_SIZE,
) -> ItemPage:
    """A keyset page of items ordered by index: those after `after` (or before `before`), optionally
    only items whose JSON text contains `query` (case-insensitive), only items with their own tools."""
    limit = max(1, min(limit, MAX_ITEM_PAGE_SIZE))
    items = DatasetItem.objects.filter(dataset=dataset)
    query = query.strip()
    if query:
        items = items.annotate(text=Cast("data", TextField())).filter(text__icontains=query)
    if with_tools:
        items = items.filter(has_tools=True)
    if before is not None:
        rows = list(items.filter(index__lt=before).order_by("-index")[: limit + 1])
        has_more_before = len(rows) > limit
        rows = rows[:limit][::-1]
        has_more_after = True
    else:
        if after is not None:
            items = items.filter(index__gt=after)
        rows = list(items.order_by("index")[: limit + 1])
        has_more_after = len(rows) > limit
        rows = rows[:limit]
        has_more_before = after is not None and bool(rows)
    if not rows:
        return ItemPage(items=[], next_after=None, previous_before=None, query=query, with_tools=with_tools)
    return ItemPage(
        items=[_item_view(row) for row in rows],
        next_after=rows[-1].index if has_more_after else None,
        previous_before=rows[0].index if has_more_before else None,
        query=query,
        with_tools=with_tools,
    )


def _item_view(item: DatasetItem) -> ItemView:
    data = item.data
    extra = {key: value for key, value in data.items() if key not in ("messages", "tools")}
    return ItemView(
        index=item.index,
        line_number=item.line_number,
        message_count=item.message_count,
        char_count=item.char_count,
        messages=[_chat_message(message) for message in data.get("messages", [])],
        tool_names=[tool["function"]["name"] for tool in data.get("tools") or []],
        extra_json=json.dumps(extra, indent=2, ensure_ascii=False) if extra else "",
        data=data,
    )


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message flattened for display: its text, non-text parts named, tool calls as name(arguments)."""
    content = message.get("content")
    if isinstance(content, list):
        pieces = []
        for part in content:
            text = part.get("text")
            pieces.append(text if isinstance(text, str) else f"[{part.get('type')}]")
        content = "\n".join(pieces)
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append({"name": function.get("name", ""), "arguments": arguments})
    return {
        "role": message.get("role", ""),
        "name": message.get("name") or message.get("tool_call_id") or "",
        "text": content or "",
        "tool_calls": calls,
    }


def runs_using_dataset(*, dataset: Dataset) -> QuerySet[Run]:
    return Run.objects.filter(Q(train_dataset=dataset) | Q(eval_dataset=dataset)).order_by("-created_at")


def dataset_error_report(*, dataset: Dataset) -> Iterator[LineError]:
    """Every error of an invalid upload: the kept file is checked again (the stored list is capped)."""
    path = Path(settings.MEDIA_ROOT) / dataset.file_path if dataset.file_path else None
    if path is None or not path.is_file():
        for error in dataset.errors:
            yield LineError(error["line"], error["error"])
        return
    max_line_bytes = getattr(settings, "RFT_DATASET_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES)
    with open(path, "rb") as stream:
        for record in iter_records(stream, max_line_bytes=max_line_bytes):
            if isinstance(record, LineError):
                yield record


def dataset_error_report_csv(*, dataset: Dataset) -> Iterator[str]:
    """The error report as CSV text (header `line,error`), in chunks of about 64 KB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["line", "error"])
    for error in dataset_error_report(dataset=dataset):
        writer.writerow([error.line_number, error.reason])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def dataset_charts(*, dataset: Dataset) -> dict[str, Any]:
    """Histogram bars (bin centres, counts, bin width) for Plotly, from the stored statistics."""
    stats = dataset.stats or {}
    charts = {}
    for key, title in (("messages", "Messages per item"), ("chars", "Characters of message text per item")):
        histogram = (stats.get(key) or {}).get("histogram") or {"width": 1, "counts": []}
        width = histogram["width"]
        charts[key] = {
            "title": title,
            "x": [index * width + width / 2 for index in range(len(histogram["counts"]))],
            "y": histogram["counts"],
            "width": width,
        }
    return charts


def field_presence(*, dataset: Dataset) -> list[dict[str, Any]]:
    """Each top-level field with how many items carry it (most common first)."""
    stats = dataset.stats or {}
    total = stats.get("item_count") or dataset.item_count or 1
    return [
        {"name": name, "count": count, "percent": round(100 * count / total, 1)}
        for name, count in _most_common(stats.get("fields"))
    ]


def role_counts(*, dataset: Dataset) -> list[tuple[str, int]]:
    """Messages per role, most common first."""
    return _most_common((dataset.stats or {}).get("roles"))


def tool_name_counts(*, dataset: Dataset) -> list[tuple[str, int]]:
    """Items' own tools by name with how many items carry each, most common first."""
    return _most_common((dataset.stats or {}).get("tool_names"))


def _most_common(counts: dict[str, int] | None) -> list[tuple[str, int]]:
    # Sorted here: PostgreSQL's jsonb does not keep the stored key order.
    return sorted((counts or {}).items(), key=lambda pair: (-pair[1], pair[0]))
