"""Forms to register MCP servers and environments; header values are secrets (write-only)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from ..models import Environment, McpServer
from ..services import tools as tool_services

HEADERS_HELP = (
    'One "Name: value" per line, encrypted at rest and never shown again; a line with a name and '
    "no value keeps the stored value."
)


def parse_header_lines(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in (text or "").splitlines():
        if line.strip():
            name, _, value = line.partition(":")
            pairs.append((name.strip(), value.strip()))
    return pairs


class _HeadersForm(forms.ModelForm):
    header_lines = forms.CharField(
        required=False, label="Headers", widget=forms.Textarea(attrs={"rows": 3}), help_text=HEADERS_HELP
    )

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        if self.instance.pk:
            self.fields["header_lines"].initial = "\n".join(
                f"{name}:" for name in self.instance.headers or {}
            )

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        clash = type(self.instance).objects.filter(owner=self.owner, name=name).exclude(pk=self.instance.pk)
        if clash.exists():
            raise ValidationError(f"You already have one named {name!r}.")
        return name

    def clean_header_lines(self):
        stored = dict(self.instance.headers or {}) if self.instance.pk else {}
        try:
            return tool_services.merge_headers(
                submitted=parse_header_lines(self.cleaned_data["header_lines"]), stored=stored
            )
        except ValidationError as error:
            raise ValidationError(error.messages) from error

    def save(self, commit=True):
        instance = super().save(commit=False)
        instance.owner = self.owner
        instance.headers = self.cleaned_data["header_lines"]
        if commit:
            instance.save()
        return instance


class McpServerForm(_HeadersForm):
    class Meta:
        model = McpServer
        fields = ["name", "url", "timeout_s", "max_response_bytes"]
        labels = {"url": "URL (streamable HTTP)", "timeout_s": "Timeout (s)"}


class EnvironmentForm(_HeadersForm):
    signing_secret_text = forms.CharField(
        required=False,
        label="Signing secret",
        widget=forms.PasswordInput(render_value=False),
        help_text="Signs start and end (X-RFT-Signature) like tool calls; empty keeps the stored one.",
    )

    class Meta:
        model = Environment
        fields = ["name", "start_url", "end_url", "start_timeout_s", "end_timeout_s", "max_live"]
        labels = {
            "start_url": "Start URL",
            "end_url": "End URL",
            "start_timeout_s": "Start timeout (s)",
            "end_timeout_s": "End timeout (s)",
            "max_live": "Most environments alive at once (per run)",
        }

    def save(self, commit=True):
        instance = super().save(commit=False)
        if self.cleaned_data.get("signing_secret_text"):
            instance.signing_secret = self.cleaned_data["signing_secret_text"]
        if commit:
            instance.save()
        return instance


class TryForm(forms.Form):
    tool = forms.CharField(required=False)
    arguments = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), initial="{}")

    def clean_arguments(self):
        import json

        text = self.cleaned_data["arguments"].strip() or "{}"
        try:
            value = json.loads(text)
        except ValueError as error:
            raise ValidationError(f"Arguments are JSON: {error}") from error
        if not isinstance(value, dict):
            raise ValidationError("Arguments are a JSON object.")
        return value
