"""Tool forms: the create/edit form (headers as repeated name/value rows), import and "Try it"."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from ..fields import mask_secret
from ..models import Tool
from ..outbound import check_outbound_url

DEFAULT_PARAMETERS = {"type": "object", "properties": {}, "required": []}


# PostgreSQL's jsonb does not keep key order; show the keys people expect first.
_KEY_ORDER = (
    "type",
    "name",
    "description",
    "messages",
    "model",
    "url",
    "input",
    "reference",
    "operation",
    "evaluation_metric",
    "metric",
    "properties",
    "required",
    "graders",
    "calculate_output",
)


def display_order(value: Any) -> Any:
    """`value` with dict keys in a readable order (known keys first, the rest as they come)."""
    if isinstance(value, dict):
        first = [key for key in _KEY_ORDER if key in value]
        rest = [key for key in value if key not in _KEY_ORDER]
        return {key: display_order(value[key]) for key in [*first, *rest]}
    if isinstance(value, list):
        return [display_order(item) for item in value]
    return value


def pretty_json(value: Any) -> str:
    return json.dumps(display_order(value), indent=2, ensure_ascii=False)


class JSONTextField(forms.CharField):
    """A textarea holding JSON; `clean` returns the parsed value, errors say line and column."""

    widget = forms.Textarea

    def __init__(self, *, allow_empty: bool = False, **kwargs: Any) -> None:
        self.allow_empty = allow_empty
        kwargs.setdefault("required", not allow_empty)
        super().__init__(strip=True, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            return pretty_json(value)
        return value

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from exc


def json_textarea(rows: int = 10, **attrs: str) -> forms.Textarea:
    return forms.Textarea(attrs={"rows": rows, "spellcheck": "false", "data-json-editor": "", **attrs})


class HeaderRow:
    """One row of the headers editor; `masked` shows the stored value's tail (never the value)."""

    def __init__(self, name: str = "", masked: str = "", retype: bool = False) -> None:
        self.name, self.masked, self.retype = name, masked, retype


class ToolForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        help_text="The function name the model calls: letters, digits, _ or -.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    description = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What the tool does and when to use it; the model reads this.",
    )
    parameters = JSONTextField(
        widget=json_textarea(12),
        help_text="JSON Schema of the arguments (an object schema, as in OpenAI function definitions).",
    )
    url = forms.CharField(
        label="Endpoint URL",
        validators=[check_outbound_url],  # the outbound URL rule, as when the tool is called
        widget=forms.URLInput(attrs={"placeholder": "https://tools.example.com/search"}),
    )
    signing_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text='Optional. Calls then carry X-RFT-Signature: t=…,v1=HMAC-SHA256 of "t.body".',
    )
    clear_signing_secret = forms.BooleanField(required=False, label="Remove the signing secret")
    timeout_s = forms.FloatField(label="Timeout (s)", initial=30.0, min_value=0.1, max_value=600)
    max_response_bytes = forms.IntegerField(
        label="Max response (bytes)", initial=1_000_000, min_value=1, max_value=100_000_000
    )

    def __init__(self, *args: Any, instance: Tool | None = None, **kwargs: Any) -> None:
        self.instance = instance
        if instance is not None and not args and "data" not in kwargs:
            kwargs.setdefault(
                "initial",
                {
                    "name": instance.name,
                    "description": instance.description,
                    "parameters": instance.parameters,
                    "url": instance.url,
                    "timeout_s": instance.timeout_s,
                    "max_response_bytes": instance.max_response_bytes,
                },
            )
        kwargs.setdefault("initial", {}).setdefault("parameters", DEFAULT_PARAMETERS)
        super().__init__(*args, **kwargs)
        stored = (instance.headers or {}) if instance is not None else {}
        if self.is_bound:
            names = self.data.getlist("header_name") if hasattr(self.data, "getlist") else []
            values = self.data.getlist("header_value") if hasattr(self.data, "getlist") else []
            # Values typed in a failed submission are not sent back to the browser (write-only).
            self.header_rows = [
                HeaderRow(
                    name=name,
                    masked=mask_secret(stored[name]) if name in stored else "",
                    retype=bool(value.strip()),
                )
                for name, value in zip(names, values, strict=False)
                if name.strip() or value.strip()
            ]
            self.submitted_headers = list(zip(names, values, strict=False))
        else:
            self.header_rows = [
                HeaderRow(name=name, masked=mask_secret(value)) for name, value in stored.items()
            ]
            self.submitted_headers = []
        if not self.header_rows:
            self.header_rows = [HeaderRow()]
        self.signing_secret_masked = mask_secret(instance.signing_secret) if instance is not None else ""
        self.headers_error: list[str] = []

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "description": data["description"],
            "parameters": data["parameters"],
            "url": data["url"],
            "headers": self.submitted_headers,
            "signing_secret": data["signing_secret"] or None,
            "timeout_s": data["timeout_s"],
            "max_response_bytes": data["max_response_bytes"],
        }

    def add_service_errors(self, error: ValidationError) -> None:
        """Place a service's ValidationError next to the fields it names."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error)
            return
        for field, messages in error.message_dict.items():
            if field == "headers":
                self.headers_error.extend(messages)
            elif field in self.fields:
                self.add_error(field, messages)
            else:
                self.add_error(None, [f"{field}: {message}" for message in messages])


class ToolImportForm(forms.Form):
    definition = forms.CharField(
        label="OpenAI function definition",
        widget=json_textarea(
            8,
            placeholder='{"type": "function", "function": {"name": "grep", "description": "…", "parameters": {…}}}',
        ),
    )


class ToolTryForm(forms.Form):
    arguments = JSONTextField(
        label="Sample arguments",
        widget=json_textarea(5),
        help_text="The JSON arguments the model would write.",
    )
    item = JSONTextField(
        label="Sample item (optional)",
        allow_empty=True,
        widget=json_textarea(4, placeholder='{"messages": [...], "answer": "…"}'),
        help_text='The dataset row sent as "item" (tools can use it to set up per-task state).',
    )

    def clean_arguments(self) -> Any:
        value = self.cleaned_data["arguments"]
        if not isinstance(value, dict):
            raise ValidationError('Arguments are a JSON object, e.g. {"pattern": "TODO"}.')
        return value

    def clean_item(self) -> Any:
        value = self.cleaned_data["item"]
        if value is not None and not isinstance(value, dict):
            raise ValidationError("The item is a JSON object (one dataset row).")
        return value or {}


def sample_arguments(parameters: dict) -> dict[str, Any]:
    """Placeholder arguments built from a schema, so that "Try it" starts from something sendable."""
    samples = {"string": "", "number": 0, "integer": 0, "boolean": False, "array": [], "object": {}}
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict):
        return {}
    arguments: dict[str, Any] = {}
    for name, schema in properties.items():
        if not isinstance(schema, dict):
            continue
        if "default" in schema:
            arguments[name] = schema["default"]
        elif isinstance(schema.get("enum"), list) and schema["enum"]:
            arguments[name] = schema["enum"][0]
        elif "example" in schema:
            arguments[name] = schema["example"]
        else:
            kind = schema.get("type")
            arguments[name] = samples.get(kind if isinstance(kind, str) else "string", "")
    return arguments


__all__ = [
    "JSONTextField",
    "ToolForm",
    "ToolImportForm",
    "ToolTryForm",
    "pretty_json",
    "sample_arguments",
]
