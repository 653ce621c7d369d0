"""Step metrics with the names users of the open-source trainers know (see PRODUCT.md)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from trainer.environments import environment_metrics, environment_record
from trainer.interfaces import TrajectoryRecord
from trainer.rollout import Rollout


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolation percentile (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def rollout_metrics(rollouts: Sequence[Rollout], *, prefix: str = "") -> dict[str, float]:
    """Reward, completion and tool metrics of a set of rollouts (train: prefix "", eval: "eval/")."""
    metrics: dict[str, float] = {}
    rewards = [r.reward for r in rollouts if r.reward is not None]
    metrics[f"{prefix}reward"] = _mean(rewards)
    groups: dict[int, list[float]] = {}
    for rollout in rollouts:
        if rollout.reward is not None:
            groups.setdefault(rollout.group_index, []).append(rollout.reward)
    group_stds = [_std(values) for values in groups.values()]
    metrics[f"{prefix}reward_std"] = _mean(group_stds)
    metrics[f"{prefix}frac_reward_zero_std"] = (
        sum(1 for s in group_stds if s == 0.0) / len(group_stds) if group_stds else 0.0
    )
    sub_scores: dict[str, list[float]] = {}
    for rollout in rollouts:
        if rollout.grade is not None and rollout.reward is not None:
            for name, value in rollout.grade.sub_scores.items():
                sub_scores.setdefault(name, []).append(float(value))
    for name, values in sorted(sub_scores.items()):
        metrics[f"{prefix}rewards/{name}/mean"] = _mean(values)
        metrics[f"{prefix}rewards/{name}/std"] = _std(values)
    # Graders with a pass_threshold: the share of graded rollouts whose score reached it.
    passes: dict[str, list[float]] = {}
    for rollout in rollouts:
        if rollout.grade is not None:
            for name, passed in rollout.grade.passed.items():
                passes.setdefault(name, []).append(1.0 if passed else 0.0)
    for name, values in sorted(passes.items()):
        metrics[f"{prefix}rewards/{name}/pass_rate"] = _mean(values)
    lengths = [float(r.generated_tokens) for r in rollouts]
    metrics[f"{prefix}completions/mean_length"] = _mean(lengths)
    metrics[f"{prefix}completions/min_length"] = min(lengths, default=0.0)
    metrics[f"{prefix}completions/max_length"] = max(lengths, default=0.0)
    metrics[f"{prefix}completions/clipped_ratio"] = _mean(
        [1.0 if r.finish_reason == "max_tokens" else 0.0 for r in rollouts]
    )
    calls = [float(r.calls_requested) for r in rollouts]
    metrics[f"{prefix}tools/calls_mean"] = _mean(calls)
    metrics[f"{prefix}tools/calls_p95"] = percentile(calls, 0.95)
    # Parallel calls in few turns versus one call per turn: calls per assistant turn that called tools.
    per_turn = [float(n) for r in rollouts for n in r.calls_per_turn if n]
    metrics[f"{prefix}tools/calls_per_turn_mean"] = _mean(per_turn)
    metrics[f"{prefix}tools/calls_per_turn_p95"] = percentile(per_turn, 0.95)
    turns = [float(r.turns) for r in rollouts]
    metrics[f"{prefix}turns/mean"] = _mean(turns)
    metrics[f"{prefix}turns/p95"] = percentile(turns, 0.95)
    metrics[f"{prefix}completions/timeout_ratio"] = _mean(
        [1.0 if r.finish_reason == "timeout" else 0.0 for r in rollouts]
    )
    # Where a rollout's wall time goes: waiting for its turns to be generated versus for its tools.
    metrics[f"{prefix}timing/rollout_generating_s"] = _mean([r.generation_s for r in rollouts])
    metrics[f"{prefix}timing/rollout_tool_wait_s"] = _mean([r.tool_wait_s for r in rollouts])
    walls = [r.wall_s for r in rollouts]
    metrics[f"{prefix}timing/rollout_wall_s_p50"] = percentile(walls, 0.5)
    metrics[f"{prefix}timing/rollout_wall_s_p95"] = percentile(walls, 0.95)
    results = [result for r in rollouts for result in r.tool_results]
    failures = [result for result in results if not result.ok]
    metrics[f"{prefix}tools/failure_frequency"] = len(failures) / len(results) if results else 0.0
    for name, count in sorted(Counter(result.name for result in results if result.name).items()):
        metrics[f"{prefix}tools/{name}/calls"] = float(count)
    for error_type, count in sorted(Counter(result.error_type for result in failures).items()):
        metrics[f"{prefix}tools/errors/{error_type}"] = float(count)
    latencies = [
        result.latency_ms for result in results if result.error_type not in ("malformed_call", "unknown_tool")
    ]
    metrics[f"{prefix}tools/latency_ms_p50"] = percentile(latencies, 0.5)
    grader_error_types: Counter[str] = Counter()
    for rollout in rollouts:
        if rollout.grade is not None:
            for error in rollout.grade.errors:
                grader_error_types[error.get("type", "error")] += 1
    for error_type, count in sorted(grader_error_types.items()):
        metrics[f"{prefix}grader_errors/{error_type}"] = float(count)
    metrics[f"{prefix}grader_errors/excluded"] = float(sum(1 for r in rollouts if r.reward is None))
    metrics.update(environment_metrics(rollouts, prefix=prefix))
    return metrics


def pass_at_k(*, samples: int, successes: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k)."""
    if samples - successes < k:
        return 1.0
    return 1.0 - math.comb(samples - successes, k) / math.comb(samples, k)


def eval_metrics(rollouts: Sequence[Rollout], *, k: int, threshold: float) -> dict[str, float]:
    metrics = rollout_metrics(rollouts, prefix="eval/")
    by_item: dict[int, list[Rollout]] = {}
    for rollout in rollouts:
        by_item.setdefault(rollout.item_index, []).append(rollout)
    for kk in range(1, k + 1):
        values = []
        for item_rollouts in by_item.values():
            graded = [r for r in item_rollouts if r.score_value is not None]
            if len(graded) < kk:
                continue
            successes = sum(1 for r in graded if r.score_value >= threshold)
            values.append(pass_at_k(samples=len(graded), successes=successes, k=kk))
        metrics[f"eval/pass@{kk}"] = _mean(values)
    return metrics


def trajectory_record(rollout: Rollout, *, step: int) -> TrajectoryRecord:
    grade = rollout.grade
    return TrajectoryRecord(
        trace_id=rollout.trace_id,
        step=step,
        split=rollout.split,
        item_index=rollout.item_index,
        group_index=rollout.group_index,
        sample_index=rollout.sample_index,
        messages=rollout.messages,
        final_answer=rollout.final_answer,
        reward=rollout.reward,
        score=grade.score if grade is not None else None,
        penalty=rollout.penalty,
        advantage=rollout.advantage,
        sub_scores=dict(grade.sub_scores) if grade is not None else {},
        grader_errors=list(grade.errors) if grade is not None else [],
        tool_calls=rollout.calls_requested,
        tool_call_names=[call.name for call in rollout.tool_calls],
        tool_errors=len(rollout.tool_errors),
        prompt_tokens=len(rollout.prompt_ids),
        completion_tokens=rollout.generated_tokens,
        latency_ms=round(rollout.latency_ms, 3),
        finish_reason=rollout.finish_reason or "error",
        environment=environment_record(rollout),
    )
