"""Which runs a comparison shows: ids from the URL, filtered by what the user may see, each with
its colour (the same in every chart, table and export)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ...models import Run
from ..metrics import samples_per_step

MAX_COMPARE_RUNS = 12

# One colour per position in the selection (the same in every chart, table and export); twelve
# distinguishable hues so that a comparison of up to MAX_COMPARE_RUNS runs never repeats one.
RUN_COLORS = (
    "#3b5bdb",
    "#e67700",
    "#2b8a3e",
    "#c92a2a",
    "#7048e8",
    "#0b7285",
    "#d6336c",
    "#5c940d",
    "#862e9c",
    "#495057",
    "#a61e4d",
    "#1098ad",
)
BASE_MODEL_COLOR = "#adb5bd"


def run_color(position: int) -> str:
    return RUN_COLORS[position % len(RUN_COLORS)]


def parse_run_ids(text: str | None) -> list[int]:
    """Run ids from "3,7,9" in the order given, duplicates and junk dropped."""
    ids: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if part.isdigit() and int(part) not in ids:
            ids.append(int(part))
    return ids


@dataclass
class CompareSelection:
    runs: list[Run]
    baseline: Run | None
    missing: list[int]  # asked for, but not found or not the user's
    too_many: list[int] = field(default_factory=list)  # beyond MAX_COMPARE_RUNS, left out

    @property
    def run_ids(self) -> list[int]:
        return [run.pk for run in self.runs]

    def color(self, run: Run) -> str:
        return run_color(self.run_ids.index(run.pk))

    def describe(self) -> list[dict]:
        return [
            {
                "id": run.pk,
                "name": run.name,
                "status": run.status,
                "color": run_color(position),
                "is_baseline": self.baseline is not None and run.pk == self.baseline.pk,
                "last_seq": run.last_seq,
                "samples_per_step": _samples_per_step(run),
            }
            for position, run in enumerate(self.runs)
        ]


def compare_selection(*, user, run_ids: Sequence[int], baseline_id: int | None = None) -> CompareSelection:
    """The runs among `run_ids` that `user` may see, in the order asked; the baseline (default the
    first). Ids the user may not see are reported in `missing`, never loaded."""
    wanted = list(dict.fromkeys(run_ids))
    too_many = wanted[MAX_COMPARE_RUNS:]
    wanted = wanted[:MAX_COMPARE_RUNS]
    found = {
        run.pk: run
        for run in Run.objects.visible_to(user)
        .filter(pk__in=wanted)
        .select_related("train_dataset", "eval_dataset", "grader")
        .prefetch_related("tools")
    }
    runs = [found[pk] for pk in wanted if pk in found]
    missing = [pk for pk in wanted if pk not in found]
    baseline = next((run for run in runs if run.pk == baseline_id), runs[0] if runs else None)
    return CompareSelection(runs=runs, baseline=baseline, missing=missing, too_many=too_many)


def _samples_per_step(run: Run) -> int:
    return samples_per_step(run.config or {})
