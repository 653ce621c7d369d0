"""What a run can do next, read from its stored state: is there a checkpoint to resume from, may it
be cancelled or resumed. The run page's buttons and the cancel message both ask here, so they agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models import Checkpoint, Run, RunStatus


def resume_point(run_id: int, checkpoints: list[Checkpoint] | None = None) -> Checkpoint | None:
    """The newest checkpoint still on disk (older ones may have been pruned), or None. `checkpoints`:
    the run's rows newest first, when the caller has read them already."""
    if checkpoints is None:
        checkpoints = Checkpoint.objects.filter(run_id=run_id).order_by("-step")
    for checkpoint in checkpoints:
        if Path(checkpoint.path).is_dir():
            return checkpoint
    return None


@dataclass(frozen=True)
class RunActionsState:
    can_cancel: bool
    can_resume: bool
    resume_label: str  # what the Resume button says: where the next attempt starts
    resume_step: int | None  # the checkpoint's step, None when the next attempt starts over
    nothing_to_resume: bool  # cancelled before any checkpoint: Clone, not Resume


def run_actions_state(run: Run, checkpoints: list[Checkpoint] | None = None) -> RunActionsState:
    checkpoint = resume_point(run.pk, checkpoints)
    attempts_left = run.attempt < run.max_attempts
    step = checkpoint.step if checkpoint is not None else None
    can_cancel = (
        run.status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED) and not run.cancel_requested
    )
    if run.status == RunStatus.PAUSED:
        # A paused run continues where it stopped (the trainer keeps the step's checkpoint).
        return RunActionsState(can_cancel, attempts_left, "Resume training", step, False)
    if run.status == RunStatus.CANCELLED:
        if checkpoint is None:
            return RunActionsState(can_cancel, False, "", None, True)
        return RunActionsState(can_cancel, attempts_left, f"Resume from step {step}", step, False)
    if run.status == RunStatus.FAILED:
        label = f"Resume from step {step}" if checkpoint is not None else "Retry from the start"
        return RunActionsState(can_cancel, attempts_left, label, step, False)
    return RunActionsState(can_cancel, False, "", step, False)


def cancelled_message(run_id: int, *, while_paused: bool = False) -> str:
    """The cancelled run's notice: whether anything is kept to resume from."""
    checkpoint = resume_point(run_id)
    how = "Cancelled while paused for review" if while_paused else "Cancelled by the user"
    if checkpoint is None:
        return f"{how} before the first checkpoint: there is nothing to resume from. Clone the run to start again."
    return f"{how}; the checkpoint of step {checkpoint.step} is kept: Resume continues from it."


EVAL_PHASE_PREFIXES = ("baseline eval: evaluating", "eval at step")


def current_phase(run: Run) -> str | None:
    """What a running run is doing when its charts cannot show it yet: the eval in progress (the
    trainer logs "baseline eval: evaluating 8 items × 4 rollouts", then "3/8 items done"), or its
    start. None once a step's metrics came after the latest such line, or when it is not running."""
    from ..models import RunEvent

    if run.status != RunStatus.RUNNING:
        return None
    logs = RunEvent.objects.filter(run=run, kind=RunEvent.Kind.LOG).order_by("-seq")
    for event in logs[:50]:
        message = (event.payload or {}).get("message", "")
        if message.startswith(EVAL_PHASE_PREFIXES) and ": evaluating" in message:
            later_metrics = RunEvent.objects.filter(run=run, kind=RunEvent.Kind.METRICS, seq__gt=event.seq)
            return None if later_metrics.exists() else message[:1].upper() + message[1:]
    if not RunEvent.objects.filter(run=run, kind=RunEvent.Kind.METRICS).exists():
        return "Starting: loading the model and the datasets…"
    return None
