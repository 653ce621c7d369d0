"""`{% run_actions run %}`: the lifecycle buttons, downloads and checkpoints of a run page."""

from __future__ import annotations

from django import template

from ..models import RunStatus
from ..selectors.checkpoints import run_checkpoints
from ..services import artifacts, run_launch

register = template.Library()


@register.inclusion_tag("experiments/_run_actions.html", takes_context=True)
def run_actions(context, run):
    checkpoints = run_checkpoints(run=run)
    eval_columns = sorted({key for checkpoint in checkpoints for key in checkpoint["eval"]})
    for checkpoint in checkpoints:
        checkpoint["eval_values"] = [checkpoint["eval"].get(key) for key in eval_columns]
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
        "eval_columns": eval_columns,
        "keep_best": (run.config or {}).get("keep_best_checkpoints", 3),
        "has_adapter": has_adapter,
        "merged_ready": artifacts.merged_model_directory(run=run) is not None,
    }
