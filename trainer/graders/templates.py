"""`{{item.x}}`, `{{sample.output_text}}`, `{{sample.output_json.x}}`,
`{{sample.output_tools[0].function.name}}`: the template language of grader fields.

A template that is exactly one placeholder resolves to the raw value (a list stays a list for set
scoring); anywhere else values are rendered as text (strings as they are, numbers plainly, other
values as JSON). A path that does not exist is an error, not an empty string: a silently empty
reference would score every rollout wrongly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.graders.errors import GraderError

_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_SEGMENT = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[\s*"([^"]*)"\s*\]|\[\s*'([^']*)'\s*\]""")
_ROOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ROOTS = ("item", "sample")
_MISSING = object()


@dataclass(frozen=True)
class TemplatePath:
    root: str
    segments: tuple[str | int, ...]
    text: str


def parse_path(expression: str) -> TemplatePath:
    """Parse `sample.output_tools[0].function.name`; raises ValueError with the reason."""
    root_match = _ROOT.match(expression)
    if not root_match:
        raise ValueError(f"{{{{{expression}}}}} must start with item or sample")
    root = root_match.group(0)
    if root not in ROOTS:
        raise ValueError(f"{{{{{expression}}}}}: unknown root {root!r} (use item or sample)")
    segments: list[str | int] = []
    position = root_match.end()
    while position < len(expression):
        match = _SEGMENT.match(expression, position)
        if not match:
            raise ValueError(f"{{{{{expression}}}}}: cannot read the path at {expression[position:]!r}")
        name, index, quoted, single = match.groups()
        segments.append(int(index) if index is not None else (name or quoted or single or ""))
        position = match.end()
    return TemplatePath(root=root, segments=tuple(segments), text=expression)


def validate_template(template: str) -> list[str]:
    """The problems of a template (empty when it is fine)."""
    problems = []
    for expression in _PLACEHOLDER.findall(template):
        try:
            parse_path(expression)
        except ValueError as exc:
            problems.append(str(exc))
    if template.count("{{") != len(_PLACEHOLDER.findall(template)):
        problems.append("unbalanced {{ }}")
    return problems


class TemplateContext:
    """The values templates can reach; `sample.output_json` is parsed from the output text on demand."""

    def __init__(self, *, sample: Mapping[str, Any], item: Mapping[str, Any]) -> None:
        self.sample = sample
        self.item = item
        self._output_json: Any = _MISSING

    def output_json(self) -> Any:
        if self._output_json is _MISSING:
            if "output_json" in self.sample and self.sample["output_json"] is not None:
                self._output_json = self.sample["output_json"]
            else:
                text = str(self.sample.get("output_text") or "")
                try:
                    self._output_json = json.loads(text)
                except ValueError as exc:
                    raise GraderError(
                        "template", f"sample.output_json: the output text is not JSON ({exc.msg})"
                    ) from exc
        return self._output_json

    def lookup(self, path: TemplatePath) -> Any:
        segments = list(path.segments)
        if path.root == "item":
            value: Any = self.item
        elif segments and segments[0] == "output_json":
            value = self.output_json()
            segments = segments[1:]
        else:
            value = self.sample
        walked = path.root if path.root == "item" or not path.segments else f"sample.{path.segments[0]}"
        for segment in segments:
            if isinstance(segment, int):
                if not isinstance(value, list | tuple) or segment >= len(value):
                    raise GraderError("template", f"{{{{{path.text}}}}}: {walked} has no element [{segment}]")
                value = value[segment]
                walked += f"[{segment}]"
            else:
                if not isinstance(value, Mapping) or segment not in value:
                    raise GraderError("template", f"{{{{{path.text}}}}}: {walked} has no field {segment!r}")
                value = value[segment]
                walked += f".{segment}"
        return value


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def render(template: str, context: TemplateContext) -> str:
    """The template with every placeholder replaced by its value as text."""
    return _PLACEHOLDER.sub(lambda match: to_text(context.lookup(_parse_or_fail(match.group(1)))), template)


def resolve(template: str, context: TemplateContext) -> Any:
    """The raw value when the template is exactly one placeholder, else the rendered text."""
    match = _PLACEHOLDER.fullmatch(template.strip())
    if match:
        return context.lookup(_parse_or_fail(match.group(1)))
    return render(template, context)


def _parse_or_fail(expression: str) -> TemplatePath:
    try:
        return parse_path(expression)
    except ValueError as exc:
        raise GraderError("template", str(exc)) from exc
