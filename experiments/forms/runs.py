"""The new-run form: what to train, on what, with which tools and grader, and the hyperparameters.

Hyperparameters are grouped as the trainer documents them; each field shows the trainer's default
and a short explanation. Only values that differ from the trainer's defaults are stored in the
run's config, so a config diff between runs shows exactly what the user changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django import forms

from ..models import Grader, Run, Tool
from ..models.dataset import Dataset, DatasetStatus
from ..services.training import BUNDLED_MODEL
from ..services.watch import ROLLOUT_RULES

# field -> (group, help text). The order here is the order on the page.
HYPERPARAMETERS: dict[str, tuple[str, str]] = {
    "prompts_per_step": ("Rollouts", "Dataset items per step; each is one GRPO group."),
    "group_size": (
        "Rollouts",
        "Rollouts sampled per item; advantages compare rollouts within a group (≥ 2).",
    ),
    "max_turns": ("Rollouts", "Assistant turns per rollout (each turn may call tools)."),
    "max_new_tokens_per_turn": ("Rollouts", "Tokens the model may generate in one turn."),
    "max_tokens_per_rollout": (
        "Rollouts",
        "Generated tokens plus tool results per rollout, after the prompt.",
    ),
    "temperature": ("Rollouts", "Sampling temperature during training rollouts."),
    "top_p": ("Rollouts", "Nucleus sampling threshold (1 disables it)."),
    "learning_rate": ("Optimisation", "AdamW learning rate for the LoRA weights."),
    "lr_schedule": ("Optimisation", "constant, linear or cosine decay after the warm-up."),
    "warmup_steps": ("Optimisation", "Optimizer steps of linear warm-up from 0."),
    "steps": ("Optimisation", "Total training steps; leave empty to train for `epochs` over the train set."),
    "epochs": ("Optimisation", "Passes over the train set when `steps` is empty."),
    "iterations_per_batch": ("Optimisation", "Optimizer steps over the same rollouts (GRPO's μ)."),
    "loss_type": (
        "Optimisation",
        "grpo: per-sequence mean; dr_grpo: constant normaliser; dapo: per-token mean.",
    ),
    "reward_scaling": (
        "Optimisation",
        "Divide advantages by the std of the group, of the batch, or not at all.",
    ),
    "clip_epsilon_low": ("Optimisation", "Importance ratio clipped below at 1 − ε_low."),
    "clip_epsilon_high": ("Optimisation", "…and above at 1 + ε_high (DAPO's clip-higher)."),
    "kl_beta": ("Optimisation", "Weight of the KL penalty to the base model; 0 skips it (faster)."),
    "max_grad_norm": ("Optimisation", "Gradient clipping norm; 0 disables it."),
    "weight_decay": ("Optimisation", "AdamW weight decay."),
    "micro_batch_size": ("Optimisation", "Rollouts per forward/backward pass; lower it if memory runs out."),
    "gradient_checkpointing": (
        "Optimisation",
        "Trade compute for memory on long rollouts. Auto: on for bases of 1B parameters or more.",
    ),
    "seed": ("Optimisation", "Seeds sampling and item order: the same seed reproduces a run."),
    "lora_r": ("LoRA", "Rank of the adapter matrices."),
    "lora_alpha": ("LoRA", "Scaling of the adapter (alpha / r)."),
    "lora_dropout": ("LoRA", "Dropout on the adapter's input."),
    "tool_call_budget": ("Tool-call budget", "Tool calls allowed per rollout; empty means unlimited."),
    "tool_call_penalty": ("Tool-call budget", "Subtracted from the reward for each call over the budget."),
    "eval_interval": (
        "Evaluation",
        "Steps between evaluations (plus a baseline at step 0 and one at the end).",
    ),
    "eval_samples_per_item": ("Evaluation", "k: rollouts per eval item; pass@1..k are reported."),
    "eval_pass_threshold": ("Evaluation", "An eval rollout passes when its score reaches this."),
    "checkpoint_interval": ("Checkpoints", "Steps between checkpoints (and one at the end)."),
    "keep_checkpoints": ("Checkpoints", "Older checkpoints are deleted beyond this many; 0 keeps all."),
    "export_merged": ("Checkpoints", "Also write the merged model (base + adapter) at the end."),
    "dtype": ("Hardware", "auto: bfloat16 on a GPU that supports it, float32 otherwise."),
    "device": ("Hardware", "auto: CUDA when available, else CPU; or any torch device string."),
    # Help text from the trainer's field metadata (one source; see trainer/config.py).
    "devices": ("Hardware", ""),
    "sharding": ("Hardware", ""),
}
CHOICES = {
    "lr_schedule": ("constant", "linear", "cosine"),
    "loss_type": ("grpo", "dr_grpo", "dapo"),
    "reward_scaling": ("group", "batch", "none"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "sharding": ("none", "fsdp"),
}


def _config_help(name: str) -> str:
    from trainer.config import TrainerConfig

    field = next(f for f in dataclasses.fields(TrainerConfig) if f.name == name)
    return field.metadata.get("help", "")


def trainer_defaults() -> dict[str, Any]:
    from trainer.config import TrainerConfig

    return {
        field.name: field.default
        for field in dataclasses.fields(TrainerConfig)
        if field.default is not dataclasses.MISSING
    }


def _field_for(name: str, default: Any, help_text: str) -> forms.Field:
    label = name.replace("_", " ").capitalize()
    help_text = help_text or _config_help(name)
    shown_default = ("auto" if name == "gradient_checkpointing" else "empty") if default is None else default
    help_text = f"{help_text} Default: {shown_default}."
    if name in CHOICES:
        return forms.ChoiceField(
            choices=[(value, value) for value in CHOICES[name]],
            initial=default,
            label=label,
            help_text=help_text,
        )
    if name == "gradient_checkpointing":  # auto (None) / on / off
        return forms.TypedChoiceField(
            choices=[("", "auto"), ("true", "on"), ("false", "off")],
            coerce=lambda value: value == "true",
            empty_value=None,
            required=False,
            initial="" if default is None else str(default).lower(),
            label=label,
            help_text=help_text,
        )
    if isinstance(default, bool):
        return forms.BooleanField(required=False, initial=default, label=label, help_text=help_text)
    if name == "devices":  # a count or "auto"
        return forms.CharField(initial=str(default), label=label, help_text=help_text, max_length=8)
    if name in {"steps", "tool_call_budget"}:
        return forms.IntegerField(
            required=False,
            min_value=0 if name == "tool_call_budget" else 1,
            initial=default,
            label=label,
            help_text=help_text,
        )
    if isinstance(default, int):
        return forms.IntegerField(initial=default, label=label, help_text=help_text)
    if isinstance(default, float):
        return forms.FloatField(initial=default, label=label, help_text=help_text)
    return forms.CharField(initial=default, label=label, help_text=help_text)


class RunForm(forms.Form):
    name = forms.CharField(max_length=200)
    base_model_choice = forms.ChoiceField(
        label="Base model",
        choices=[
            (BUNDLED_MODEL, "SmolLM2-135M-Instruct (bundled, offline, CPU-friendly)"),
            ("custom", "Another model…"),
        ],
        initial=BUNDLED_MODEL,
    )
    base_model_custom = forms.CharField(
        required=False,
        label="Hub id or local path",
        help_text="e.g. Qwen/Qwen2.5-0.5B-Instruct, /models/my-model, or a .gguf file path.",
    )
    train_dataset = forms.ModelChoiceField(queryset=Dataset.objects.none())
    eval_dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.none(),
        required=False,
        help_text="Scored at step 0 (baseline), every eval interval and at the end.",
    )
    tools = forms.ModelMultipleChoiceField(
        queryset=Tool.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Left empty: every registered tool the datasets' items name.",
    )
    grader = forms.ModelChoiceField(queryset=Grader.objects.none())
    # The reward-hacking watch's pause rule (services/watch.py); flags are recorded either way.
    watch_pause_enabled = forms.BooleanField(
        required=False, label="Pause the run for review when rollouts look like reward hacking"
    )
    watch_pause_rule = forms.ChoiceField(
        choices=[("any", "any rule"), *[(rule, rule) for rule in ROLLOUT_RULES]],
        initial="any",
        label="Rule",
    )
    watch_pause_threshold = forms.FloatField(
        initial=0.5,
        min_value=0,
        max_value=1,
        label="Flagged share ≥",
        help_text="Of the train rollouts, 0..1.",
    )
    watch_pause_window = forms.IntegerField(
        initial=3, min_value=1, label="Over the last N steps", help_text="Averaged over this many steps."
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        datasets = Dataset.objects.visible_to(user).filter(status=DatasetStatus.READY)
        self.fields["train_dataset"].queryset = datasets
        self.fields["eval_dataset"].queryset = datasets
        self.fields["tools"].queryset = Tool.objects.visible_to(user)
        self.fields["grader"].queryset = Grader.objects.visible_to(user)
        self.defaults = trainer_defaults()
        for name, (_group, help_text) in HYPERPARAMETERS.items():
            self.fields[name] = _field_for(name, self.defaults.get(name), help_text)

    def hyperparameter_groups(self) -> list[tuple[str, list]]:
        groups: dict[str, list] = {}
        for name, (group, _help) in HYPERPARAMETERS.items():
            groups.setdefault(group, []).append(self[name])
        return list(groups.items())

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if (
            cleaned.get("base_model_choice") == "custom"
            and not (cleaned.get("base_model_custom") or "").strip()
        ):
            self.add_error("base_model_custom", "Enter a hub id or a local path.")
        return cleaned

    def clean_devices(self) -> int | str:
        value = (self.cleaned_data.get("devices") or "").strip().lower()
        if value == "auto":
            return "auto"
        if not value.isdigit() or int(value) < 1:
            raise forms.ValidationError("A number of devices (1, 2, …) or auto.")
        return int(value)

    @property
    def base_model(self) -> str:
        if self.cleaned_data.get("base_model_choice") == "custom":
            return self.cleaned_data.get("base_model_custom", "").strip()
        return self.cleaned_data["base_model_choice"]

    def config(self) -> dict[str, Any]:
        """Only the values that differ from the trainer's defaults."""
        config = {}
        for name in HYPERPARAMETERS:
            value = self.cleaned_data.get(name)
            if value != self.defaults.get(name):
                config[name] = value
        return config

    def watch_config(self) -> dict[str, Any]:
        if not self.cleaned_data.get("watch_pause_enabled"):
            return {}
        return {
            "pause": {
                "enabled": True,
                "rule": self.cleaned_data["watch_pause_rule"],
                "threshold": self.cleaned_data["watch_pause_threshold"],
                "window": self.cleaned_data["watch_pause_window"],
            }
        }

    @classmethod
    def initial_from_run(cls, run: Run) -> dict[str, Any]:
        """Pre-fill for "Clone run"."""
        initial: dict[str, Any] = {
            "name": f"{run.name} (clone)",
            "train_dataset": run.train_dataset_id,
            "eval_dataset": run.eval_dataset_id,
            "tools": list(run.tools.values_list("pk", flat=True)),
            "grader": run.grader_id,
        }
        if run.base_model == BUNDLED_MODEL:
            initial["base_model_choice"] = BUNDLED_MODEL
        else:
            initial.update(base_model_choice="custom", base_model_custom=run.base_model)
        initial.update({key: value for key, value in run.config.items() if key in HYPERPARAMETERS})
        if isinstance(initial.get("gradient_checkpointing"), bool):  # the auto/on/off choice's values
            initial["gradient_checkpointing"] = str(initial["gradient_checkpointing"]).lower()
        pause = (run.watch_config or {}).get("pause") or {}
        if pause.get("enabled"):
            initial.update(
                watch_pause_enabled=True,
                watch_pause_rule=pause.get("rule", "any"),
                watch_pause_threshold=pause.get("threshold", 0.5),
                watch_pause_window=pause.get("window", 3),
            )
        return initial
