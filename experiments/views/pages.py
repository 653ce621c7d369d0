"""Server-rendered pages. Thin: selectors read, templates render."""

from __future__ import annotations

from django.shortcuts import render

from .. import selectors
from ..models import RunStatus


def dashboard(request):
    runs = selectors.runs_for(user=request.user)
    context = {
        "dataset_count": selectors.datasets_for(user=request.user).count(),
        "tool_count": selectors.tools_for(user=request.user).count(),
        "grader_count": selectors.graders_for(user=request.user).count(),
        "active_run_count": runs.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).count(),
        "recent_runs": runs[:10],
    }
    return render(request, "experiments/dashboard.html", context)


def run_list(request):
    return render(request, "experiments/run_list.html", {"runs": selectors.runs_for(user=request.user)})


def compare(request):
    runs = selectors.runs_for(user=request.user)
    selected_ids = []
    for part in request.GET.get("runs", "").split(","):
        if part.strip().isdigit():
            selected_ids.append(int(part))
    selected = {run.pk: run for run in runs.filter(pk__in=selected_ids)}
    context = {
        "runs": runs[:200],
        "selected": [selected[pk] for pk in selected_ids if pk in selected],
        "selected_ids": set(selected),
        "missing": [pk for pk in selected_ids if pk not in selected],
    }
    return render(request, "experiments/compare.html", context)
