"""Creating, starting, cancelling and resuming runs (the user's side of the run lifecycle)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from ..models import Dataset, DatasetItem, Environment, Grader, Run, RunStatus, Tool
from ..models.dataset import DatasetStatus
from ..selectors import run_state
from ..watch.rules import validate_watch_config
from . import rate_limits
from . import runs as run_services
from .environments import resolve_mcp_tools
from .graders import grader_needs

logger = logging.getLogger(__name__)


@dataclass
class RunValidationError(Exception):
    """Field name -> messages, shown next to the form fields (or as the API's 400 body)."""

    errors: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(f"{name}: {' '.join(messages)}" for name, messages in self.errors.items())


def validate_trainer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's own validation (defaults filled in), with its message attached to the field."""
    from trainer.config import ConfigError, TrainerConfig

    try:
        trainer_config = TrainerConfig.from_dict(
            {**config, "model": config.get("model") or "placeholder-model"}
        )
        trainer_config.validate()
    except ConfigError as exc:
        raise RunValidationError({"config": [str(exc)]}) from exc
    return dict(config)


def tool_names_referenced(dataset: Dataset) -> set[str]:
    names: set[str] = set()
    for tools in DatasetItem.objects.filter(dataset=dataset, has_tools=True).values_list(
        "data__tools", flat=True
    ):
        for tool in tools or []:
            function = tool.get("function", tool) if isinstance(tool, dict) else {}
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.add(function["name"])
    return names


def default_tools(*, owner, datasets: Sequence[Dataset | None]) -> list[Tool]:
    """The owner's registered tools that the datasets' items name (a run's tools when none are chosen)."""
    referenced: set[str] = set()
    for dataset in filter(None, datasets):
        referenced |= tool_names_referenced(dataset)
    if not referenced:
        return []
    return list(Tool.objects.filter(owner=owner, name__in=referenced).order_by("name"))


@transaction.atomic
def create_run(
    *,
    owner,
    name: str,
    base_model: str,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    tools: Sequence[Tool],
    grader: Grader,
    config: Mapping[str, Any],
    max_attempts: int | None = None,
    start: bool = True,
    watch_config: Mapping[str, Any] | None = None,
    environment: Environment | None = None,
    mcp_tools: Sequence[Mapping[str, Any]] = (),
) -> Run:
    """Validate everything a run needs, store it as queued, and enqueue it on commit.

    `environment` gives every rollout its own environment (start/end); `mcp_tools` picks tools of the
    owner's MCP servers ([{"server": pk, "name": ...}]), whose schemas the run records.


    No tools given means every one of the owner's tools that the datasets' items name (the run form
    and the API alike). Refused (RunValidationError) when the owner already has
    RFT_MAX_ACTIVE_RUNS_PER_USER runs queued or running; rate-limited per user (rate_limits.RateLimited)."""
    from django.conf import settings

    if not tools:
        tools = default_tools(owner=owner, datasets=[train_dataset, eval_dataset])
    errors: dict[str, list[str]] = {}
    if not name.strip():
        errors.setdefault("name", []).append("A run needs a name.")
    if not base_model.strip():
        errors.setdefault("base_model", []).append(
            "Choose a base model (hub id, local path, or the bundled model)."
        )
    for field_name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        if dataset is None:
            continue
        if dataset.owner_id != owner.pk and not owner.is_staff:
            errors.setdefault(field_name, []).append("Not one of your datasets.")
        elif dataset.status != DatasetStatus.READY or dataset.item_count == 0:
            errors.setdefault(field_name, []).append(f"Dataset {dataset.name!r} has no valid items.")
    if train_dataset is not None and eval_dataset is not None and train_dataset.pk == eval_dataset.pk:
        errors.setdefault("eval_dataset", []).append(
            "Use a different dataset for evaluation than for training."
        )
    if grader.owner_id != owner.pk and not owner.is_staff:
        errors.setdefault("grader", []).append("Not one of your graders.")
    else:
        for need in grader_needs(grader):
            errors.setdefault("grader", []).append(f"The grader {grader.name} cannot score here: {need}.")
    foreign_tools = [tool.name for tool in tools if tool.owner_id != owner.pk and not owner.is_staff]
    if foreign_tools:
        errors.setdefault("tools", []).append(f"Not your tools: {', '.join(foreign_tools)}.")
    registered = {tool.name for tool in tools}
    if environment is not None and environment.owner_id != owner.pk and not owner.is_staff:
        errors.setdefault("environment", []).append("Not one of your environments.")
    mcp_schemas: list[dict[str, Any]] = []
    try:
        mcp_schemas = resolve_mcp_tools(owner=owner, picks=mcp_tools)
    except ValueError as exc:
        errors.setdefault("mcp_tools", []).append(str(exc))
    clash = sorted(registered & {tool["name"] for tool in mcp_schemas})
    if clash:
        errors.setdefault("mcp_tools", []).append(
            f"{', '.join(clash)}: an HTTP tool of this run has the same name; pick one of the two."
        )
    registered |= {tool["name"] for tool in mcp_schemas}
    for dataset in filter(None, (train_dataset, eval_dataset)):
        missing = sorted(tool_names_referenced(dataset) - registered)
        if missing:
            errors.setdefault("tools", []).append(
                f"Dataset {dataset.name!r} lets items call {', '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not among this run's tools: register "
                f"{'it' if len(missing) == 1 else 'them'} on the Tools page and select {'it' if len(missing) == 1 else 'them'}."
            )
    try:
        config = validate_trainer_config(config)
    except RunValidationError as exc:
        errors.update(exc.errors)
    try:
        watch_config = validate_watch_config(dict(watch_config or {}))
    except ValueError as exc:
        errors.setdefault("watch_config", []).append(str(exc))
    if errors:
        raise RunValidationError(errors)
    active = _active_run_count(owner)
    if active >= settings.RFT_MAX_ACTIVE_RUNS_PER_USER:
        raise RunValidationError({"non_field_errors": [run_cap_message(active)]})
    rate_limits.check_rate(user=owner, action="run_launch")
    run = Run.objects.create(
        owner=owner,
        name=name.strip(),
        base_model=base_model.strip(),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        grader=grader,
        config=dict(config),
        watch_config=watch_config,
        environment=environment,
        mcp_tools=mcp_schemas,
        max_attempts=max_attempts or settings.RFT_MAX_RUN_ATTEMPTS,
        status=RunStatus.QUEUED,
        queued_at=timezone.now(),
    )
    run.tools.set(tools)
    run_services.append_status_event(run_id=run.pk)
    if start:
        enqueue_run(run_id=run.pk)
    return run


def _active_run_count(owner) -> int:
    """The owner's queued + running runs, counted with the owner's row locked: two launches at once
    cannot both pass the cap (callers are in a transaction)."""
    get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
    return Run.objects.filter(owner=owner, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).count()


def run_cap_message(active: int) -> str:
    cap = settings.RFT_MAX_ACTIVE_RUNS_PER_USER
    return (
        f"You already have {active} runs queued or running, the most one user may have "
        f"({cap}, RFT_MAX_ACTIVE_RUNS_PER_USER). Wait for one to finish, or cancel one, then launch again."
    )


def enqueue_run(*, run_id: int) -> None:
    from ..tasks import train_run

    train_run.delay_on_commit(run_id)


def cancel_run(*, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is asked to stop (the trainer checks between
    rollouts) and ends as cancelled; its notice says whether a checkpoint is kept to resume from."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status == RunStatus.QUEUED:
            return run_services.transition_run(
                run_id=run_id, status=RunStatus.CANCELLED, error="Cancelled before it started."
            )
        if run.status == RunStatus.PAUSED:
            return run_services.transition_run(
                run_id=run_id,
                status=RunStatus.CANCELLED,
                error=run_state.cancelled_message(run_id, while_paused=True),
            )
        if run.status != RunStatus.RUNNING:
            raise run_services.RunStateError(f"A {run.get_status_display().lower()} run cannot be cancelled.")
        if not run.cancel_requested:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested", "updated_at"])
            run_services.log_run(
                run_id=run_id, level="info", message="Cancel requested; stopping after the current rollouts."
            )
        return run


def resume_run(*, run_id: int) -> Run:
    """Put a failed, cancelled or paused run back in the queue as a new attempt; it continues from
    its last checkpoint. Resuming a paused run acknowledges the review: the watch's pause rule only
    counts the steps trained after it."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED):
            raise run_services.RunStateError(
                f"Only failed, cancelled or paused runs can be resumed; this one is {run.status}."
            )
        if run.attempt >= run.max_attempts:
            raise run_services.RunStateError(
                f"This run has used all {run.max_attempts} attempts; clone it to start again."
            )
        active = _active_run_count(run.owner)
        if active >= settings.RFT_MAX_ACTIVE_RUNS_PER_USER:
            raise run_services.RunStateError(run_cap_message(active))
        rate_limits.check_rate(user=run.owner, action="run_launch")
        run = run_services.transition_run(run_id=run_id, status=RunStatus.QUEUED)
        enqueue_run(run_id=run_id)
        return run


def queue_position(*, run: Run) -> int | None:
    """1-based position among queued runs (everyone's: they share the GPU workers), or None."""
    if run.status != RunStatus.QUEUED or run.queued_at is None:
        return None
    return Run.objects.filter(status=RunStatus.QUEUED, queued_at__lt=run.queued_at).count() + 1
