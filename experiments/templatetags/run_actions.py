"""`{% run_actions run %}`: the lifecycle buttons, downloads and checkpoints of a run page."""

from __future__ import annotations

from pathlib import Path

from django import template

from ..models import Checkpoint
from ..selectors.run_state import run_actions_state
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
    state = run_actions_state(run)
    return {
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
        "run": run,
        "can_cancel": state.can_cancel,
        "can_resume": state.can_resume,
        "resume_label": state.resume_label,
        "nothing_to_resume": state.nothing_to_resume,
        "queue_position": run_launch.queue_position(run=run),
        "checkpoints": checkpoints,
        "has_adapter": has_adapter,
        "merged": artifacts.merged_status(run=run),
    }
