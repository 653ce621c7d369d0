"""Checkpoints: the LoRA adapter (PEFT format, safetensors) plus optimizer, scheduler, RNG and step.

A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into
place, so a directory named `checkpoint-NNNNNN` is always complete.

A run on several ranks writes the adapter and the scheduler once (rank 0; under FSDP the adapter is
first gathered to a full state dict) and the optimizer and RNG state per rank
(`optimizer-rank1.pt`, ...). It resumes only with the same number of ranks.
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

from trainer.config import ConfigError
from trainer.distributed import World

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
    world_size: int = 1


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def _rank_file(name: str, world: World) -> str:
    """optimizer.pt for a single process (as before ranks existed), optimizer-rank1.pt on rank 1."""
    if not world.is_distributed:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}-rank{world.rank}.{suffix}"


def adapter_state_dict(model: Any, world: World) -> dict[str, Any] | None:
    """The adapter's full state dict (a collective under FSDP: every rank calls it); None means
    "the model's own", which PEFT reads itself."""
    if not getattr(model, "_rftweb_fsdp", False):
        return None
    from peft import get_peft_model_state_dict
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return get_peft_model_state_dict(model, state_dict=full) if world.is_rank_zero else None


def _save_adapter(model: Any, directory: Path, state_dict: dict[str, Any] | None) -> None:
    if state_dict is None:
        model.save_pretrained(directory, safe_serialization=True)
    else:
        model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)


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


def save_adapter_atomically(*, model: Any, target: Path, world: World | None = None) -> Path:
    """Rank 0 writes; under FSDP every rank must call this (the gather is a collective)."""
    world = world or World()
    state_dict = adapter_state_dict(model, world)
    if not world.is_rank_zero:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _save_adapter(model, staging, state_dict)
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
    world: World | None = None,
) -> Path:
    """Every rank calls this; rank 0 stages, renames and prunes, each rank adds its own files."""
    world = world or World()
    root = Path(output_dir)
    target = root / checkpoint_name(state.step)
    # One staging path every rank can name without being told (the ranks share the filesystem).
    staging = root / f".{target.name}-staging"
    state_dict = adapter_state_dict(model, world)
    if world.is_rank_zero:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left by an attempt that died while writing
        staging.mkdir()
    world.barrier()
    try:
        torch.save(optimizer.state_dict(), staging / _rank_file(OPTIMIZER_FILE, world))
        torch.save(
            {"torch": torch.random.get_rng_state(), "python": random.getstate()},
            staging / _rank_file(RNG_FILE, world),
        )
        world.barrier()
        if world.is_rank_zero:
            _save_adapter(model, staging, state_dict)
            torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
            (staging / STATE_FILE).write_text(
                json.dumps(
                    {
                        "step": state.step,
                        "total_steps": state.total_steps,
                        "config": state.config,
                        "metrics": state.metrics,
                        "world_size": world.world_size,
                    },
                    indent=2,
                    sort_keys=True,
                    default=str,
                )
            )
            _fsync_tree(staging)
            _replace_directory(staging, target)
    finally:
        if world.is_rank_zero:
            shutil.rmtree(staging, ignore_errors=True)
    world.barrier()
    if keep > 0 and world.is_rank_zero:
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
    directory = Path(path)
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} has no {ADAPTER_WEIGHTS}")
    _load_adapter_into(model, directory)


def _load_adapter_into(model: Any, directory: Path) -> None:
    """The adapter file's LoRA weights into `model`, sharded (FSDP) or not."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if getattr(model, "_rftweb_fsdp", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        adapter_weights = load_file(str(directory / ADAPTER_WEIGHTS), device="cpu")
        full = _adapter_keys_in_model(model, adapter_weights)
        set_model_state_dict(
            model,
            full,
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False, strict=False),
        )
        return
    device = next(model.parameters()).device
    adapter_weights = load_file(str(directory / ADAPTER_WEIGHTS), device=str(device))
    result = set_peft_model_state_dict(model, adapter_weights)
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
        world_size=int(data.get("world_size", 1)),
    )


def load_checkpoint(
    *,
    path: str | os.PathLike[str],
    model: Any,
    optimizer: Any,
    scheduler: Any,
    world: World | None = None,
) -> CheckpointState:
    """Restores adapter weights, optimizer, scheduler and RNG state in place; returns the saved state."""
    world = world or World()
    directory = Path(path)
    state = read_checkpoint_state(directory)
    if state.world_size != world.world_size:
        # The optimizer state is per rank and each rank's sampling stream depends on the split, so
        # another number of ranks could not continue the same run exactly.
        raise ConfigError(
            f"devices: checkpoint {directory.name} was written by a run on {state.world_size} device(s); "
            f"resume it with devices: {state.world_size} (this attempt has {world.world_size})"
        )
    _load_adapter_into(model, directory)
    device = next(model.parameters()).device
    optimizer.load_state_dict(
        torch.load(directory / _rank_file(OPTIMIZER_FILE, world), map_location=device, weights_only=True)
    )
    scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=False))
    rng = torch.load(directory / _rank_file(RNG_FILE, world), weights_only=False)
    torch.random.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return state


def _adapter_keys_in_model(model: Any, adapter_weights: dict[str, Any]) -> dict[str, Any]:
    """PEFT saves `...q_proj.lora_A.weight`; the model names it `...q_proj.lora_A.default.weight`."""
    names = {name for name, _ in model.named_parameters()}
    renamed = {}
    for key, value in adapter_weights.items():
        candidate = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        if candidate not in names:
            raise ValueError(f"checkpoint key {key} does not match the model")
        renamed[candidate] = value
    return renamed
