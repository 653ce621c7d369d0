"""`{% run_actions run %}`: the lifecycle buttons, downloads and checkpoints of a run page."""

from __future__ import annotations

from pathlib import Path

from django import template

from ..models import Checkpoint, RunStatus
from ..services import artifacts, run_launch

register = template.Library()


@register.inclusion_tag("experiments/_run_actions.html", takes_context=True)
def run_actions(context, run):
    checkpoints = [
        {
            "step": checkpoint.step,
            "metrics": checkpoint.metrics,
            "created_at": checkpoint.created_at,
            "available": Path(checkpoint.path).is_dir(),
        }
        for checkpoint in Checkpoint.objects.filter(run=run).order_by("-step")
    ]
    try:
        artifacts.adapter_directory(run=run)
        has_adapter = True
    except artifacts.ArtifactMissing:
        has_adapter = False
    return {
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
        "run": run,
        "can_cancel": run.status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED)
        and not run.cancel_requested,
        "can_resume": run.status in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED)
        and run.attempt < run.max_attempts,
        "queue_position": run_launch.queue_position(run=run),
        "checkpoints": checkpoints,
        "has_adapter": has_adapter,
        "merged_ready": artifacts.merged_model_directory(run=run) is not None,
    }
