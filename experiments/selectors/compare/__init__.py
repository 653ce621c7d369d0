"""Reads behind the run comparison: which runs, how their configs differ, how their evals compare.

Everything here takes runs the caller has already filtered through `Run.objects.visible_to(user)`
(`compare_selection` does that from ids in a URL). Eval numbers come from the stored eval rollouts:
the base model's baseline (step 0), and each run's final eval (its last eval step).

One module per part of the page: `selection` (which runs, their colours), `config_diff`, `evals`
(the summary, pass@k), `items` (per-item comparison, one item side by side), `tool_calls`
(distributions), `curves` (overlaid series), `exports` (CSV).
"""

from .config_diff import config_diff
from .curves import compare_metric_keys, overlaid_series
from .evals import SUMMARY_METRICS, EvalRollout, eval_stats, eval_steps, eval_summary, pass_at_k
from .exports import items_csv_rows, summary_csv_rows
from .items import DEFAULT_TOLERANCE, ITEM_STATUSES, classify, item_comparison, item_rollouts
from .selection import (
    BASE_MODEL_COLOR,
    MAX_COMPARE_RUNS,
    RUN_COLORS,
    CompareSelection,
    compare_selection,
    parse_run_ids,
    run_color,
)
from .tool_calls import tool_call_distributions

__all__ = [
    "BASE_MODEL_COLOR",
    "DEFAULT_TOLERANCE",
    "ITEM_STATUSES",
    "MAX_COMPARE_RUNS",
    "RUN_COLORS",
    "SUMMARY_METRICS",
    "CompareSelection",
    "EvalRollout",
    "classify",
    "compare_metric_keys",
    "compare_selection",
    "config_diff",
    "eval_stats",
    "eval_steps",
    "eval_summary",
    "item_comparison",
    "item_rollouts",
    "items_csv_rows",
    "overlaid_series",
    "parse_run_ids",
    "pass_at_k",
    "run_color",
    "summary_csv_rows",
    "tool_call_distributions",
]
