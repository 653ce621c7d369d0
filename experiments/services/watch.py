"""The reward-hacking watch's database side: a run's baseline (read once per attempt and kept in
this process) and the loading around `experiments.watch.flags.watch_step` for a step that
`record_step` is about to store. The rules themselves are pure: `experiments/watch/`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ..watch.flags import Baseline, StepWatch, watch_step
from ..watch.rules import watch_config_for

# A run's baseline, once read from stored rollouts, stays what it is for the rest of the attempt
# (a resumed attempt may have discarded and re-recorded those steps): kept per (run, attempt) so a
# step does not read it again. Bounded; a process follows few runs at a time.
_BASELINES: dict[tuple[int, int], Baseline] = {}
_BASELINES_KEPT = 64


def run_baseline(
    *, run_id: int, step_rollouts: Sequence[Mapping[str, Any]] = (), attempt: int | None = None
) -> Baseline:
    """The base model's step-0 eval rollouts; without an eval set, the first train step's rollouts."""
    if attempt is not None and (run_id, attempt) in _BASELINES:
        return _BASELINES[run_id, attempt]
    baseline = _read_run_baseline(run_id=run_id, step_rollouts=step_rollouts)
    if attempt is not None and baseline.rollouts and not baseline.source.startswith("this step"):
        while len(_BASELINES) >= _BASELINES_KEPT:
            del _BASELINES[next(iter(_BASELINES))]
        _BASELINES[run_id, attempt] = baseline
    return baseline


def _read_run_baseline(*, run_id: int, step_rollouts: Sequence[Mapping[str, Any]]) -> Baseline:
    from ..models import Trajectory

    fields = ("reward", "tool_calls", "completion_tokens")
    rows = list(Trajectory.objects.filter(run_id=run_id, step=0, split="eval").values(*fields))
    if rows:
        return Baseline.from_rollouts(rows, source="the base model's step-0 eval rollouts")
    first = (
        Trajectory.objects.filter(run_id=run_id, split="train")
        .order_by("step")
        .values_list("step", flat=True)
        .first()
    )
    if first is not None:
        rows = list(Trajectory.objects.filter(run_id=run_id, split="train", step=first).values(*fields))
        return Baseline.from_rollouts(rows, source=f"the train rollouts of step {first}")
    return Baseline.from_rollouts(
        [r for r in step_rollouts if r.get("split") == "train"], source="this step's own train rollouts"
    )


HISTORY_KEYS = ("reward", "eval/reward", "frac_reward_zero_std")


def watch_recorded_step(
    *,
    run,
    step: int,
    metrics: Mapping[str, float],
    rollouts: Sequence[Mapping[str, Any]],
    item_ids: Mapping[tuple[str, int], int],
) -> StepWatch:
    """Load what `watch_step` needs for a step `record_step` is about to store (run locked by the caller)."""
    from django.db.models import Q

    from ..models import DatasetItem, MetricPoint

    if step <= 0 or not rollouts:
        return StepWatch()
    wanted = {
        item_ids[key]: key
        for key in {(r["split"], int(r["item_index"])) for r in rollouts}
        if key in item_ids
    }
    items = {
        wanted[pk]: data for pk, data in DatasetItem.objects.filter(pk__in=wanted).values_list("pk", "data")
    }
    config = watch_config_for(run.watch_config)
    # Only the steps the trends and the pause rule look at, so a step costs the same at step 10,000.
    since = step - max(int(config["trend_window"]), int(config["pause"]["window"]))
    history: dict[str, list[tuple[int, float]]] = defaultdict(list)
    points = (
        MetricPoint.objects.filter(run_id=run.pk, step__lt=step, step__gte=since)
        .filter(Q(key__in=HISTORY_KEYS) | Q(key__startswith="watch/"))
        .exclude(key="eval/reward")
        .order_by("step")
        .values_list("key", "step", "value")
    )
    for key, point_step, value in points:
        history[key].append((point_step, value))
    # the last two evals before this step, wherever they were (evals come every eval_interval steps)
    evals = MetricPoint.objects.filter(run_id=run.pk, step__lt=step, key="eval/reward").order_by("-step")
    history["eval/reward"] = sorted(evals.values_list("step", "value")[:2])
    for key in HISTORY_KEYS:
        if key in metrics:
            history[key].append((step, float(metrics[key])))
    result = watch_step(
        step=step,
        rollouts=rollouts,
        items=items,
        baseline=run_baseline(run_id=run.pk, step_rollouts=rollouts, attempt=run.attempt),
        history=history,
        config=config,
        after_step=int((run.paused_by or {}).get("resumed_at_step", 0)),
    )
    for alert in result.trends:  # announced once, when a trend switches on
        before = history.get(f"watch/trend/{alert['rule']}")
        alert["new"] = not before or before[-1][1] != 1.0
    return result
