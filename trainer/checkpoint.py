"""Checkpoints: the LoRA adapter (PEFT format, safetensors) plus optimizer, scheduler, RNG and step.

A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into
place, so a directory named `checkpoint-NNNNNN` is always complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class CheckpointState:
    step: int
    total_steps: int
    config: dict[str, Any]
    metrics: dict[str, float]


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_adapter_atomically(*, model: Any, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        _fsync_tree(staging)
        _replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _replace_directory(staging: Path, target: Path) -> None:
    if target.exists():
        retired = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    *,
    output_dir: str | os.PathLike[str],
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: CheckpointState,
    keep: int,
) -> Path:
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / checkpoint_name(state.step)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
        torch.save(
            {"torch": torch.random.get_rng_state(), "python": random.getstate()},
            staging / RNG_FILE,
        )
        (staging / STATE_FILE).write_text(
            json.dumps(
                {
                    "step": state.step,
                    "total_steps": state.total_steps,
                    "config": state.config,
                    "metrics": state.metrics,
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        _fsync_tree(staging)
        _replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep > 0:
        checkpoints = sorted(p for p in root.glob("checkpoint-*") if p.is_dir())
        for old in checkpoints[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


EVAL_REWARD_KEY = "eval/reward"


def retained_checkpoints(
    checkpoints: Sequence[tuple[int, float | None]], *, keep_latest: int, keep_best: int
) -> set[int]:
    """The steps to keep: the `keep_latest` newest plus the `keep_best` with the highest eval reward.

    `checkpoints` are (step, eval reward or None when no eval ran at that step). `keep_latest` 0 keeps
    everything. Ties in reward go to the later step (the one trained longer).
    """
    steps = sorted(step for step, _ in checkpoints)
    if keep_latest <= 0:
        return set(steps)
    kept = set(steps[-keep_latest:])
    evaluated = [(reward, step) for step, reward in checkpoints if reward is not None]
    kept.update(step for _, step in sorted(evaluated, reverse=True)[: max(0, keep_best)])
    return kept


def prune_checkpoints(output_dir: str | os.PathLike[str], *, keep_latest: int, keep_best: int) -> list[Path]:
    """Deletes the checkpoint directories `retained_checkpoints` does not keep; returns the deleted."""
    root = Path(output_dir)
    found: dict[int, Path] = {}
    rewards: list[tuple[int, float | None]] = []
    for path in root.glob("checkpoint-*"):
        if not path.is_dir():
            continue
        try:
            state = read_checkpoint_state(path)
        except (FileNotFoundError, ValueError, KeyError):
            continue  # not a complete checkpoint: never ours to judge
        found[state.step] = path
        reward = state.metrics.get(EVAL_REWARD_KEY)
        rewards.append((state.step, float(reward) if reward is not None else None))
    kept = retained_checkpoints(rewards, keep_latest=keep_latest, keep_best=keep_best)
    deleted = [path for step, path in sorted(found.items()) if step not in kept]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted


def load_adapter_weights(*, path: str | os.PathLike[str], model: Any) -> None:
    """Loads only the LoRA weights of a checkpoint or adapter directory into `model` (a fork's start:
    the parent's adapter, with a fresh optimizer, scheduler and step counter)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(path)
    weights_file = directory / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"{directory} has no {ADAPTER_WEIGHTS}")
    device = next(model.parameters()).device
    result = set_peft_model_state_dict(model, load_file(str(weights_file), device=str(device)))
    unexpected = [key for key in getattr(result, "unexpected_keys", []) if "lora" in key]
    if unexpected:
        raise ValueError(f"the adapter in {directory} does not match the model: {unexpected[:3]}")


def read_checkpoint_state(path: str | os.PathLike[str]) -> CheckpointState:
    directory = Path(path)
    state_file = directory / STATE_FILE
    if not state_file.is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not a complete trainer checkpoint")
    data = json.loads(state_file.read_text())
    return CheckpointState(
        step=int(data["step"]),
        total_steps=int(data["total_steps"]),
        config=data["config"],
        metrics=data.get("metrics", {}),
    )


def load_checkpoint(
    *, path: str | os.PathLike[str], model: Any, optimizer: Any, scheduler: Any
) -> CheckpointState:
    """Restores adapter weights, optimizer, scheduler and RNG state in place; returns the saved state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(path)
    state = read_checkpoint_state(directory)
    device = next(model.parameters()).device
    adapter_weights = load_file(str(directory / ADAPTER_WEIGHTS), device=str(device))
    result = set_peft_model_state_dict(model, adapter_weights)
    unexpected = [key for key in getattr(result, "unexpected_keys", []) if "lora" in key]
    if unexpected:
        raise ValueError(f"checkpoint {directory} does not match the model: {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=False))
    rng = torch.load(directory / RNG_FILE, weights_only=False)
    torch.random.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return state
