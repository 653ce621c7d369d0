"""What the playground page offers: runs with an adapter, their kept checkpoints, their items."""

from __future__ import annotations

from typing import Any

from ..models import DatasetItem, PlaygroundSession, Run
from .checkpoints import run_checkpoints

MAX_ITEMS_OFFERED = 100


def sessions_for(*, user):
    return PlaygroundSession.objects.visible_to(user).select_related("run", "item")


def user_can_view_session(*, user, session_id: int) -> bool:
    return sessions_for(user=user).filter(pk=session_id).exists()


def playground_choices(*, user, run_id: int | None) -> dict[str, Any]:
    """Runs to choose from; for the chosen run, its kept checkpoints and dataset items."""
    runs = list(
        Run.objects.visible_to(user)
        .filter(checkpoints__isnull=False)
        .distinct()
        .order_by("-created_at")[:200]
    )
    run = next((r for r in runs if r.pk == run_id), runs[0] if runs else None)
    if run is None:
        return {"runs": [], "run": None, "checkpoints": [], "items": []}
    checkpoints = [row for row in run_checkpoints(run=run) if row["available"]]
    items = []
    for dataset_id, split in ((run.eval_dataset_id, "eval"), (run.train_dataset_id, "train")):
        if dataset_id is None:
            continue
        for item in DatasetItem.objects.filter(dataset_id=dataset_id).order_by("index")[:MAX_ITEMS_OFFERED]:
            messages = item.data.get("messages") or []
            last_user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
            items.append({"id": item.pk, "label": f"{split} #{item.index}: {str(last_user)[:80]}"})
    return {"runs": runs, "run": run, "checkpoints": checkpoints, "items": items}
