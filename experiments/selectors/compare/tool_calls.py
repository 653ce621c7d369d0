"""Tool-call distributions: calls per rollout of the base model against each run's final eval."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ...models import Run
from .evals import eval_rollouts, eval_steps
from .selection import BASE_MODEL_COLOR, run_color


def tool_call_distributions(*, runs: Sequence[Run], baseline: Run | None) -> dict:
    """Tool calls per rollout, the base model's eval (step 0 of the baseline run, else of the first
    run that has one) against each run's final eval; and calls per rollout of each tool.

    `{"parts": [{"label", "run", "color", "step", "rollouts", "histogram": {calls: rollouts},
    "per_tool": {tool: calls per rollout}}], "max_calls": n, "tools": [names]}`
    """
    steps = eval_steps(run_ids=[run.pk for run in runs])
    ordered = ([baseline] if baseline is not None else []) + [r for r in runs if r is not baseline]
    base_run = next((run for run in ordered if steps.get(run.pk, (None,))[0] == 0), None)
    parts_spec = []
    if base_run is not None:
        parts_spec.append(("Base model (step 0)", None, base_run.pk, 0, BASE_MODEL_COLOR))
    for position, run in enumerate(runs):
        if run.pk in steps:
            parts_spec.append((run.name, run.pk, run.pk, steps[run.pk][1], run_color(position)))
    rollouts = eval_rollouts((run_id, step) for _l, _r, run_id, step, _c in parts_spec)
    parts = []
    tools: set[str] = set()
    for label, run_ref, run_id, step, color in parts_spec:
        group = rollouts[(run_id, step)]
        histogram = Counter(r.tool_calls for r in group)
        per_tool = Counter(name for r in group for name in r.tool_call_names)
        tools.update(per_tool)
        parts.append(
            {
                "label": label,
                "run": run_ref,
                "color": color,
                "step": step,
                "rollouts": len(group),
                "histogram": {str(calls): n for calls, n in sorted(histogram.items())},
                "per_tool": {name: per_tool[name] / len(group) for name in sorted(per_tool)} if group else {},
            }
        )
    max_calls = max((int(c) for part in parts for c in part["histogram"]), default=0)
    return {"parts": parts, "max_calls": max_calls, "tools": sorted(tools)}
