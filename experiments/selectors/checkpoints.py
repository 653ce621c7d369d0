"""A run's checkpoints as a user picks from them: eval metrics, which are the best, which are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db.models import Prefetch

from ..models import Checkpoint, Run

EVAL_REWARD = "eval/reward"


def _eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        key.removeprefix("eval/"): float(value)
        for key, value in sorted(metrics.items())
        # The eval reward and pass@k: what a user picks a checkpoint by.
        if (key == EVAL_REWARD or key.startswith("eval/pass@")) and isinstance(value, int | float)
    }


def stored_checkpoints(*, run: Run) -> list[Checkpoint]:
    """The run's checkpoint rows, newest first (read once for a page that needs them several times)."""
    return list(Checkpoint.objects.filter(run=run).order_by("-step"))


def run_checkpoints(*, run: Run, checkpoints: list[Checkpoint] | None = None) -> list[dict[str, Any]]:
    """Newest first: step, train reward, eval metrics, whether the adapter is still on disk, and the
    rank by eval reward among the kept ones (1 = best) when the checkpoint was evaluated.
    `checkpoints`: the rows as stored_checkpoints read them, when the caller has them already."""
    rows = []
    for checkpoint in stored_checkpoints(run=run) if checkpoints is None else checkpoints:
        metrics = checkpoint.metrics or {}
        rows.append(
            {
                "step": checkpoint.step,
                "reward": metrics.get("reward"),
                "eval_reward": metrics.get(EVAL_REWARD),
                "eval": _eval_metrics(metrics),
                "created_at": checkpoint.created_at,
                "available": (Path(checkpoint.path) / "adapter_config.json").is_file(),
                "eval_rank": None,
            }
        )
    ranked = sorted(
        (row for row in rows if row["available"] and row["eval_reward"] is not None),
        key=lambda row: (row["eval_reward"], row["step"]),
        reverse=True,
    )
    for rank, row in enumerate(ranked, start=1):
        row["eval_rank"] = rank
    return rows


def run_lineage(*, run: Run) -> dict[str, Any]:
    """The run's parent (and the step it forked from) and its forks, visible to the run's owner.
    Forks prefetched into `run.prefetched_forks` (with_fork_ids) are used as they are."""
    if hasattr(run, "prefetched_forks"):
        forks = [fork for fork in run.prefetched_forks if fork.owner_id == run.owner_id]
    else:
        forks = list(Run.objects.filter(parent=run, owner_id=run.owner_id).order_by("created_at"))
    parent = run.parent if run.parent_id and run.parent and run.parent.owner_id == run.owner_id else None
    return {"parent": parent, "parent_step": run.parent_step, "forks": forks}


def with_forks(runs):
    """`runs` (a queryset) with each run's forks fetched in one query for all (run_lineage uses them)."""
    return runs.prefetch_related(
        Prefetch(
            "forks",
            queryset=Run.objects.only("pk", "owner_id", "parent_id", "created_at").order_by("created_at"),
            to_attr="prefetched_forks",
        )
    )
