"""Reads about graders: one of the user's graders, its runs, and dataset items for the "Run grader" panel."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from ..models import Dataset, DatasetItem, Grader, Run
from ..models.dataset import DatasetStatus
from . import graders_for

PICKER_ITEM_LIMIT = 200


def grader_for(*, user, grader_id: int) -> Grader:
    """The user's grader, or 404."""
    return get_object_or_404(graders_for(user=user), pk=grader_id)


def runs_using_grader(*, grader: Grader, limit: int = 20) -> list[Run]:
    return list(grader.runs.order_by("-created_at")[:limit])


def datasets_for_picker(*, user) -> QuerySet[Dataset]:
    """The user's imported datasets, newest first (an item of one can be graded in the panel)."""
    return Dataset.objects.visible_to(user).filter(status=DatasetStatus.READY, item_count__gt=0)


def _preview(data: dict[str, Any]) -> str:
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                text = content if isinstance(content, str) else str(content)
                return " ".join(text.split())[:90]
    return ""


def dataset_items_for_picker(
    *, user, dataset_id: int, limit: int = PICKER_ITEM_LIMIT
) -> list[dict[str, Any]]:
    """The first items of one of the user's datasets as {id, index, preview} (empty if not theirs)."""
    dataset = datasets_for_picker(user=user).filter(pk=dataset_id).first()
    if dataset is None:
        return []
    rows = DatasetItem.objects.filter(dataset=dataset).order_by("index").values("pk", "index", "data")[:limit]
    return [{"id": row["pk"], "index": row["index"], "preview": _preview(row["data"])} for row in rows]


def dataset_item_data(*, user, item_id: int) -> dict[str, Any] | None:
    """One item's row, if it belongs to one of the user's datasets."""
    item = DatasetItem.objects.visible_to(user).filter(pk=item_id).values_list("data", flat=True).first()
    return item
