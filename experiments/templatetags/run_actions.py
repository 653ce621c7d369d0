"""`{% run_actions run %}`: the lifecycle buttons, downloads and checkpoints of a run page."""

from __future__ import annotations

from django import template

from ..selectors.checkpoints import run_checkpoints, stored_checkpoints
from ..selectors.run_state import run_actions_state
from ..services import artifacts, run_launch

register = template.Library()


@register.inclusion_tag("experiments/_run_actions.html", takes_context=True)
def run_actions(context, run):
    stored = stored_checkpoints(run=run)  # one read for the table, the adapter and the resume button
    checkpoints = run_checkpoints(run=run, checkpoints=stored)
    eval_columns = sorted({key for checkpoint in checkpoints for key in checkpoint["eval"]})
    for checkpoint in checkpoints:
        checkpoint["eval_values"] = [checkpoint["eval"].get(key) for key in eval_columns]
    try:
        artifacts.adapter_directory(run=run, checkpoints=stored)
        has_adapter = True
    except artifacts.ArtifactMissing:
        has_adapter = False
    state = run_actions_state(run, stored)
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
        "eval_columns": eval_columns,
        "keep_best": (run.config or {}).get("keep_best_checkpoints", 3),
        "has_adapter": has_adapter,
        "merged": artifacts.merged_status(run=run),
    }
