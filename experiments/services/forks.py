"""Forking a run from one of its checkpoints (or its final adapter).

A fork is a new run that starts from the parent's adapter with edited settings (say, a lower
learning rate after a regression) and a fresh optimizer, scheduler and step counter. The adapter is
copied into the fork's own folder when the fork is created, so that pruning the parent's checkpoints
later (best-k retention) cannot take the fork's starting point away.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from django.db import transaction

from ..models import Dataset, Environment, Grader, Run, Tool
from .artifacts import ADAPTER_FILES, ArtifactMissing, adapter_directory
from .run_launch import RunValidationError, create_run, enqueue_run
from .training import run_output_dir

START_ADAPTER_DIR = "start-adapter"
# "Not given: the parent's" for the fork's fields where None is a value of its own (no environment).
PARENTS = object()
# The adapter's shape: a fork loads the parent's LoRA weights, so these must not change.
LORA_SHAPE_FIELDS = ("lora_r", "lora_alpha", "lora_target_modules")


def start_adapter_dir(run_id: int) -> Path:
    return run_output_dir(run_id) / START_ADAPTER_DIR


def _lora_shape(config: Mapping[str, Any]) -> dict[str, Any]:
    from trainer import TrainerConfig

    defaults = TrainerConfig()
    return {name: config.get(name, getattr(defaults, name)) for name in LORA_SHAPE_FIELDS}


def fork_run(
    *,
    owner,
    parent: Run,
    step: int | None,
    name: str,
    config: Mapping[str, Any],
    base_model: str | None = None,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    tools: Sequence[Tool] | None = None,
    grader: Grader | None = None,
    watch_config: Mapping[str, Any] | None = None,
    environment: Environment | None | object = PARENTS,
    mcp_tools: Sequence[Mapping[str, Any]] | object = PARENTS,
) -> Run:
    """A new queued run starting from `parent`'s adapter at `step` (None: the final adapter, else the
    latest checkpoint). Whatever is not given is the parent's. Raises RunValidationError."""
    if parent.owner_id != owner.pk and not owner.is_staff:
        raise RunValidationError({"parent": ["Not one of your runs."]})
    try:
        source = adapter_directory(run=parent, step=step)
    except ArtifactMissing as exc:
        raise RunValidationError({"parent_step": [str(exc)]}) from exc
    errors: dict[str, list[str]] = {}
    base_model = (base_model or parent.base_model).strip()
    if base_model != parent.base_model:
        errors["base_model"] = [
            f"A fork keeps its parent's base model ({parent.base_model}): the adapter was trained on it."
        ]
    if _lora_shape(config) != _lora_shape(parent.config or {}):
        changed = [
            key for key, value in _lora_shape(config).items() if value != _lora_shape(parent.config)[key]
        ]
        errors.setdefault("config", []).append(
            f"A fork keeps its parent's LoRA shape ({', '.join(changed)} changed): it starts from "
            "the parent's adapter weights."
        )
    if errors:
        raise RunValidationError(errors)
    with transaction.atomic():
        run = create_run(
            owner=owner,
            name=name,
            base_model=base_model,
            train_dataset=train_dataset or parent.train_dataset,
            eval_dataset=eval_dataset if eval_dataset is not None else parent.eval_dataset,
            tools=list(tools) if tools is not None else list(parent.tools.all()),
            grader=grader or parent.grader,
            config=config,
            watch_config=watch_config if watch_config is not None else parent.watch_config,
            environment=parent.environment if environment is PARENTS else environment,
            # A run records its MCP tools' schemas with their server: picks as create_run takes them.
            mcp_tools=[{"server": tool["server"], "name": tool["name"]} for tool in parent.mcp_tools or []]
            if mcp_tools is PARENTS
            else mcp_tools,
            start=False,
        )
        run.parent = parent
        run.parent_step = step if step is not None else _adapter_step(parent, source)
        run.save(update_fields=["parent", "parent_step", "updated_at"])
        target = start_adapter_dir(run.pk)
        target.mkdir(parents=True, exist_ok=True)
        for file_name in ADAPTER_FILES:
            if (source / file_name).is_file():
                shutil.copy2(source / file_name, target / file_name)
        enqueue_run(run_id=run.pk)
    return run


def _adapter_step(parent: Run, source: Path) -> int:
    """The step the adapter at `source` was saved at: a checkpoint's, or the parent's last step."""
    checkpoint = parent.checkpoints.filter(path=str(source)).first()
    return checkpoint.step if checkpoint else parent.current_step
