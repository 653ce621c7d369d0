"""Per-item comparison. An item's reward is the mean reward of its eval rollouts at a step. A
candidate run's item is *improved* when its final reward is more than `tolerance` above the
reference's, *regressed* when more than `tolerance` below, *unchanged* otherwise. The reference is
the baseline run's final eval; when the candidate is the baseline run itself, its own step 0 (the
base model). Items are matched by their index in the eval set."""

from __future__ import annotations

from collections.abc import Sequence

from ...models import Run, Trajectory
from ..trajectories import rollout_turns, tool_call_summary
from .evals import EvalRollout, eval_rollouts, eval_steps, mean_or_none
from .selection import BASE_MODEL_COLOR, run_color

DEFAULT_TOLERANCE = 0.05
ITEM_STATUSES = ("improved", "regressed", "unchanged")


def classify(delta: float | None, tolerance: float) -> str | None:
    if delta is None:
        return None
    if delta > tolerance:
        return "improved"
    if delta < -tolerance:
        return "regressed"
    return "unchanged"


def _item_rewards(rollouts: Sequence[EvalRollout]) -> dict[int, float | None]:
    by_item: dict[int, list[float]] = {}
    for rollout in rollouts:
        by_item.setdefault(rollout.item_index, [])
        if rollout.reward is not None:
            by_item[rollout.item_index].append(rollout.reward)
    return {item: mean_or_none(values) for item, values in by_item.items()}


def _prompts(run_ids: Sequence[int], step_by_run: dict[int, int]) -> dict[int, str]:
    """The last user message of each eval item (from the first run that has the item)."""
    prompts: dict[int, str] = {}
    for run_id in run_ids:
        if run_id not in step_by_run:
            continue
        rows = (
            Trajectory.objects.filter(
                run_id=run_id, split=Trajectory.Split.EVAL, step=step_by_run[run_id], sample_index=0
            )
            .exclude(item_index__in=list(prompts))
            .values_list("item_index", "messages")
        )
        for item, messages in rows:
            users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
            content = users[-1].get("content", "") if users else ""
            prompts[item] = content if isinstance(content, str) else str(content)
    return prompts


def item_comparison(
    *,
    runs: Sequence[Run],
    baseline: Run | None,
    against: int | None = None,
    status: str | None = None,
    sort: str = "delta",
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """One row per eval item: the base model's reward (step 0 of the baseline run), each run's final
    reward, and each run's delta and status against the reference (see the module docstring).

    `against` picks the candidate run that `status` filters and `sort` ("delta", "-delta", "item")
    orders by (default: the first run that is not the baseline, else the baseline itself).
    Returns `{"candidate", "reference", "tolerance", "counts": {status: n}, "rows": [{"item",
    "prompt", "base", "rewards": {run id: float|None}, "deltas": {...}, "statuses": {...},
    "delta", "status"}]}`.
    """
    run_ids = [run.pk for run in runs]
    steps = eval_steps(run_ids=run_ids)
    candidate = next((run for run in runs if run.pk == against), None)
    if candidate is None:
        candidate = next((run for run in runs if baseline is None or run.pk != baseline.pk), baseline)
    wanted = [(run_id, last) for run_id, (_first, last) in steps.items()]
    if baseline is not None and steps.get(baseline.pk, (None,))[0] == 0:
        wanted.append((baseline.pk, 0))
    rollouts = eval_rollouts(wanted)
    finals = {run_id: _item_rewards(rollouts[(run_id, steps[run_id][1])]) for run_id in steps}
    base = (
        _item_rewards(rollouts[(baseline.pk, 0)])
        if baseline is not None and (baseline.pk, 0) in rollouts
        else {}
    )
    reference_rewards = finals.get(baseline.pk, {}) if baseline is not None else {}
    items = sorted(set(base).union(*[set(rewards) for rewards in finals.values()]))
    prompts = _prompts(run_ids, {run_id: last for run_id, (_f, last) in steps.items()})
    rows = []
    for item in items:
        rewards = {run_id: finals.get(run_id, {}).get(item) for run_id in run_ids}
        deltas, statuses = {}, {}
        for run_id in run_ids:
            if baseline is not None and run_id == baseline.pk:
                reference = base.get(item)  # the baseline run against its own base model
            else:
                reference = reference_rewards.get(item)
            value = rewards[run_id]
            delta = None if value is None or reference is None else value - reference
            deltas[run_id] = delta
            statuses[run_id] = classify(delta, tolerance)
        rows.append(
            {
                "item": item,
                "prompt": prompts.get(item, ""),
                "base": base.get(item),
                "rewards": rewards,
                "deltas": deltas,
                "statuses": statuses,
                "delta": deltas.get(candidate.pk) if candidate else None,
                "status": statuses.get(candidate.pk) if candidate else None,
            }
        )
    counts = {name: sum(1 for row in rows if row["status"] == name) for name in ITEM_STATUSES}
    if status in ITEM_STATUSES:
        rows = [row for row in rows if row["status"] == status]
    if sort in ("delta", "-delta"):
        # Missing deltas last either way; ties by item index.
        sign = 1 if sort == "delta" else -1
        rows.sort(key=lambda row: (row["delta"] is None, sign * (row["delta"] or 0.0), row["item"]))
    else:
        rows.sort(key=lambda row: row["item"])
    reference_label = "base model (step 0)" if candidate is baseline else "baseline run (final eval)"
    return {
        "candidate": candidate.pk if candidate else None,
        "reference": reference_label,
        "tolerance": tolerance,
        "status": status if status in ITEM_STATUSES else None,
        "sort": sort,
        "counts": counts,
        "total": len(items),
        "rows": rows,
    }


def item_rollouts(*, runs: Sequence[Run], baseline: Run | None, item_index: int) -> list[dict]:
    """The eval rollouts of one item: the base model's (step 0 of the baseline run) and each run's
    final eval, with their turns, for a side-by-side view.

    `[{"label", "run" (id or None for the base model), "color", "step", "rollouts": [{"trajectory",
    "turns", "tool_summary"}]}]`
    """
    steps = eval_steps(run_ids=[run.pk for run in runs])
    columns = []
    if baseline is not None and steps.get(baseline.pk, (None,))[0] == 0:
        columns.append(("Base model (step 0)", None, baseline.pk, 0, BASE_MODEL_COLOR))
    for position, run in enumerate(runs):
        if run.pk in steps:
            columns.append((run.name, run.pk, run.pk, steps[run.pk][1], run_color(position)))
    result = []
    for label, run_ref, run_id, step, color in columns:
        rows = Trajectory.objects.filter(
            run_id=run_id, split=Trajectory.Split.EVAL, step=step, item_index=item_index
        ).order_by("sample_index")
        result.append(
            {
                "label": label,
                "run": run_ref,
                "color": color,
                "step": step,
                "rollouts": [
                    {
                        "trajectory": row,
                        "turns": rollout_turns(row.messages),
                        "tool_summary": tool_call_summary(row.tool_call_names),
                    }
                    for row in rows
                ],
            }
        )
    return result
