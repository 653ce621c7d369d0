"""The run page (progress, live charts, tool-call histogram) and the rollout browser.

Included at `runs/`: `path("runs/", include("experiments.views.runs"))`. Thin: selectors read,
templates render, the charts load their history from /api/v1/runs/{id}/series/ and then follow the
run's WebSocket.
"""

from __future__ import annotations

from django import forms
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse

from .. import selectors
from ..models import Trajectory
from ..selectors import checkpoints as checkpoint_selectors
from ..selectors import run_state
from ..selectors import trajectories as rollout_selectors
from ..selectors.environments import environment_counts, environment_view
from ..selectors.metrics import (
    X_AXES,
    metric_keys,
    run_devices,
    run_log_events,
    run_progress,
    samples_per_step,
)
from ..services import demo
from ..watch.rules import ROLLOUT_RULES

# The run page's charts: which metric keys each one draws. `prefix` picks up keys that only appear
# during the run (pass@k for each k, one series per grader error type).
CHARTS = [
    {"id": "reward", "title": "Reward (mean ± std)", "band": {"mean": "reward", "std": "reward_std"}},
    {
        "id": "eval",
        "title": "Eval reward and pass@k",
        "keys": ["eval/reward"],
        "prefix": ["eval/pass@"],
        "markers": True,
    },
    {"id": "tool-calls", "title": "Tool calls per rollout", "keys": ["tools/calls_mean", "tools/calls_p95"]},
    {"id": "turns", "title": "Turns per rollout", "keys": ["turns/mean", "turns/p95"]},
    {
        "id": "calls-per-turn",
        "title": "Tool calls per turn (turns that called tools)",
        "keys": ["tools/calls_per_turn_mean", "tools/calls_per_turn_p95"],
    },
    {"id": "length", "title": "Rollout length (tokens)", "keys": ["completions/mean_length"]},
    {"id": "kl", "title": "KL to the base model", "keys": ["kl"]},
    {"id": "loss", "title": "Loss", "keys": ["loss"]},
    {"id": "entropy", "title": "Entropy", "keys": ["entropy"]},
    {
        "id": "timings",
        "title": "Timings (s)",
        "keys": [
            "timing/rollout_s",
            "timing/grading_s",
            "timing/update_s",
            "step_time",
            # Per rollout: waiting for its turns to be generated versus for its tools, and its wall time.
            "timing/rollout_generating_s",
            "timing/rollout_tool_wait_s",
            "timing/rollout_wall_s_p50",
            "timing/rollout_wall_s_p95",
        ],
    },
    {
        "id": "engine-occupancy",
        "title": "Decode batch occupancy (share of slots)",
        "keys": ["engine/batch_occupancy"],
    },
    {
        "id": "engine-prefill",
        "title": "Prefill tokens per generated token",
        "keys": ["engine/prefill_per_generated_token"],
    },
    {
        "id": "watch",
        "title": "Reward-hacking watch: flagged rollouts by rule",
        "keys": ["watch/flagged"],
        "prefix": [f"watch/{rule}" for rule in ROLLOUT_RULES],
        "markers": True,
    },
    {
        "id": "watch-share",
        "title": "Flagged share of train rollouts",
        "keys": ["watch/flagged_share"],
        "markers": True,
    },
    {
        "id": "env-errors",
        "title": "Environment errors (failed starts excluded, ends not delivered at once)",
        "keys": ["env/excluded", "env/end_errors"],
        "prefix": ["env/start_errors/"],
        "markers": True,
    },
    {
        "id": "grader-errors",
        "title": "Grader errors",
        "keys": ["grader_errors/excluded"],
        "prefix": ["grader_errors/"],
        "markers": True,
    },
]

# Only for runs on several devices (trainer.distributed): per-rank times and collectives.
RANKS_CHART = {
    "id": "ranks",
    "title": "Per-rank rollout and update time, communication (s)",
    "keys": ["timing/communication_s"],
    "prefix": ["timing/rank"],
}


def charts_for(run) -> list[dict]:
    """The run's charts: the per-rank chart on several devices; KL says when it is not computed."""
    config = run.config or {}
    charts = []
    for chart in CHARTS:
        if chart["id"] == "kl" and not config.get("kl_beta"):
            chart = {**chart, "title": "KL to the base model (not computed: kl_beta is 0)"}
        charts.append(chart)
    if config.get("devices", 1) != 1:
        charts.insert(next(i for i, c in enumerate(charts) if c["id"] == "timings") + 1, RANKS_CHART)
    return charts


X_AXIS_LABELS = {
    "step": "Step",
    "samples": "Samples seen",
    "wall_time": "Wall time",
    "relative_time": "Relative time (s)",
}


# The run's datasets, grader and environment are shown by name on its pages: their JSON (a dataset's
# statistics and errors, a grader's spec) and their encrypted secrets are not loaded for that.
_UNSHOWN_RELATED_FIELDS = (
    "train_dataset__stats",
    "train_dataset__errors",
    "eval_dataset__stats",
    "eval_dataset__errors",
    "grader__spec",
    "grader__secrets",
    "environment__headers",
)


def _visible_run(request, run_id: int):
    # No prefetch of the tools: Django's many-to-many prefetch machinery was half the CPU of this
    # lookup, and only the run page shows them (as names: `tool_names`).
    runs = selectors.runs_for(user=request.user).select_related("environment").defer(*_UNSHOWN_RELATED_FIELDS)
    return get_object_or_404(runs, pk=run_id)


def run_detail(request, run_id: int):
    run = _visible_run(request, run_id)
    charts = charts_for(run)
    page_config = {
        "runId": run.pk,
        "status": run.status,
        "lastSeq": run.last_seq,
        "seriesUrl": reverse("run-series", args=[run.pk]),
        "histogramUrl": reverse("run-histogram", args=[run.pk]),
        "actionsUrl": reverse("run-actions", args=[run.pk]),
        "socketPath": f"/ws/runs/{run.pk}/",
        "samplesPerStep": samples_per_step(run.config or {}),
        "metricKeys": metric_keys(run.pk),
        "charts": charts,
        "xAxes": [{"value": value, "label": X_AXIS_LABELS[value]} for value in X_AXES],
    }
    context = {
        "run": run,
        "tool_names": list(run.tools.order_by("name").values_list("name", flat=True)),
        "progress": run_progress(run),
        "phase": run_state.current_phase(run),
        "log_events": run_log_events(run_id=run.pk),
        "config_items": sorted((run.config or {}).items()),
        "model_note": demo.model_note(run),
        "lineage": checkpoint_selectors.run_lineage(run=run),
        "page_config": page_config,
        "charts": charts,
        "devices": run_devices(run),
        "x_axes": page_config["xAxes"],
        "rollout_step_range": rollout_selectors.rollout_step_range(
            run_id=run.pk, split=Trajectory.Split.TRAIN
        ),
        "environment_counts": environment_counts(run_id=run.pk) if run.environment_id else None,
    }
    return render(request, "experiments/run_page.html", context)


def run_histogram(request, run_id: int):
    """JSON: tool calls per rollout at the chosen step, next to the baseline and the latest step."""
    run = _visible_run(request, run_id)
    split = request.GET.get("split", Trajectory.Split.TRAIN)
    if split not in Trajectory.Split.values:
        split = Trajectory.Split.TRAIN
    step = request.GET.get("step", "")
    data = rollout_selectors.tool_call_histograms(
        run_id=run.pk, split=split, step=int(step) if step.lstrip("-").isdigit() else None
    )
    return JsonResponse(data)


class RolloutFilterForm(forms.Form):
    step = forms.IntegerField(required=False)
    split = forms.ChoiceField(choices=[("", "any split"), *Trajectory.Split.choices], required=False)
    min_reward = forms.FloatField(required=False, label="Reward ≥")
    max_reward = forms.FloatField(required=False, label="Reward ≤")
    has_error = forms.ChoiceField(
        choices=[("", "any"), ("yes", "with errors"), ("no", "without errors")],
        required=False,
        label="Errors",
    )
    tool = forms.CharField(required=False, label="Tool used")
    flagged = forms.ChoiceField(
        choices=[("", "any"), ("yes", "flagged"), ("no", "not flagged")], required=False, label="Flagged"
    )
    q = forms.CharField(required=False, label="Trace id")
    cursor = forms.CharField(required=False, widget=forms.HiddenInput)

    def filters(self, *, run_id: int) -> rollout_selectors.RolloutFilters:
        data = self.cleaned_data
        yes_no = {"yes": True, "no": False}
        return rollout_selectors.RolloutFilters(
            run_id=run_id,
            step=data.get("step"),
            split=data.get("split") or None,
            min_reward=data.get("min_reward"),
            max_reward=data.get("max_reward"),
            has_error=yes_no.get(data.get("has_error") or ""),
            tool=data.get("tool") or None,
            flagged=yes_no.get(data.get("flagged") or ""),
            trace_id=data.get("q") or None,
        )


def run_rollouts(request, run_id: int):
    """The rollout table of one run: per step and split by default, filters, trace id search."""
    run = _visible_run(request, run_id)
    query = request.GET.copy()
    splits = rollout_selectors.rollout_splits(run_id=run.pk)
    searching = bool(query.get("q"))  # a trace id search looks at every step and split
    if "split" not in query and splits and not searching:
        query["split"] = splits[0]
    step_range = rollout_selectors.rollout_step_range(
        run_id=run.pk, split=query.get("split") or Trajectory.Split.TRAIN
    )
    if "step" not in query and step_range and not searching:
        query["step"] = str(step_range[1])  # the latest step
    form = RolloutFilterForm(query)
    page = None
    error = None
    if form.is_valid():
        try:
            page = rollout_selectors.rollout_page(
                user=request.user,
                filters=form.filters(run_id=run.pk),
                cursor=form.cleaned_data.get("cursor") or None,
            )
        except rollout_selectors.CursorError as exc:
            error = str(exc)
    for row in page.rows if page else []:
        row.tool_summary = rollout_selectors.tool_call_summary(row.tool_call_names)
    next_query = None
    if page and page.next_cursor:
        params = query.copy()
        params["cursor"] = page.next_cursor
        next_query = params.urlencode()
    first_query = None
    if query.get("cursor"):
        params = query.copy()
        params.pop("cursor")
        first_query = params.urlencode()
    context = {
        "run": run,
        "form": form,
        "page": page,
        "error": error,
        "step_range": step_range,
        "splits": splits,
        "tools": rollout_selectors.tool_names(run=run),
        "next_query": next_query,
        "first_query": first_query,
        "selected_step": form.cleaned_data.get("step") if form.is_valid() else None,
    }
    return render(request, "experiments/rollout_list.html", context)


def run_rollout(request, run_id: int, trace_id: str):
    """One rollout as a chat: each tool call's arguments, result, latency and error; the grader's verdict."""
    run = _visible_run(request, run_id)
    rollout = rollout_selectors.rollout_detail(user=request.user, trace_id=trace_id)
    if rollout is None or rollout.run_id != run.pk:
        raise Http404("No such rollout in this run.")
    item_fields = {}
    if rollout.item is not None:
        item_fields = {
            key: value for key, value in rollout.item.data.items() if key not in ("messages", "tools")
        }
    previous_id, next_id = rollout_selectors.rollout_neighbours(rollout)
    context = {
        "run": run,
        "rollout": rollout,
        "turns": rollout_selectors.rollout_turns(rollout.messages),
        "item_fields": sorted(item_fields.items()),
        "environment": environment_view(rollout.environment),
        "previous_id": previous_id,
        "next_id": next_id,
        "tools_offered": rollout_selectors.tools_offered(rollout),
        "system_prompts": rollout_selectors.system_prompts(rollout),
    }
    return render(request, "experiments/rollout_view.html", context)


def run_group(request, run_id: int, split: str, step: int, group_index: int):
    """The rollouts of one prompt at one step side by side, with their rewards and advantages."""
    run = _visible_run(request, run_id)
    group = rollout_selectors.rollout_group(
        user=request.user, run_id=run.pk, step=step, split=split, group_index=group_index
    )
    if group is None:
        raise Http404("No rollouts in this group.")
    prompt = []
    for message in group.rollouts[0].messages or []:
        if isinstance(message, dict) and message.get("role") in ("system", "user"):
            prompt.append(message)
        elif prompt:
            break
    columns = [
        {
            "rollout": r,
            "turns": rollout_selectors.rollout_turns(r.messages),
            "tool_summary": rollout_selectors.tool_call_summary(r.tool_call_names),
        }
        for r in group.rollouts
    ]
    context = {"run": run, "group": group, "prompt": prompt, "columns": columns}
    return render(request, "experiments/rollout_group.html", context)


urlpatterns = [
    path("<int:run_id>/", run_detail, name="run-detail"),
    path("<int:run_id>/histogram/", run_histogram, name="run-histogram"),
    path("<int:run_id>/rollouts/", run_rollouts, name="run-rollouts"),
    path("<int:run_id>/rollouts/<str:trace_id>/", run_rollout, name="run-rollout"),
    path(
        "<int:run_id>/groups/<str:split>/<int:step>/<int:group_index>/",
        run_group,
        name="run-group",
    ),
]
