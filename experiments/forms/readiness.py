from __future__ import annotations

from django import forms

from ..models import Dataset, Grader, Tool
from ..models.dataset import DatasetStatus
from ..services.training import BUNDLED_MODEL


class ReadinessForm(forms.Form):
    base_model_choice = forms.ChoiceField(
        label="Base model",
        choices=[
            (BUNDLED_MODEL, "SmolLM2-135M-Instruct (bundled, offline, CPU-friendly)"),
            ("custom", "Another model…"),
        ],
        initial=BUNDLED_MODEL,
    )
    base_model_custom = forms.CharField(required=False, label="Hub id or local path")
    dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.none(), help_text="Usually the eval split, or a train subset."
    )
    tools = forms.ModelMultipleChoiceField(
        queryset=Tool.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    grader = forms.ModelChoiceField(queryset=Grader.objects.none())
    k = forms.IntegerField(
        initial=4,
        min_value=2,
        max_value=64,
        label="Rollouts per item (k)",
        help_text="The best-of-k curve runs 1..k.",
    )
    max_items = forms.IntegerField(
        required=False, min_value=1, label="Items", help_text="Only the first N items; empty: all."
    )
    max_turns = forms.IntegerField(initial=3, min_value=1, max_value=32)
    max_new_tokens_per_turn = forms.IntegerField(initial=64, min_value=1, max_value=4096)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = Dataset.objects.visible_to(user).filter(status=DatasetStatus.READY)
        self.fields["tools"].queryset = Tool.objects.visible_to(user)
        self.fields["grader"].queryset = Grader.objects.visible_to(user)

    def clean(self):
        cleaned = super().clean()
        if (
            cleaned.get("base_model_choice") == "custom"
            and not (cleaned.get("base_model_custom") or "").strip()
        ):
            self.add_error("base_model_custom", "Enter a hub id or a local path.")
        return cleaned

    def base_model(self) -> str:
        if self.cleaned_data["base_model_choice"] == "custom":
            return self.cleaned_data["base_model_custom"].strip()
        return self.cleaned_data["base_model_choice"]

    def sampling_config(self) -> dict:
        turns = self.cleaned_data["max_turns"]
        per_turn = self.cleaned_data["max_new_tokens_per_turn"]
        return {
            "max_turns": turns,
            "max_new_tokens_per_turn": per_turn,
            "max_tokens_per_rollout": per_turn * turns * 2,
        }


class AuditForm(forms.Form):
    grader = forms.ModelChoiceField(queryset=Grader.objects.none(), label="Second grader")
    sample_size = forms.IntegerField(initial=10, min_value=1, max_value=50, label="Rollouts of each kind")

    def __init__(self, *args, user, run, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["grader"].queryset = Grader.objects.visible_to(user).exclude(pk=run.grader_id)
