"""Grader forms: one small form per grader type (each builds grader JSON), pasted JSON, "Run grader".

Every way in ends as grader JSON checked by `services.graders` (through `build_grader`); the
errors come back keyed by field path and are placed next to the form field they name.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from trainer.graders.sandbox import sandbox_packages
from trainer.graders.similarity import EMBEDDING_METRICS, METRICS
from trainer.graders.types import SET_METRICS, STRING_OPERATIONS

from ..fields import mask_secret
from .tools import HeaderRow, JSONTextField, json_textarea, pretty_json

TEMPLATE_ATTRS = {"class": "mono", "spellcheck": "false", "autocomplete": "off"}

GRADER_TYPE_CHOICES = [
    ("string_check", "String check"),
    ("text_similarity", "Text similarity"),
    ("set_match", "Set match (F1)"),
    ("score_model", "Model judge"),
    ("label_model", "Model labeler"),
    ("python", "Python"),
    ("endpoint", "Endpoint"),
    ("multi", "Multi (formula)"),
]
GRADER_TYPE_HELP = {
    "string_check": "Compares a rendered input with a reference: eq, ne, like (contains), ilike (contains, any case). 1 or 0.",
    "text_similarity": "A similarity between 0 and 1: fuzzy_match, BLEU, GLEU, METEOR, ROUGE or token F1; cosine (-1 to 1) through an embeddings endpoint.",
    "set_match": "Precision, recall or F1 of the items the model names (e.g. file paths) against a reference list.",
    "score_model": "Asks an OpenAI-compatible chat model for a score, parsed and clipped to the range.",
    "label_model": "Asks an OpenAI-compatible chat model to pick one of the labels: 1 when it picks a passing label, else 0.",
    "python": "def grade(sample, item) -> float, run in a sandbox: no network, time and memory limits.",
    "endpoint": 'POSTs {"sample", "item", "trace_id"} to your URL and reads {"score": …}; the sample holds the full trajectory.',
    "multi": "Named sub-graders combined by a formula: + - * / ^, min max abs floor ceil exp sqrt log.",
}


def template_input(placeholder: str) -> forms.TextInput:
    return forms.TextInput(attrs={**TEMPLATE_ATTRS, "placeholder": placeholder})


class GraderTypeForm(forms.Form):
    """Common base: `to_spec()` builds grader JSON; `field_for_path` places a path's error."""

    grader_type = ""
    # Spec keys this form edits; other keys of the stored spec (e.g. pass_threshold) are kept.
    managed_keys: tuple[str, ...] = ()
    # Keys left out when they hold this default and the stored spec did not have them, so that
    # saving an unchanged form does not change the spec (and its version).
    defaults: dict[str, Any] = {}

    def __init__(self, *args: Any, original: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.original = original or {}

    def to_spec(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, spec: dict[str, Any]) -> dict[str, Any]:
        for key, value in self.original.items():
            if key not in spec and key not in self.managed_keys and key not in ("type", "name"):
                spec[key] = value
        for key, default in self.defaults.items():
            if key in spec and spec[key] == default and key not in self.original:
                del spec[key]
        return spec

    @classmethod
    def initial_from_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in spec.items() if key in cls.base_fields}

    def field_for_path(self, path: str) -> str | None:
        head = path.split(".")[0].split("[")[0]
        return head if head in self.fields else None


class StringCheckForm(GraderTypeForm):
    grader_type = "string_check"
    managed_keys = ("input", "reference", "operation")
    defaults = {}
    input = forms.CharField(initial="{{sample.output_text}}", widget=template_input("{{sample.output_text}}"))
    reference = forms.CharField(initial="{{item.answer}}", widget=template_input("{{item.answer}}"))
    operation = forms.ChoiceField(choices=[(op, op) for op in STRING_OPERATIONS], initial="eq")

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        return self.finish(
            {
                "type": "string_check",
                "name": name,
                "input": data["input"],
                "reference": data["reference"],
                "operation": data["operation"],
            }
        )


class TextSimilarityForm(GraderTypeForm):
    grader_type = "text_similarity"
    managed_keys = ("input", "reference", "evaluation_metric")
    defaults = {}
    input = forms.CharField(initial="{{sample.output_text}}", widget=template_input("{{sample.output_text}}"))
    reference = forms.CharField(initial="{{item.answer}}", widget=template_input("{{item.answer}}"))
    evaluation_metric = forms.ChoiceField(
        choices=[(m, m) for m in METRICS + EMBEDDING_METRICS],
        initial="fuzzy_match",
        help_text="cosine compares embeddings from the server's embeddings endpoint (RFT_EMBEDDINGS_BASE_URL).",
    )

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        return self.finish(
            {
                "type": "text_similarity",
                "name": name,
                "input": data["input"],
                "reference": data["reference"],
                "evaluation_metric": data["evaluation_metric"],
            }
        )


class SetMatchForm(GraderTypeForm):
    grader_type = "set_match"
    managed_keys = ("input", "reference", "metric", "pattern", "case_sensitive")
    defaults = {"metric": "f1", "case_sensitive": True}
    input = forms.CharField(initial="{{sample.output_text}}", widget=template_input("{{sample.output_text}}"))
    reference = forms.CharField(
        initial="{{item.reference_files}}", widget=template_input("{{item.reference_files}}")
    )
    metric = forms.ChoiceField(choices=[(m, m) for m in SET_METRICS], initial="f1")
    pattern = forms.CharField(
        required=False,
        widget=template_input(r"[\w./-]+\.py"),
        help_text="Optional regular expression that picks the items out of the model's text.",
    )
    case_sensitive = forms.BooleanField(required=False, initial=True)

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        spec = {
            "type": "set_match",
            "name": name,
            "input": data["input"],
            "reference": data["reference"],
            "metric": data["metric"],
            "case_sensitive": data["case_sensitive"],
        }
        if data["pattern"]:
            spec["pattern"] = data["pattern"]
        return self.finish(spec)


class ScoreModelForm(GraderTypeForm):
    grader_type = "score_model"
    managed_keys = ("model", "base_url", "api_key", "input", "range")
    defaults = {"range": [0.0, 1.0]}
    model = forms.CharField(widget=forms.TextInput(attrs={**TEMPLATE_ATTRS, "placeholder": "gpt-4o-mini"}))
    base_url = forms.CharField(
        label="Base URL",
        required=False,
        widget=forms.TextInput(attrs={**TEMPLATE_ATTRS, "placeholder": "https://api.openai.com/v1"}),
        help_text="An OpenAI-compatible endpoint (…/chat/completions is appended).",
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    input = JSONTextField(
        label="Messages",
        initial=[
            {"role": "system", "content": "You grade answers. Reply with a score from 0 to 1."},
            {
                "role": "user",
                "content": "Reference: {{item.answer}}\nAnswer: {{sample.output_text}}\nScore:",
            },
        ],
        widget=json_textarea(7),
        help_text="A list of {role, content}; contents may use {{item.x}} and {{sample.output_text}}.",
    )
    range_low = forms.FloatField(label="Range from", initial=0.0)
    range_high = forms.FloatField(label="to", initial=1.0)

    def __init__(self, *args: Any, stored_api_key_masked: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored_api_key_masked = stored_api_key_masked

    @classmethod
    def initial_from_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        initial = {key: spec[key] for key in ("model", "base_url", "input") if key in spec}
        low, high = (spec.get("range") or [0, 1])[:2]
        initial.update(range_low=low, range_high=high)
        return initial

    def field_for_path(self, path: str) -> str | None:
        if path.startswith("range"):
            return "range_low"
        return super().field_for_path(path)

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        spec = {
            "type": "score_model",
            "name": name,
            "model": data["model"],
            "input": data["input"],
            "range": [data["range_low"], data["range_high"]],
        }
        return self.finish(self.with_endpoint(spec))

    def with_endpoint(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The judge's base URL and key, when given (an empty key keeps the stored one)."""
        data = self.cleaned_data
        if data["base_url"]:
            spec["base_url"] = data["base_url"]
        if data["api_key"]:
            spec["api_key"] = data["api_key"]
        elif self.stored_api_key_masked:
            spec["api_key"] = ""  # keep the stored key
        return spec


def _label_list(value: str) -> list[str]:
    return [label.strip() for label in value.replace("\n", ",").split(",") if label.strip()]


class LabelModelForm(ScoreModelForm):
    grader_type = "label_model"
    managed_keys = ("model", "base_url", "api_key", "input", "labels", "passing_labels")
    defaults = {}
    range_low = None
    range_high = None
    input = JSONTextField(
        label="Messages",
        initial=[
            {"role": "system", "content": "Classify the answer as correct or incorrect."},
            {"role": "user", "content": "Reference: {{item.answer}}\nAnswer: {{sample.output_text}}"},
        ],
        widget=json_textarea(7),
        help_text="A list of {role, content}; contents may use {{item.x}} and {{sample.output_text}}.",
    )
    labels = forms.CharField(
        widget=forms.TextInput(attrs={**TEMPLATE_ATTRS, "placeholder": "positive, neutral, negative"}),
        help_text="The labels the model picks from, separated by commas.",
    )
    passing_labels = forms.CharField(
        widget=forms.TextInput(attrs={**TEMPLATE_ATTRS, "placeholder": "positive"}),
        help_text="The labels that score 1 (the others score 0).",
    )

    @classmethod
    def initial_from_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        initial = {key: spec[key] for key in ("model", "base_url", "input") if key in spec}
        for key in ("labels", "passing_labels"):
            if isinstance(spec.get(key), list):
                initial[key] = ", ".join(str(label) for label in spec[key])
        return initial

    def field_for_path(self, path: str) -> str | None:
        return GraderTypeForm.field_for_path(self, path)

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        spec = {
            "type": "label_model",
            "name": name,
            "model": data["model"],
            "input": data["input"],
            "labels": _label_list(data["labels"]),
            "passing_labels": _label_list(data["passing_labels"]),
        }
        return self.finish(self.with_endpoint(spec))


class PythonForm(GraderTypeForm):
    grader_type = "python"
    managed_keys = ("source",)
    defaults = {}
    source = forms.CharField(
        initial=(
            "def grade(sample, item) -> float:\n"
            '    answer = sample["output_text"].strip().lower()\n'
            '    return 1.0 if answer == str(item.get("answer", "")).strip().lower() else 0.0\n'
        ),
        widget=forms.Textarea(attrs={"rows": 10, "class": "mono", "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        packages = sandbox_packages()
        installed = [f"{p.module} {p.version}" for p in packages if p.version]
        missing = [p.name for p in packages if not p.version]
        help_text = (
            "Importable in the sandbox: " + (", ".join(installed) or "the standard library only") + "."
        )
        if missing:
            help_text += f" Not installed here: {', '.join(missing)} (pip install 'rftweb[graders]')."
        self.fields["source"].help_text = help_text

    def to_spec(self, name: str) -> dict[str, Any]:
        return self.finish({"type": "python", "name": name, "source": self.cleaned_data["source"]})


class EndpointForm(GraderTypeForm):
    grader_type = "endpoint"
    managed_keys = ("url", "headers", "signing_secret", "timeout_s")
    defaults = {"timeout_s": 30.0, "headers": {}}
    url = forms.CharField(
        label="URL",
        widget=forms.URLInput(attrs={**TEMPLATE_ATTRS, "placeholder": "https://grader.example.com/grade"}),
    )
    signing_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    timeout_s = forms.FloatField(label="Timeout (s)", initial=30.0, min_value=0.1, max_value=600)

    def __init__(
        self,
        *args: Any,
        stored_headers: dict[str, str] | None = None,
        stored_signing_secret_masked: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        stored = stored_headers or {}
        self.stored_signing_secret_masked = stored_signing_secret_masked
        if self.is_bound:
            names = self.data.getlist(self.add_prefix("header_name"))
            values = self.data.getlist(self.add_prefix("header_value"))
            self.submitted_headers = list(zip(names, values, strict=False))
            self.header_rows = [
                HeaderRow(name=name, masked=stored.get(name, ""), retype=bool(value.strip()))
                for name, value in self.submitted_headers
                if name.strip() or value.strip()
            ]
        else:
            self.submitted_headers = []
            self.header_rows = [HeaderRow(name=name, masked=masked) for name, masked in stored.items()]
        if not self.header_rows:
            self.header_rows = [HeaderRow()]
        self.headers_error: list[str] = []

    @classmethod
    def initial_from_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {key: spec[key] for key in ("url", "timeout_s") if key in spec}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        problems = []
        seen = set()
        for name, value in self.submitted_headers:
            if not name.strip() and value.strip():
                problems.append("A header value was given without a name.")
            if name.strip().lower() in seen:
                problems.append(f"The header {name.strip()} is listed twice.")
            seen.add(name.strip().lower())
        if problems:
            self.headers_error.extend(problems)
            raise ValidationError("Check the headers.")
        return cleaned

    def field_for_path(self, path: str) -> str | None:
        if path.split(".")[0] == "headers":
            return "headers"
        return super().field_for_path(path)

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        spec: dict[str, Any] = {
            "type": "endpoint",
            "name": name,
            "url": data["url"],
            # An empty value keeps the stored value of that header (write-only).
            "headers": {
                name.strip(): value.strip() for name, value in self.submitted_headers if name.strip()
            },
            "timeout_s": data["timeout_s"],
        }
        if data["signing_secret"]:
            spec["signing_secret"] = data["signing_secret"]
        elif self.stored_signing_secret_masked:
            spec["signing_secret"] = ""
        return self.finish(spec)


class MultiForm(GraderTypeForm):
    grader_type = "multi"
    managed_keys = ("graders", "calculate_output")
    defaults = {}
    graders = JSONTextField(
        label="Sub-graders",
        initial={
            "exact": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            },
            "close": {
                "type": "text_similarity",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        widget=json_textarea(12),
        help_text="An object of named graders; the names are the formula's variables.",
    )
    calculate_output = forms.CharField(
        label="Formula", initial="0.5 * exact + 0.5 * close", widget=template_input("0.7 * a + 0.3 * b")
    )

    @classmethod
    def initial_from_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {key: spec[key] for key in ("graders", "calculate_output") if key in spec}

    def clean_graders(self) -> Any:
        value = self.cleaned_data["graders"]
        if not isinstance(value, dict):
            raise ValidationError('Sub-graders are a JSON object: {"a": {"type": …}, "b": {…}}.')
        return value

    def to_spec(self, name: str) -> dict[str, Any]:
        data = self.cleaned_data
        return self.finish(
            {
                "type": "multi",
                "name": name,
                "graders": data["graders"],
                "calculate_output": data["calculate_output"],
            }
        )


TYPE_FORMS: dict[str, type[GraderTypeForm]] = {
    form.grader_type: form
    for form in (
        StringCheckForm,
        TextSimilarityForm,
        SetMatchForm,
        ScoreModelForm,
        LabelModelForm,
        PythonForm,
        EndpointForm,
        MultiForm,
    )
}


def type_forms(
    *,
    data: Any = None,
    bound_type: str | None = None,
    spec: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, GraderTypeForm]:
    """One form per type (prefixed with the type); only `bound_type`'s form gets `data` (the
    others keep showing their defaults); the stored spec fills its type's form."""
    secrets_here = (secrets or {}).get("", {})
    forms_by_type = {}
    for grader_type, form_class in TYPE_FORMS.items():
        kwargs: dict[str, Any] = {"prefix": grader_type}
        if spec and spec.get("type") == grader_type:
            kwargs["initial"] = form_class.initial_from_spec(spec)
            kwargs["original"] = spec
        if grader_type == "endpoint":
            kwargs["stored_headers"] = (
                {name: mask_secret(value) for name, value in (secrets_here.get("headers") or {}).items()}
                if spec and spec.get("type") == "endpoint"
                else {}
            )
            if spec and spec.get("type") == "endpoint":
                # Header names without stored values (none should exist) still show up as rows.
                for name in spec.get("headers") or {}:
                    kwargs["stored_headers"].setdefault(name, "")
            kwargs["stored_signing_secret_masked"] = (
                mask_secret(secrets_here.get("signing_secret"))
                if spec and spec.get("type") == "endpoint"
                else ""
            )
        if grader_type in ("score_model", "label_model"):
            kwargs["stored_api_key_masked"] = (
                mask_secret(secrets_here.get("api_key")) if spec and spec.get("type") == grader_type else ""
            )
        bound = data is not None and grader_type == bound_type
        forms_by_type[grader_type] = form_class(data, **kwargs) if bound else form_class(**kwargs)
    return forms_by_type


class GraderBaseForm(forms.Form):
    """Name and type, shared by the per-type forms."""

    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"autocomplete": "off"}))
    type = forms.ChoiceField(choices=GRADER_TYPE_CHOICES, initial="string_check", widget=forms.RadioSelect)


class GraderJSONForm(forms.Form):
    spec = JSONTextField(
        label="Grader JSON",
        widget=json_textarea(
            14,
            placeholder='{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", '
            '"reference": "{{item.answer}}", "operation": "eq"}',
        ),
    )


class GraderRunForm(forms.Form):
    output_text = forms.CharField(
        label="Model output",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "The model's final answer"}),
    )
    output_tools = JSONTextField(
        label="Tool calls (optional)",
        allow_empty=True,
        widget=json_textarea(
            3,
            placeholder='[{"id": "call_1", "type": "function", "function": {"name": "grep", "arguments": "{\\"pattern\\": \\"TODO\\"}"}}]',
        ),
        help_text="OpenAI-shaped tool calls the model made: sample.output_tools.",
    )
    item = JSONTextField(
        label="Sample item",
        allow_empty=True,
        widget=json_textarea(
            5, placeholder='{"messages": [{"role": "user", "content": "…"}], "answer": "…"}'
        ),
        help_text="The dataset row: {{item.x}} reaches its fields.",
    )

    def clean_output_tools(self) -> list[dict[str, Any]]:
        value = self.cleaned_data["output_tools"]
        if value is None:
            return []
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
            raise ValidationError("Tool calls are a JSON list of objects.")
        return value

    def clean_item(self) -> dict[str, Any]:
        value = self.cleaned_data["item"]
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValidationError("The item is a JSON object (one dataset row).")
        return value


def spec_text(spec: dict[str, Any]) -> str:
    return pretty_json(spec)


__all__ = [
    "GRADER_TYPE_CHOICES",
    "GRADER_TYPE_HELP",
    "TYPE_FORMS",
    "GraderBaseForm",
    "GraderJSONForm",
    "GraderRunForm",
    "spec_text",
    "type_forms",
]
