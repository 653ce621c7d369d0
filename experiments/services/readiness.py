"""Readiness: will RL have signal on this dataset + tools + grader + base model?

Training only helps where sampling more gives better results (the best-of-k curve rises with k) and
where an item's rollouts differ in reward (GRPO learns from the differences inside a group). The
statistics below are pure functions of a set of graded rollouts; the verdict explains itself with
the thresholds it used.

Two ways to get a report: the "Check readiness" button (a worker samples k rollouts per item with
the base model, `execute_readiness`) and, for every run, from its step-0 eval rollouts
(`record_run_baseline`, called by `record_step`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..models import Dataset, DatasetItem, Grader, ReadinessReport, ReadinessStatus, Run, Tool
from . import rate_limits
from .graders import grader_needs

# The verdict's thresholds (shown next to every reason, so a user can judge them).
GRADER_ERROR_LIMIT = 0.05  # more grader errors than this: fix the grader before anything else
ALWAYS_ZERO_LIMIT = 0.30  # items that always score 0 teach nothing (no reward difference)
ALWAYS_FULL_LIMIT = 0.30  # items that always score full marks teach nothing either
NO_SIGNAL_LIMIT = 0.60  # above this share of zero-variance items, most of the batch is wasted
BEST_OF_K_MIN_GAIN = 0.05  # best-of-K must beat best-of-1 by this much for sampling to help
FULL_REWARD = 1.0  # "always 1": every rollout reached this reward


# --- pure statistics ---------------------------------------------------------------------------------


def expected_best_of_k(rewards: Sequence[float], k: int) -> float:
    """Unbiased estimate of E[max of k rewards drawn without replacement] from n >= k samples.

    With the rewards sorted ascending r_1..r_n, the i-th is the maximum of a k-subset in C(i-1, k-1)
    of the C(n, k) subsets. For 0/1 rewards this is pass@k (Chen et al. 2021).
    """
    n = len(rewards)
    if k < 1 or n < k:
        raise ValueError(f"best-of-{k} needs at least {k} samples, got {n}")
    ordered = sorted(rewards)
    total = math.comb(n, k)
    return sum(r * math.comb(i, k - 1) for i, r in enumerate(ordered)) / total


def _variance(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def readiness_statistics(
    rollouts: Sequence[Mapping[str, Any]], *, tools_available: bool = True
) -> dict[str, Any]:
    """Everything the readiness report shows, from graded rollouts (dicts with item_index, reward,
    tool_calls, tool_call_names, grader_errors). Rollouts without a reward (grader errors) count in
    the error rate and are left out of the reward statistics."""
    by_item: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for rollout in rollouts:
        by_item[int(rollout["item_index"])].append(rollout)
    graded = {i: [float(r["reward"]) for r in rs if r.get("reward") is not None] for i, rs in by_item.items()}
    scored_items = {i: rewards for i, rewards in graded.items() if rewards}
    k = min((len(rewards) for rewards in scored_items.values()), default=0)

    per_item = []
    constant = {"always_0": 0, "always_1": 0, "other": 0}
    for index in sorted(by_item):
        rewards = graded[index]
        row: dict[str, Any] = {
            "item_index": index,
            "samples": len(by_item[index]),
            "graded": len(rewards),
            "rewards": rewards,
            "mean": sum(rewards) / len(rewards) if rewards else None,
            "variance": _variance(rewards) if rewards else None,
            "min": min(rewards) if rewards else None,
            "max": max(rewards) if rewards else None,
            "signal": None,
        }
        if len(rewards) >= 2:
            if max(rewards) == min(rewards):
                kind = "always_0" if rewards[0] == 0 else "always_1" if rewards[0] >= FULL_REWARD else "other"
                constant[kind] += 1
                row["signal"] = kind
            else:
                row["signal"] = "varies"
        per_item.append(row)

    rated = sum(1 for row in per_item if row["signal"] is not None)  # items with >= 2 graded samples
    zero_variance = {
        "items": rated,
        "always_0": constant["always_0"] / rated if rated else 0.0,
        "always_1": constant["always_1"] / rated if rated else 0.0,
        "other": constant["other"] / rated if rated else 0.0,
        "counts": constant,
    }
    zero_variance["total"] = zero_variance["always_0"] + zero_variance["always_1"] + zero_variance["other"]

    best_of_k = []
    for kk in range(1, k + 1):
        values = [expected_best_of_k(rewards, kk) for rewards in scored_items.values()]
        best_of_k.append({"k": kk, "value": sum(values) / len(values)})

    all_rewards = [r for rewards in graded.values() for r in rewards]
    calls = Counter(int(r.get("tool_calls") or 0) for r in rollouts)
    by_tool = Counter(name for r in rollouts for name in (r.get("tool_call_names") or []))
    errors = sum(1 for r in rollouts if r.get("reward") is None)
    error_types = Counter(
        error.get("type", "error") for r in rollouts for error in (r.get("grader_errors") or [])
    )
    statistics = {
        "rollouts": len(rollouts),
        "items": len(by_item),
        "k": k,
        "mean_reward": sum(all_rewards) / len(all_rewards) if all_rewards else None,
        "best_of_k": best_of_k,
        "zero_variance": zero_variance,
        "per_item": per_item,
        "tool_calls": {
            "histogram": [{"calls": c, "rollouts": n} for c, n in sorted(calls.items())],
            "by_tool": dict(by_tool.most_common()),
            "share_with_calls": (
                sum(n for c, n in calls.items() if c > 0) / len(rollouts) if rollouts else 0.0
            ),
            "mean": sum(c * n for c, n in calls.items()) / len(rollouts) if rollouts else 0.0,
        },
        "grader_errors": {
            "rate": errors / len(rollouts) if rollouts else 0.0,
            "count": errors,
            "by_type": dict(error_types.most_common()),
        },
    }
    statistics["verdict"] = verdict(statistics, tools_available=tools_available)
    return statistics


def verdict(statistics: Mapping[str, Any], *, tools_available: bool = True) -> dict[str, Any]:
    """A plain-language verdict: "ready", "weak" (train, but look at the reasons) or "not_ready"."""
    reasons: list[dict[str, str]] = []

    def say(severity: str, text: str) -> None:
        reasons.append({"severity": severity, "text": text})

    if not statistics["rollouts"]:
        say("block", "No rollouts to judge.")
        return {"level": "not_ready", "summary": "Not enough data.", "reasons": reasons}
    errors = statistics["grader_errors"]
    if errors["rate"] > GRADER_ERROR_LIMIT:
        say(
            "block",
            f"{errors['rate']:.0%} of rollouts could not be graded (limit {GRADER_ERROR_LIMIT:.0%}): "
            "fix the grader first; ungraded rollouts are left out of training.",
        )
    zero = statistics["zero_variance"]
    if zero["items"]:
        if zero["always_0"] >= ALWAYS_ZERO_LIMIT:
            say(
                "warn",
                f"{zero['always_0']:.0%} of items always score 0 (warning at {ALWAYS_ZERO_LIMIT:.0%}): "
                "they give no learning signal; consider partial credit or an easier split.",
            )
        if zero["always_1"] >= ALWAYS_FULL_LIMIT:
            say(
                "warn",
                f"{zero['always_1']:.0%} of items always get full reward (warning at {ALWAYS_FULL_LIMIT:.0%}): "
                "the base model already solves them; use harder items.",
            )
        if zero["total"] >= NO_SIGNAL_LIMIT:
            say(
                "block",
                f"{zero['total']:.0%} of items give every rollout the same reward (limit {NO_SIGNAL_LIMIT:.0%}): "
                "GRPO learns from reward differences within a group, so most of each step would teach nothing.",
            )
    else:
        say("warn", "Fewer than 2 graded rollouts per item: reward variance cannot be judged (raise k).")
    curve = statistics["best_of_k"]
    if len(curve) >= 2:
        gain = curve[-1]["value"] - curve[0]["value"]
        if gain < BEST_OF_K_MIN_GAIN:
            say(
                "block" if curve[-1]["value"] == 0 else "warn",
                f"Best-of-{curve[-1]['k']} is only {gain:+.3f} over best-of-1 (want ≥ {BEST_OF_K_MIN_GAIN}): "
                "sampling more does not find better answers, so RL has little to reinforce.",
            )
        else:
            say(
                "good",
                f"Best-of-{curve[-1]['k']} reaches {curve[-1]['value']:.3f} against {curve[0]['value']:.3f} for "
                "one sample: better answers exist in the model's samples for RL to reinforce.",
            )
    if tools_available and statistics["tool_calls"]["share_with_calls"] == 0:
        say(
            "warn",
            "The base model never called a tool: check the tool descriptions and the prompt, or warm it "
            "up with a few demonstrations first.",
        )
    if zero["items"] and zero["total"] < NO_SIGNAL_LIMIT:
        varies = 1 - zero["total"]
        say(
            "good", f"{varies:.0%} of items have rollouts that differ in reward: that is the learning signal."
        )
    severities = {reason["severity"] for reason in reasons}
    level = "not_ready" if "block" in severities else "weak" if "warn" in severities else "ready"
    summary = {
        "ready": "Ready: RL should have signal here.",
        "weak": "Trainable, with caveats: read the reasons below.",
        "not_ready": "Not ready: fix what is listed below before training.",
    }[level]
    return {
        "level": level,
        "summary": summary,
        "reasons": reasons,
        "thresholds": {
            "grader_error_rate": GRADER_ERROR_LIMIT,
            "always_0": ALWAYS_ZERO_LIMIT,
            "always_1": ALWAYS_FULL_LIMIT,
            "no_signal": NO_SIGNAL_LIMIT,
            "best_of_k_gain": BEST_OF_K_MIN_GAIN,
        },
    }


# --- reports -------------------------------------------------------------------------------------------

READINESS_ROLLOUT_FIELDS = (
    "item_index",
    "sample_index",
    "trace_id",
    "reward",
    "score",
    "tool_calls",
    "tool_call_names",
    "grader_errors",
    "final_answer",
    "completion_tokens",
)


def _kept(rollout: Mapping[str, Any]) -> dict[str, Any]:
    kept = {key: rollout.get(key) for key in READINESS_ROLLOUT_FIELDS}
    kept["final_answer"] = (kept["final_answer"] or "")[:300]
    return kept


def record_run_baseline(*, run: Run, rollouts: Sequence[Mapping[str, Any]]) -> ReadinessReport | None:
    """The readiness report of a run's baseline, from its step-0 eval rollouts (idempotent)."""
    evals = [r for r in rollouts if r.get("split") == "eval"]
    if not evals:
        return None
    statistics = readiness_statistics(evals, tools_available=run.tools.exists())
    statistics["rollout_samples"] = [_kept(r) for r in evals[:200]]
    now = timezone.now()
    report, _ = ReadinessReport.objects.update_or_create(
        run=run,
        defaults={
            "owner_id": run.owner_id,
            "name": f"Baseline of {run.name}",
            "base_model": run.base_model,
            "dataset_id": run.eval_dataset_id or run.train_dataset_id,
            "grader_id": run.grader_id,
            "grader_version": run.grader.version,
            "k": statistics["k"],
            "config": {"eval_samples_per_item": (run.config or {}).get("eval_samples_per_item")},
            "status": ReadinessStatus.SUCCEEDED,
            "results": statistics,
            "started_at": now,
            "finished_at": now,
        },
    )
    report.tools.set(run.tools.all())
    return report


class ReadinessError(ValueError):
    """Bad input for a readiness check (shown next to the form)."""


SAMPLING_FIELDS = (
    "max_turns",
    "max_new_tokens_per_turn",
    "max_tokens_per_rollout",
    "temperature",
    "top_p",
    "seed",
)


@transaction.atomic
def create_readiness_report(
    *,
    owner,
    base_model: str,
    dataset: Dataset,
    tools: Sequence[Tool],
    grader: Grader,
    k: int = 4,
    max_items: int | None = None,
    config: Mapping[str, Any] | None = None,
    start: bool = True,
) -> ReadinessReport:
    """Store a queued readiness check and enqueue it on the `train` queue (it loads the model)."""
    problems = []
    if not base_model.strip():
        problems.append("Choose a base model.")
    for thing in (dataset, grader, *tools):
        if thing.owner_id != owner.pk and not owner.is_staff:
            problems.append(f"{thing} is not yours.")
    if dataset.item_count == 0:
        problems.append(f"Dataset {dataset.name!r} has no items.")
    problems.extend(f"The grader {grader.name} cannot score here: {need}." for need in grader_needs(grader))
    if not 2 <= k <= 64:
        problems.append("k must be between 2 and 64 (variance needs at least 2 rollouts per item).")
    if max_items is not None and max_items < 1:
        problems.append("Items: at least 1, or leave empty for all.")
    unknown = sorted(set(config or {}) - set(SAMPLING_FIELDS))
    if unknown:
        problems.append(f"Unknown sampling setting(s): {', '.join(unknown)}.")
    if problems:
        raise ReadinessError(" ".join(problems))
    rate_limits.check_rate(user=owner, action="readiness")
    report = ReadinessReport.objects.create(
        owner=owner,
        name=f"{dataset.name} · {grader.name} v{grader.version} · k={k}",
        base_model=base_model.strip(),
        dataset=dataset,
        grader=grader,
        grader_version=grader.version,
        k=k,
        max_items=max_items,
        config=dict(config or {}),
    )
    report.tools.set(tools)
    if start:
        from ..tasks import compute_readiness

        compute_readiness.delay_on_commit(report.pk)
    return report


def execute_readiness(*, report_id: int) -> str:
    """Sample, grade and summarise (in a worker). Returns the final status."""
    from trainer.config import ConfigError, TrainerConfig

    from .graders import build_grader_for
    from .training import build_tool_executor_for, resolve_base_model

    updated = ReadinessReport.objects.filter(pk=report_id, status=ReadinessStatus.QUEUED).update(
        status=ReadinessStatus.RUNNING, started_at=timezone.now()
    )
    if not updated:
        return ReadinessReport.objects.values_list("status", flat=True).get(pk=report_id)
    report = ReadinessReport.objects.select_related("dataset", "grader").get(pk=report_id)
    try:
        from trainer.readiness import evaluate_base_model

        rows = (
            DatasetItem.objects.filter(dataset=report.dataset)
            .order_by("index")
            .values_list("data", flat=True)
        )
        if report.max_items:
            rows = rows[: report.max_items]
        items = list(rows)
        tools = list(report.tools.all())
        config = TrainerConfig.from_dict(
            {
                **report.config,
                "model": resolve_base_model(report.base_model),
                "eval_samples_per_item": report.k,
            }
        )
        result = evaluate_base_model(
            config=config,
            items=items,
            tools=[tool.openai_schema() for tool in tools],
            tool_executor=build_tool_executor_for(tools),
            grader=build_grader_for(report.grader),
            k=report.k,
        )
        rollouts = [asdict(record) for record in result.records]
        statistics = readiness_statistics(rollouts, tools_available=bool(tools))
        statistics["rollout_samples"] = [_kept(r) for r in rollouts[:200]]
        statistics["time_s"] = result.time_s
    except (ConfigError, ValueError) as exc:
        return _fail(report, f"Invalid settings: {exc}")
    except Exception as exc:
        return _fail(report, f"{type(exc).__name__}: {exc}"[:2000])
    report.status = ReadinessStatus.SUCCEEDED
    report.results = statistics
    report.finished_at = timezone.now()
    report.save(update_fields=["status", "results", "finished_at", "updated_at"])
    return report.status


def _fail(report: ReadinessReport, error: str) -> str:
    report.status = ReadinessStatus.FAILED
    report.error = error
    report.finished_at = timezone.now()
    report.save(update_fields=["status", "error", "finished_at", "updated_at"])
    return report.status
