"""Reads behind the run comparison: which runs, how their configs differ, how their evals compare.

Everything here takes runs the caller has already filtered through `Run.objects.visible_to(user)`
(`compare_selection` does that from ids in a URL). Eval numbers come from the stored eval rollouts:
the base model's baseline (step 0), and each run's final eval (its last eval step).

Per-item classification: an item's reward is the mean reward of its eval rollouts at a step. A
candidate run's item is *improved* when its final reward is more than `tolerance` above the
reference's, *regressed* when more than `tolerance` below, *unchanged* otherwise. The reference is
the baseline run's final eval; when the candidate is the baseline run itself, its own step 0 (the
base model). Items are matched by their index in the eval set.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Max, Min
from django.utils import timezone

from trainer.config import GROUPS, defaults, settings

from ..models import Run, Trajectory
from .trajectories import rollout_turns, tool_call_summary

MAX_COMPARE_RUNS = 12
DEFAULT_TOLERANCE = 0.05
ITEM_STATUSES = ("improved", "regressed", "unchanged")

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


# ---- selection --------------------------------------------------------------------------------


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
    from .metrics import samples_per_step

    return samples_per_step(run.config or {})


# ---- config diff ------------------------------------------------------------------------------


def _display(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        import json

        return json.dumps(value, sort_keys=True)
    return str(value)


def _identity_rows(runs: Sequence[Run]) -> list[tuple[str, str, list[Any]]]:
    def dataset(ds) -> str | None:
        return None if ds is None else f"{ds.name} (#{ds.pk})"

    return [
        ("base_model", "Identity", [run.base_model for run in runs]),
        ("train_dataset", "Identity", [dataset(run.train_dataset) for run in runs]),
        ("eval_dataset", "Identity", [dataset(run.eval_dataset) for run in runs]),
        (
            "tools",
            "Identity",
            [
                ", ".join(
                    f"{tool.name} (#{tool.pk})" for tool in sorted(run.tools.all(), key=lambda t: t.name)
                )
                or None
                for run in runs
            ],
        ),
        (
            "grader",
            "Identity",
            [f"{run.grader.name} (#{run.grader_id}) v{run.grader.version}" for run in runs],
        ),
    ]


def config_diff(*, runs: Sequence[Run], differences_only: bool = True) -> dict:
    """One column per run, one row per config field (trainer defaults filled in) and per identity
    (base model, datasets, tools, grader with its version).

    `{"runs": [ids], "rows": [{"field", "group", "help", "values": [str per run], "raw": [...],
    "is_default": [bool per run], "differs": bool}], "total": n, "differing": m}`; with
    `differences_only` only rows whose values are not all equal.
    """
    # The trainer's `model` is the run's base model, already an identity row.
    plain_defaults = defaults()  # `extra` (built by a factory) is shown only where a run sets it
    config_settings = [s for s in settings() if s.name in plain_defaults and s.name != "model"]
    default_of = {setting.name: setting.default for setting in config_settings}
    rows: list[dict] = []
    for name, group, values in _identity_rows(runs):
        rows.append(
            {
                "field": name,
                "group": group,
                "help": "",
                "raw": values,
                "values": [_display(v) for v in values],
                "is_default": [False] * len(values),
            }
        )
    # The config's own sections and order; keys the trainer does not know (older runs) come last.
    known = sorted(config_settings, key=lambda setting: GROUPS.index(setting.group))
    unknown = sorted({key for run in runs for key in (run.config or {}) if key not in default_of})
    described = [(s.name, s.group, s.help) for s in known]
    for name, group, help_text in described + [
        (key, "Other", "Not a setting of this trainer.") for key in unknown
    ]:
        values, is_default = [], []
        for run in runs:
            config = run.config or {}
            values.append(config.get(name, default_of.get(name)))
            is_default.append(name not in config or config[name] == default_of.get(name))
        rows.append(
            {
                "field": name,
                "group": group,
                "help": help_text,
                "raw": values,
                "values": [_display(v) for v in values],
                "is_default": is_default,
            }
        )
    for row in rows:
        row["differs"] = len(set(row["values"])) > 1
    differing = sum(1 for row in rows if row["differs"])
    shown = [row for row in rows if row["differs"]] if differences_only else rows
    return {
        "runs": [run.pk for run in runs],
        "differences_only": differences_only,
        "total": len(rows),
        "differing": differing,
        "rows": shown,
    }


# ---- eval rollouts ----------------------------------------------------------------------------


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


def _eval_rollouts(wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], list[EvalRollout]]:
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


def _mean(values: Sequence[float]) -> float | None:
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
        "reward": _mean([r.reward for r in rollouts if r.reward is not None]),
        "pass@1": _mean(pass1),
        "best_of_k": _mean(best),
        "tool_calls_p50": _percentile(calls, 0.5),
        "tool_calls_p95": _percentile(calls, 0.95),
        "mean_tokens": _mean([r.completion_tokens for r in rollouts]),
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
    rollouts = _eval_rollouts(wanted)
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


# ---- per-item comparison ----------------------------------------------------------------------


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
    return {item: _mean(values) for item, values in by_item.items()}


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
    rollouts = _eval_rollouts(wanted)
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


# ---- one item side by side --------------------------------------------------------------------


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


# ---- tool-call distributions ------------------------------------------------------------------


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
    rollouts = _eval_rollouts((run_id, step) for _l, _r, run_id, step, _c in parts_spec)
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


# ---- curves -----------------------------------------------------------------------------------


def ema_debiased(values: Sequence[float | None], alpha: float) -> list[float | None]:
    """EMA with debias, as the experiment trackers draw it: ema_t = a·ema_(t-1) + (1-a)·x_t, shown as
    ema_t / (1 - a^t), t counting the finite points so far. Non-finite points pass through
    unchanged and do not advance the average (the same as `static/js/live_chart.js`)."""
    if alpha <= 0:
        return list(values)
    ema = 0.0
    weight = 0.0
    out: list[float | None] = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(value)
            continue
        ema = alpha * ema + (1 - alpha) * value
        weight = alpha * weight + (1 - alpha)  # = 1 - a^t
        out.append(ema / weight)
    return out


def compare_metric_keys(*, run_ids: Sequence[int]) -> list[str]:
    """Every metric key present in any of the runs, sorted."""
    from .metrics import metric_keys

    keys: set[str] = set()
    for run_id in run_ids:
        keys.update(metric_keys(run_id))
    return sorted(keys)


SERIES_CACHE_SECONDS = 600


def _series_cache_key(run_id: int, last_seq: int, request: tuple) -> str:
    digest = hashlib.sha256(repr(request).encode()).hexdigest()[:24]
    return f"compare-series:{run_id}:{last_seq}:{digest}"


SERIES_THREADS = 4


def _read_series(*, run_ids: list[int], **request) -> dict[int, dict]:
    """{run id: metric_series' answer for the run}; several runs are read concurrently, each on its
    own database connection (PostgreSQL aggregates them on separate cores).

    Inside a transaction (a request under ATOMIC_REQUESTS, a test) other connections could not see
    its uncommitted rows, so the runs are read on this connection, one after the other.
    """
    from .metrics import metric_series

    if len(run_ids) == 1 or connection.in_atomic_block or connection.vendor != "postgresql":
        return metric_series(run_ids=run_ids, **request)["runs"]

    def read(run_id: int) -> dict:
        try:
            return metric_series(run_ids=[run_id], **request)["runs"]
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=min(SERIES_THREADS, len(run_ids))) as pool:
        parts = list(pool.map(read, run_ids))
    return {run_id: data for part in parts for run_id, data in part.items()}


def overlaid_series(
    *,
    run_ids: list[int],
    keys: list[str],
    x_axis: str = "step",
    max_points: int = 2000,
    step_min: int | None = None,
    step_max: int | None = None,
    smoothing: float = 0.0,
) -> dict:
    """`metric_series` (min/max/last-preserving downsampling) for several runs, with the debiased
    EMA added as `y_smooth` when `smoothing` > 0.

    Each run's answer is cached under the run's `last_seq`: a run that records a step gets a new
    `last_seq` and so a fresh answer, while finished runs (most of a comparison, viewed again on
    every reload, axis switch and zoom-out) are read from the cache instead of re-aggregating their
    points.
    """
    from .metrics import MAX_POINTS_LIMIT, MIN_POINTS, X_AXES, SeriesRequestError

    if x_axis not in X_AXES:
        raise SeriesRequestError(f"x_axis must be one of {', '.join(X_AXES)}.")
    max_points = max(MIN_POINTS, min(int(max_points), MAX_POINTS_LIMIT))
    keys = list(dict.fromkeys(keys))
    request = (tuple(keys), x_axis, max_points, step_min, step_max)
    last_seqs = dict(Run.objects.filter(pk__in=run_ids).values_list("pk", "last_seq"))
    found: dict[int, dict] = {}
    cache_keys = {run_id: _series_cache_key(run_id, last_seqs[run_id], request) for run_id in last_seqs}
    cached = cache.get_many(list(cache_keys.values()))
    for run_id, cache_key in cache_keys.items():
        if cache_key in cached:
            found[run_id] = cached[cache_key]
    to_read = [run_id for run_id in run_ids if run_id in last_seqs and run_id not in found]
    if to_read:
        fresh = _read_series(
            run_ids=to_read,
            keys=keys,
            max_points=max_points,
            x_axis=x_axis,
            step_min=step_min,
            step_max=step_max,
        )
        found.update(fresh)
        cache.set_many({cache_keys[run_id]: data for run_id, data in fresh.items()}, SERIES_CACHE_SECONDS)
    result = {
        "x_axis": x_axis,
        "max_points": max_points,
        "runs": {run_id: found[run_id] for run_id in run_ids if run_id in found},
    }
    if smoothing > 0:
        for run in result["runs"].values():
            for series in run["series"].values():
                series["y_smooth"] = ema_debiased(series["y"], smoothing)
    return result


# ---- CSV export -------------------------------------------------------------------------------


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
