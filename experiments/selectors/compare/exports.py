"""The comparison as CSV rows: the eval summary and the per-item comparison."""

from __future__ import annotations

from collections.abc import Sequence

from ...models import Run
from .evals import SUMMARY_METRICS, eval_summary
from .items import DEFAULT_TOLERANCE, item_comparison


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def summary_csv_rows(*, runs: Sequence[Run], baseline: Run | None) -> list[list[str]]:
    """The eval summary as CSV rows: one row per run, values then deltas against the baseline run."""
    summary = eval_summary(runs=runs, baseline=baseline)
    keys = [key for key, _, _ in SUMMARY_METRICS]
    header = ["run_id", "run", "is_baseline", "status", "final_eval_step", "k"]
    header += keys + [f"delta_{key}" for key in keys]
    names = {run.pk: run for run in runs}
    out = [header]
    for entry in summary["runs"]:
        run = names[entry["run"]]
        out.append(
            [
                str(run.pk),
                run.name,
                "yes" if baseline is not None and run.pk == baseline.pk else "no",
                run.status,
                "" if entry["final_step"] is None else str(entry["final_step"]),
                str(entry["k"]),
                *[_fmt(entry["values"][key]) for key in keys],
                *[_fmt(entry["deltas"][key]) for key in keys],
            ]
        )
    return out


def items_csv_rows(
    *, runs: Sequence[Run], baseline: Run | None, tolerance: float = DEFAULT_TOLERANCE
) -> list:
    """Per-item comparison as CSV rows: the base model's reward, then per run reward, delta, status."""
    comparison = item_comparison(runs=runs, baseline=baseline, sort="item", tolerance=tolerance)
    header = ["item", "prompt", "base_model_reward"]
    for run in runs:
        header += [
            f"{run.name} #{run.pk} reward",
            f"{run.name} #{run.pk} delta",
            f"{run.name} #{run.pk} status",
        ]
    out = [header]
    for row in comparison["rows"]:
        line = [str(row["item"]), row["prompt"], _fmt(row["base"])]
        for run in runs:
            line += [_fmt(row["rewards"][run.pk]), _fmt(row["deltas"][run.pk]), row["statuses"][run.pk] or ""]
        out.append(line)
    return out
