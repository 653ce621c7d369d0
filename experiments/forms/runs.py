"""The new-run form: what to train, on what, with which tools and grader, and the hyperparameters.

Hyperparameters are grouped as the trainer documents them; each field shows the trainer's default
and a short explanation. Only values that differ from the trainer's defaults are stored in the
run's config, so a config diff between runs shows exactly what the user changed.
"""

from __future__ import annotations

from typing import Any

from django import forms

from trainer.config import GROUPS, ConfigError, Setting, TrainerConfig, settings

from ..models import Environment, Grader, McpServer, Run, Tool
from ..models.dataset import Dataset, DatasetStatus
from ..services.training import BUNDLED_MODEL
from ..watch.rules import ROLLOUT_RULES


def form_settings() -> tuple[Setting, ...]:
    """The trainer settings the form shows, in the config's order: all but the advanced ones and
    `model` (the base-model fields above stand for it)."""
    return tuple(setting for setting in settings() if not setting.advanced and setting.name != "model")


def _field_for(setting: Setting) -> forms.Field:
    default = setting.default
    shown_default = "empty" if default is None else default
    options = {
        "initial": default,
        "label": setting.label,
        "help_text": f"{setting.help} Default: {shown_default}.",
    }
    if setting.choices is not None:
        return forms.ChoiceField(choices=[(value, value) for value in setting.choices], **options)
    base = setting.annotation.replace(" | None", "")
    # Optional fields may be left empty (None: the trainer's meaning, e.g. "unlimited").
    required = not setting.optional
    if base == "bool" and setting.optional:  # empty means auto (the trainer decides)
        return forms.TypedChoiceField(
            choices=[("", "auto"), ("true", "on"), ("false", "off")],
            coerce=lambda value: value == "true",
            empty_value=None,
            required=False,
            **{**options, "help_text": f"{setting.help} Default: auto."},
        )
    if base == "bool":
        return forms.BooleanField(required=False, **options)
    if base == "int | str":  # a count or "auto" (devices)
        return _CountOrAutoField(**options)
    if base == "int":
        return forms.IntegerField(required=required, **options)
    if base == "float":
        return forms.FloatField(required=required, **options)
    if base == "str":
        return forms.CharField(required=required, **options)
    raise TypeError(f"the run form cannot show {setting.name} ({setting.annotation}); mark it advanced")


class _CountOrAutoField(forms.CharField):
    """A whole number ≥ 1, or "auto"."""

    def to_python(self, value: Any) -> int | str:
        text = (super().to_python(value) or "").strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or int(text) < 1:
            raise forms.ValidationError("A number of devices (1, 2, …) or auto.")
        return int(text)


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
    mcp_tools = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="MCP tools",
        help_text="Tools of your MCP servers, as last refreshed; the run records these exact schemas.",
    )
    environment = forms.ModelChoiceField(
        queryset=Environment.objects.none(),
        required=False,
        empty_label="None (no per-rollout environment)",
        help_text="Started before each rollout's first turn and ended after grading (at least once).",
    )
    grader = forms.ModelChoiceField(queryset=Grader.objects.none())
    # The reward-hacking watch's pause rule (experiments/watch/rules.py); flags are recorded either way.
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
        self.fields["environment"].queryset = Environment.objects.visible_to(user)
        self.fields["mcp_tools"].choices = [
            (f"{server.pk}:{tool['name']}", f"{tool['name']} ({server.name})")
            for server in McpServer.objects.visible_to(user)
            for tool in server.tools
        ]
        self.fields["grader"].queryset = Grader.objects.visible_to(user)
        self.settings = form_settings()
        for setting in self.settings:
            self.fields[setting.name] = _field_for(setting)

    def hyperparameter_groups(self) -> list[tuple[str, list]]:
        groups: dict[str, list] = {group: [] for group in GROUPS}
        for setting in self.settings:
            groups[setting.group].append(self[setting.name])
        return [(group, fields) for group, fields in groups.items() if fields]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if (
            cleaned.get("base_model_choice") == "custom"
            and not (cleaned.get("base_model_custom") or "").strip()
        ):
            self.add_error("base_model_custom", "Enter a hub id or a local path.")
        # The trainer's own bounds, each reported next to the field it concerns: the trainer names
        # the first bad field, so that field is set aside and the rest checked again.
        config = self.config()
        while True:
            try:
                TrainerConfig.from_dict({**config, "model": "placeholder-model"})
            except ConfigError as exc:
                name, _, reason = str(exc).partition(": ")
                if name in self.fields:
                    self.add_error(name, reason[:1].upper() + reason[1:] + ".")
                else:
                    self.add_error(None, str(exc))
                if name not in config:
                    break
                del config[name]
            else:
                break
        return cleaned

    @property
    def base_model(self) -> str:
        if self.cleaned_data.get("base_model_choice") == "custom":
            return self.cleaned_data.get("base_model_custom", "").strip()
        return self.cleaned_data["base_model_choice"]

    def config(self) -> dict[str, Any]:
        """Only the values that differ from the trainer's defaults."""
        config = {}
        for setting in self.settings:
            if setting.name not in self.cleaned_data:
                continue  # refused by its field; the error is shown there
            value = self.cleaned_data[setting.name]
            if value != setting.default:
                config[setting.name] = value
        return config

    def mcp_tool_picks(self) -> list[dict[str, Any]]:
        """The picked MCP tools as create_run takes them ([{"server": pk, "name": ...}])."""
        picks = []
        for value in self.cleaned_data.get("mcp_tools") or []:
            server, _, name = value.partition(":")
            picks.append({"server": int(server), "name": name})
        return picks

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
            "environment": run.environment_id,
            "mcp_tools": [f"{tool['server']}:{tool['name']}" for tool in run.mcp_tools or []],
        }
        if run.base_model == BUNDLED_MODEL:
            initial["base_model_choice"] = BUNDLED_MODEL
        else:
            initial.update(base_model_choice="custom", base_model_custom=run.base_model)
        shown = {setting.name for setting in form_settings()}
        initial.update({key: value for key, value in run.config.items() if key in shown})
        for setting in form_settings():  # the auto/on/off choices' values
            if setting.annotation == "bool | None" and isinstance(initial.get(setting.name), bool):
                initial[setting.name] = str(initial[setting.name]).lower()
        pause = (run.watch_config or {}).get("pause") or {}
        if pause.get("enabled"):
            initial.update(
                watch_pause_enabled=True,
                watch_pause_rule=pause.get("rule", "any"),
                watch_pause_threshold=pause.get("threshold", 0.5),
                watch_pause_window=pause.get("window", 3),
            )
        return initial
