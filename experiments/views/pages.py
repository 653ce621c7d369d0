"""Server-rendered pages. Thin: selectors read, templates render."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from .. import selectors
from ..selectors.demo import measured_step_seconds
from ..services import demo
from ..services.run_launch import RunValidationError


def dashboard(request):
    runs = selectors.run_rows_for(user=request.user)
    demo_available = demo.demo_available(owner=request.user)
    quick_demo_available = demo.quick_demo_available(owner=request.user)
    context = {
        **selectors.dashboard_counts(user=request.user),
        "recent_runs": runs[:10],
        "demo_available": demo_available,
        "quick_demo_available": quick_demo_available,
        # Measured only for a demo the page offers (the estimate is shown next to its button).
        "demo_step_time": measured_step_seconds(
            user=request.user, base_model=demo.BUNDLED_MODEL, config_steps=demo.DEMO_RUN_CONFIG["steps"]
        )
        if demo_available
        else None,
        "quick_demo_steps": demo.QUICK_DEMO_CONFIG["steps"],
        "demo_steps": demo.DEMO_RUN_CONFIG["steps"],
        "quick_demo_step_time": measured_step_seconds(
            user=request.user, base_model=demo.BUNDLED_TOY_MODEL, config_steps=demo.QUICK_DEMO_CONFIG["steps"]
        )
        if quick_demo_available
        else None,
    }
    return render(request, "experiments/dashboard.html", context)


def run_list(request):
    return render(request, "experiments/run_list.html", {"runs": selectors.run_rows_for(user=request.user)})


@require_POST
def start_demo_run(request):
    try:
        run = demo.start_demo_run(owner=request.user)
    except RunValidationError as exc:
        messages.error(request, f"The demo run could not start: {exc}")
        return redirect("dashboard")
    messages.success(request, f"“{run.name}” is queued: the bundled SmolLM2-135M-Instruct trains on the CPU.")
    return redirect("run-detail", run_id=run.pk)


@require_POST
def start_quick_demo_run(request):
    try:
        run = demo.start_quick_demo_run(owner=request.user)
    except RunValidationError as exc:
        messages.error(request, f"The quick demo could not start: {exc}")
        return redirect("dashboard")
    messages.success(request, f"“{run.name}” is queued: a tiny warm-started model learns to use a tool.")
    return redirect("run-detail", run_id=run.pk)
