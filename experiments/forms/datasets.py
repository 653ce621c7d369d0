"""The dataset upload form (the page and the API share its rules through services.datasets)."""

from __future__ import annotations

from pathlib import Path

from django import forms

from ..models.dataset import DatasetSplit
from ..services.datasets import DatasetError, EvalCarve


class DatasetUploadForm(forms.Form):
    file = forms.FileField(help_text="JSONL: one JSON object with a “messages” list per line.")
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the file name.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    split = forms.ChoiceField(
        choices=DatasetSplit.choices, initial=DatasetSplit.TRAIN, widget=forms.RadioSelect
    )
    carve_eval = forms.BooleanField(required=False, label="Carve an eval split off this file")
    eval_mode = forms.ChoiceField(
        choices=[("fraction", "Fraction"), ("count", "Count")],
        initial="fraction",
        required=False,
        widget=forms.RadioSelect,
    )
    eval_fraction = forms.FloatField(required=False, min_value=0.0, max_value=1.0, initial=0.1)
    eval_count = forms.IntegerField(required=False, min_value=1, initial=50)
    seed = forms.IntegerField(required=False, initial=0, min_value=0)

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("file")
        if upload is not None and not cleaned.get("name"):
            cleaned["name"] = Path(upload.name).stem[:200] or "dataset"
        cleaned["carve"] = None
        if cleaned.get("carve_eval"):
            if cleaned.get("split") != DatasetSplit.TRAIN:
                self.add_error("carve_eval", "An eval split can only be carved off a train file.")
                return cleaned
            mode = cleaned.get("eval_mode") or "fraction"
            value = cleaned.get("eval_fraction") if mode == "fraction" else cleaned.get("eval_count")
            field = "eval_fraction" if mode == "fraction" else "eval_count"
            if value is None:
                self.add_error(field, "Give the size of the eval split.")
                return cleaned
            try:
                cleaned["carve"] = EvalCarve(
                    fraction=value if mode == "fraction" else None,
                    count=value if mode == "count" else None,
                    seed=cleaned.get("seed") or 0,
                )
            except DatasetError as exc:
                self.add_error(field, str(exc))
        return cleaned
