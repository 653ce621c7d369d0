"""Eval numbers from the stored eval rollouts: the base model's baseline (step 0) and each run's
final eval (its last eval step), pass@k, and the summary table with deltas against the baseline."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db.models import Max, Min
from django.utils import timezone

from trainer.config import defaults

from ...models import Run, Trajectory


@dataclass
class EvalRollout:
    item_index: int
    reward: float | None
    score: float | None
    tool_calls: int
    tool_call_names: list[str]
    completion_tokens: int
    grader_error: bool


def eval_steps(*, run_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """{run id: (first eval step, last eval step)} for runs that have eval rollouts."""
    rows = (
        Trajectory.objects.filter(run_id__in=run_ids, split=Trajectory.Split.EVAL)
        .values("run_id")
        .annotate(first=Min("step"), last=Max("step"))
    )
    return {row["run_id"]: (row["first"], row["last"]) for row in rows}


def eval_rollouts(wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], list[EvalRollout]]:
    """{(run id, step): rollouts} for the given (run, step) pairs, without messages."""
    wanted = set(wanted)
    result: dict[tuple[int, int], list[EvalRollout]] = {pair: [] for pair in wanted}
    by_run: dict[int, set[int]] = {}
    for run_id, step in wanted:
        by_run.setdefault(run_id, set()).add(step)
    for run_id, steps in by_run.items():
        rows = (
            Trajectory.objects.filter(run_id=run_id, split=Trajectory.Split.EVAL, step__in=steps)
            .order_by("step", "item_index", "sample_index")
            .values_list(
                "step",
                "item_index",
                "reward",
                "score",
                "tool_calls",
                "tool_call_names",
                "completion_tokens",
                "grader_errors",
            )
        )
        for step, item, reward, score, calls, names, tokens, errors in rows:
            result[(run_id, step)].append(
                EvalRollout(
                    item_index=item,
                    reward=reward,
                    score=score,
                    tool_calls=calls,
                    tool_call_names=list(names or []),
                    completion_tokens=tokens,
                    grader_error=reward is None or bool(errors),
                )
            )
    return result


def pass_at_k(*, samples: int, successes: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021), as the trainer reports it: 1 - C(n - c, k) / C(n, k)."""
    if samples - successes < k:
        return 1.0
    return 1.0 - math.comb(samples - successes, k) / math.comb(samples, k)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def mean_or_none(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def eval_stats(rollouts: Sequence[EvalRollout], *, threshold: float) -> dict:
    """Reward, pass@1, best-of-k (pass@k with k = the samples per item), tool calls p50/p95, mean
    generated tokens and grader error rate of one eval."""
    by_item: dict[int, list[EvalRollout]] = {}
    for rollout in rollouts:
        by_item.setdefault(rollout.item_index, []).append(rollout)
    pass1, best = [], []
    k = max((len(group) for group in by_item.values()), default=0)
    for group in by_item.values():
        graded = [r for r in group if r.score is not None]
        if not graded:
            continue
        successes = sum(1 for r in graded if r.score >= threshold)
        pass1.append(pass_at_k(samples=len(graded), successes=successes, k=1))
        best.append(1.0 if successes else 0.0)
    calls = [r.tool_calls for r in rollouts]
    return {
        "rollouts": len(rollouts),
        "items": len(by_item),
        "k": k,
        "reward": mean_or_none([r.reward for r in rollouts if r.reward is not None]),
        "pass@1": mean_or_none(pass1),
        "best_of_k": mean_or_none(best),
        "tool_calls_p50": _percentile(calls, 0.5),
        "tool_calls_p95": _percentile(calls, 0.95),
        "mean_tokens": mean_or_none([r.completion_tokens for r in rollouts]),
        "grader_error_rate": (sum(1 for r in rollouts if r.grader_error) / len(rollouts))
        if rollouts
        else None,
    }


# (key, label, True when higher is better). Fewer tool calls, tokens, errors and seconds are better:
# the budget penalty exists to teach exactly that.
SUMMARY_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("baseline_reward", "Eval reward at step 0 (base model)", True),
    ("reward", "Final eval reward", True),
    ("pass@1", "Final pass@1", True),
    ("best_of_k", "Final best-of-k", True),
    ("tool_calls_p50", "Tool calls per rollout, p50", False),
    ("tool_calls_p95", "Tool calls per rollout, p95", False),
    ("mean_tokens", "Mean generated tokens", False),
    ("grader_error_rate", "Grader error rate", False),
    ("run_time_s", "Run time (s)", False),
)


def _threshold(run: Run) -> float:
    try:
        return float((run.config or {}).get("eval_pass_threshold", defaults()["eval_pass_threshold"]))
    except (TypeError, ValueError):
        return 1.0


def _run_time(run: Run) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or (timezone.now() if not run.is_terminal else None)
    return None if end is None else max(0.0, (end - run.started_at).total_seconds())


def eval_summary(*, runs: Sequence[Run], baseline: Run | None) -> dict:
    """Per run: the base model's eval (step 0) and the final eval, run time, and deltas against the
    baseline run; per metric the run with the best value.

    `{"metrics": [{"key", "label", "higher_is_better", "best": [run ids]}], "runs": [{"run",
    "baseline_step", "final_step", "values": {key: float|None}, "deltas": {key: float|None}, "k"}]}`
    """
    steps = eval_steps(run_ids=[run.pk for run in runs])
    wanted = []
    for run_id, (first, last) in steps.items():
        wanted.append((run_id, last))
        if first == 0:
            wanted.append((run_id, 0))
    rollouts = eval_rollouts(wanted)
    entries = []
    for run in runs:
        first, last = steps.get(run.pk, (None, None))
        values: dict[str, float | None] = {key: None for key, _, _ in SUMMARY_METRICS}
        k = 0
        if last is not None:
            final = eval_stats(rollouts[(run.pk, last)], threshold=_threshold(run))
            k = final["k"]
            for key in values:
                if key in final:
                    values[key] = final[key]
        if first == 0:
            values["baseline_reward"] = eval_stats(rollouts[(run.pk, 0)], threshold=_threshold(run))["reward"]
        values["run_time_s"] = _run_time(run)
        entries.append(
            {
                "run": run.pk,
                "baseline_step": 0 if first == 0 else None,
                "final_step": last,
                "k": k,
                "values": values,
            }
        )
    reference = next((e for e in entries if baseline is not None and e["run"] == baseline.pk), None)
    for entry in entries:
        entry["deltas"] = {
            key: (
                None
                if reference is None or value is None or reference["values"][key] is None
                else value - reference["values"][key]
            )
            for key, value in entry["values"].items()
        }
    metrics = []
    for key, label, higher in SUMMARY_METRICS:
        present = [(e["values"][key], e["run"]) for e in entries if e["values"][key] is not None]
        best: list[int] = []
        if len(present) > 1:
            target = max(v for v, _ in present) if higher else min(v for v, _ in present)
            if any(v != target for v, _ in present):
                best = [run_id for v, run_id in present if v == target]
        metrics.append({"key": key, "label": label, "higher_is_better": higher, "best": best})
    return {"metrics": metrics, "runs": entries, "baseline": baseline.pk if baseline else None}
