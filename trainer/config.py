"""The trainer's configuration: one dataclass, each field's default, help, group and choices beside it.

Every field is `name: type = field(default=..., metadata={...})` (the pattern of TRL's `GRPOConfig`):

- `help`: one line, shown under the field on the run form, in the API schema and the run comparison;
- `group`: the section it belongs to (one of `GROUPS`, in page order); fields are written in the
  order the run form shows them, grouped as the form groups them;
- `choices`: only where the value must be one of a fixed set (validated here, a select on the form);
- `label`: optional, where the automatic label from the name would read badly ("KL beta");
- `advanced`: optional; the run form leaves the field out (it stays settable through the API and
  run files).

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
SHARDINGS = ("none", "fsdp")

# The sections of the configuration, in the order the run form and the comparison show them.
GROUPS = (
    "Model",
    "Rollouts",
    "Optimisation",
    "LoRA",
    "Tool-call budget",
    "Evaluation",
    "Checkpoints",
    "Hardware",
    "Other",
)


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; the message names it."""


@dataclass
class TrainerConfig:
    # --- Model ---------------------------------------------------------------------------------
    model: str = field(
        default="",
        metadata={
            "help": 'Hub id ("Qwen/Qwen2.5-0.5B-Instruct"), a local model directory, or a path to a .gguf file.',
            "group": "Model",
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "The GGUF file inside `model` when it is a directory holding one.",
            "group": "Model",
            "label": "GGUF file",
            "advanced": True,
        },
    )
    chat_template: str = field(
        default="auto",
        metadata={
            "help": "auto: the model's own template if it renders tools, else our tool-aware ChatML template.",
            "group": "Model",
            "choices": CHAT_TEMPLATES,
            "advanced": True,
        },
    )

    # --- Rollouts ------------------------------------------------------------------------------
    prompts_per_step: int = field(
        default=4,
        metadata={"help": "Dataset items per step; each is one GRPO group.", "group": "Rollouts"},
    )
    group_size: int = field(
        default=8,
        metadata={
            "help": "Rollouts sampled per item; advantages compare rollouts within a group (≥ 2).",
            "group": "Rollouts",
        },
    )
    max_turns: int = field(
        default=4,
        metadata={"help": "Assistant turns per rollout (each turn may call tools).", "group": "Rollouts"},
    )
    max_new_tokens_per_turn: int = field(
        default=256,
        metadata={"help": "Tokens the model may generate in one turn.", "group": "Rollouts"},
    )
    max_tokens_per_rollout: int = field(
        default=1024,
        metadata={
            "help": "Generated tokens plus tool results per rollout, after the prompt.",
            "group": "Rollouts",
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature during training rollouts.", "group": "Rollouts"},
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "Nucleus sampling threshold (1 disables it).",
            "group": "Rollouts",
            "label": "Top-p",
        },
    )
    rollout_deadline_s: float | None = field(
        default=900.0,
        metadata={
            "help": "Wall time one rollout may take (generation and tools); past it, it ends as 'timeout'. "
            "Empty: no deadline.",
            "group": "Rollouts",
            "label": "Rollout deadline (s)",
        },
    )
    max_rollouts_in_flight: int = field(
        default=128,
        metadata={
            "help": "Rollouts generating or waiting on tools at once, each holding its KV cache; the rest queue.",
            "group": "Rollouts",
            "advanced": True,
        },
    )
    max_kv_cache_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens the generation KV cache may hold across rollouts in flight. Empty: half of the free "
            "GPU memory, or a quarter of the free RAM on the CPU.",
            "group": "Rollouts",
            "label": "Max KV-cache tokens",
            "advanced": True,
        },
    )

    # --- Optimisation --------------------------------------------------------------------------
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "AdamW learning rate for the LoRA weights.", "group": "Optimisation"},
    )
    lr_schedule: str = field(
        default="constant",
        metadata={
            "help": "constant, linear or cosine decay after the warm-up.",
            "group": "Optimisation",
            "choices": LR_SCHEDULES,
            "label": "LR schedule",
        },
    )
    warmup_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps of linear warm-up from 0.", "group": "Optimisation"},
    )
    steps: int | None = field(
        default=None,
        metadata={
            "help": "Total training steps; leave empty to train for `epochs` over the train set.",
            "group": "Optimisation",
        },
    )
    epochs: float = field(
        default=1.0,
        metadata={"help": "Passes over the train set when `steps` is empty.", "group": "Optimisation"},
    )
    iterations_per_batch: int = field(
        default=1,
        metadata={"help": "Optimizer steps over the same rollouts (GRPO's μ).", "group": "Optimisation"},
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": "grpo: per-sequence mean; dr_grpo: constant normaliser; dapo: per-token mean.",
            "group": "Optimisation",
            "choices": LOSS_TYPES,
        },
    )
    reward_scaling: str = field(
        default="group",
        metadata={
            "help": "Divide advantages by the std of the group, of the batch, or not at all.",
            "group": "Optimisation",
            "choices": REWARD_SCALINGS,
        },
    )
    clip_epsilon_low: float = field(
        default=0.2,
        metadata={
            "help": "Importance ratio clipped below at 1 − ε_low.",
            "group": "Optimisation",
            "label": "Clip ε low",
        },
    )
    clip_epsilon_high: float = field(
        default=0.28,
        metadata={
            "help": "…and above at 1 + ε_high (DAPO's clip-higher).",
            "group": "Optimisation",
            "label": "Clip ε high",
        },
    )
    kl_beta: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the KL penalty to the base model; 0 skips it (faster).",
            "group": "Optimisation",
            "label": "KL beta",
        },
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={"help": "Gradient clipping norm; 0 disables it.", "group": "Optimisation"},
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay.", "group": "Optimisation"}
    )
    adam_beta1: float = field(
        default=0.9,
        metadata={"help": "AdamW β1.", "group": "Optimisation", "label": "Adam β1", "advanced": True},
    )
    adam_beta2: float = field(
        default=0.99,
        metadata={"help": "AdamW β2.", "group": "Optimisation", "label": "Adam β2", "advanced": True},
    )
    micro_batch_size: int = field(
        default=8,
        metadata={
            "help": "Rollouts per forward/backward pass; lower it if memory runs out.",
            "group": "Optimisation",
        },
    )
    # None (auto): on for bases of LARGE_BASE_PARAMETERS or more, where activations dominate memory.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Trade compute for memory on long rollouts. Empty (auto): on for bases of 1B parameters "
            "or more.",
            "group": "Optimisation",
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seeds sampling and item order: the same seed reproduces a run.",
            "group": "Optimisation",
        },
    )

    # --- LoRA ----------------------------------------------------------------------------------
    lora_r: int = field(
        default=16,
        metadata={"help": "Rank of the adapter matrices.", "group": "LoRA", "label": "LoRA rank r"},
    )
    lora_alpha: int = field(
        default=32,
        metadata={"help": "Scaling of the adapter (alpha / r).", "group": "LoRA", "label": "LoRA alpha"},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the adapter's input.", "group": "LoRA", "label": "LoRA dropout"},
    )
    lora_target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": '"all-linear" or a list of module names such as ["q_proj", "v_proj"].',
            "group": "LoRA",
            "label": "LoRA target modules",
            "advanced": True,
        },
    )

    # --- Tool-call budget ----------------------------------------------------------------------
    tool_call_budget: int | None = field(
        default=None,
        metadata={
            "help": "Tool calls allowed per rollout; empty means unlimited.",
            "group": "Tool-call budget",
        },
    )
    tool_call_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Subtracted from the reward for each call over the budget.",
            "group": "Tool-call budget",
        },
    )

    # --- Evaluation ----------------------------------------------------------------------------
    eval_interval: int = field(
        default=10,
        metadata={
            "help": "Steps between evaluations (plus a baseline at step 0 and one at the end).",
            "group": "Evaluation",
        },
    )
    eval_samples_per_item: int = field(
        default=4,
        metadata={"help": "k: rollouts per eval item; pass@1..k are reported.", "group": "Evaluation"},
    )
    eval_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Sampling temperature of eval rollouts; empty: the training temperature.",
            "group": "Evaluation",
            "advanced": True,
        },
    )
    eval_pass_threshold: float = field(
        default=1.0,
        metadata={"help": "An eval rollout passes when its score reaches this.", "group": "Evaluation"},
    )

    # --- Checkpoints ---------------------------------------------------------------------------
    checkpoint_interval: int = field(
        default=10,
        metadata={"help": "Steps between checkpoints (and one at the end).", "group": "Checkpoints"},
    )
    keep_checkpoints: int = field(
        default=2,
        metadata={
            "help": "Older checkpoints are deleted beyond this many; 0 keeps all.",
            "group": "Checkpoints",
        },
    )
    keep_best_checkpoints: int = field(
        default=3,
        metadata={
            "help": "Also keep the checkpoints with the k highest eval rewards (besides the latest ones); "
            "0 keeps only the latest.",
            "group": "Checkpoints",
            "label": "Keep best checkpoints (by eval reward)",
        },
    )
    export_merged: bool = field(
        default=False,
        metadata={"help": "Also write the merged model (base + adapter) at the end.", "group": "Checkpoints"},
    )

    # --- Hardware ------------------------------------------------------------------------------
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto: bfloat16 on a GPU that supports it, float32 otherwise.",
            "group": "Hardware",
            "choices": DTYPES,
            "label": "Data type",
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto: CUDA when available, else CPU; or any torch device string.",
            "group": "Hardware",
        },
    )
    devices: int | str = field(
        default=1,
        metadata={
            "help": (
                "Processes (one per GPU) that train this run together: a number, or auto for every GPU "
                "the worker sees. Prompt groups are split between them."
            ),
            "group": "Hardware",
        },
    )
    sharding: str = field(
        default="none",
        metadata={
            "help": (
                "none: every device holds the whole model and the LoRA gradients are summed (data "
                "parallel). fsdp: the base weights are sharded over the devices (FSDP2), for bases "
                "that do not fit on one."
            ),
            "group": "Hardware",
            "choices": SHARDINGS,
        },
    )

    # --- Other ---------------------------------------------------------------------------------
    # Unknown keys are rejected by from_dict; this is the one place free-form extras may go.
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Free-form extras (unknown keys elsewhere are refused).",
            "group": "Other",
            "advanced": True,
        },
    )

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
        for setting in settings():
            if setting.choices is not None:
                _one_of(setting.name, getattr(self, setting.name), setting.choices)
        if self.devices != "auto" and (
            isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1
        ):
            raise ConfigError(f"devices: a number >= 1 or 'auto', got {self.devices!r}")
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
        _at_least("max_rollouts_in_flight", self.max_rollouts_in_flight, 1)
        if self.max_kv_cache_tokens is not None:
            _at_least("max_kv_cache_tokens", self.max_kv_cache_tokens, 1)
        if self.rollout_deadline_s is not None and not (
            math.isfinite(self.rollout_deadline_s) and self.rollout_deadline_s > 0
        ):
            raise ConfigError(
                f"rollout_deadline_s: must be a number of seconds > 0, got {self.rollout_deadline_s}"
            )
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


@dataclass(frozen=True)
class Setting:
    """One `TrainerConfig` field as the places that describe it read it (form, API schema, comparison)."""

    name: str
    annotation: str  # as written: "int | None"
    default: Any  # None for a field built by a factory (`extra`)
    help: str
    group: str
    label: str
    choices: tuple[str, ...] | None
    advanced: bool

    @property
    def optional(self) -> bool:
        return "None" in self.annotation


def settings() -> tuple[Setting, ...]:
    """Every field with its metadata, in declaration order (the run form's order)."""
    return tuple(
        Setting(
            name=f.name,
            annotation=str(f.type),
            default=None if f.default is dataclasses.MISSING else f.default,
            help=f.metadata["help"],
            group=f.metadata["group"],
            label=f.metadata.get("label") or f.name.replace("_", " ").capitalize(),
            choices=tuple(f.metadata["choices"]) if "choices" in f.metadata else None,
            advanced=bool(f.metadata.get("advanced", False)),
        )
        for f in dataclasses.fields(TrainerConfig)
    )


def defaults() -> dict[str, Any]:
    """Each field's default; fields built by a factory (`extra`) are left out."""
    return {
        f.name: f.default for f in dataclasses.fields(TrainerConfig) if f.default is not dataclasses.MISSING
    }


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
    if base == "int | str":  # `devices`: a count or "auto"
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{name}: must be a number or 'auto', got {value!r}")
        return int(value)
    if base == "dict[str, Any]":
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be an object, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported field type {annotation}")
