"""Graders: create/edit from a per-type form or pasted grader JSON, delete, and "Run grader".

Secret fields of a spec — a `score_model`'s `api_key`, an `endpoint`'s header values and
`signing_secret`, also inside `multi` sub-graders — are kept out of `Grader.spec` and stored
encrypted in `Grader.secrets`, keyed by the grader's path ("" for the top level, "graders.a" for a
sub-grader). The spec keeps header names with empty values. What users see is the spec with masked
values (`••••1234`); pasting such a masked (or empty) value back keeps the stored secret, the same
write-only rule as tool headers. `grading_spec` puts the secrets back for grading.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from trainer.interfaces import GradeResult

from ..fields import mask_secret
from ..graders import GraderContext, GraderSpecError, build_grader, make_sample, run_grader
from ..models import Grader
from ..outbound import policy_from_settings
from . import rate_limits

MASK_PREFIX = "••••"
_SECRET_STRINGS = {"score_model": ("api_key",), "endpoint": ("signing_secret",)}


class GraderInUseError(Exception):
    """The grader scores at least one run and cannot be deleted."""


class GraderValidationError(ValidationError):
    """A spec that cannot be used. `by_path` maps field paths ("graders.a.reference") to messages."""

    def __init__(self, by_path: dict[str, list[str]]) -> None:
        self.by_path = by_path
        super().__init__({path or "spec": messages for path, messages in by_path.items()})


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_kept(value: Any) -> bool:
    """An empty or masked value in a submitted spec means "keep the stored secret"."""
    return value is None or value == "" or (isinstance(value, str) and value.startswith(MASK_PREFIX))


def grader_context(*, max_retries: int = 2) -> GraderContext:
    """What graders need from the server: the outbound SSRF policy and the default judge, from settings."""
    return GraderContext(
        policy=policy_from_settings(),
        judge_base_url=settings.RFT_JUDGE_BASE_URL,
        judge_api_key=settings.RFT_JUDGE_API_KEY,
        max_retries=max_retries,
    )


# --- secrets in and out of specs ------------------------------------------------------------------------------


def split_secrets(
    spec: Any, *, stored: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, dict[str, Any]], dict[str, list[str]]]:
    """(spec without secret values, secrets by grader path, problems by field path).

    Empty or masked values keep the secret stored at the same path; an endpoint header whose value
    is empty and has nothing stored is a problem.
    """
    stored = stored or {}
    public = copy.deepcopy(spec)
    secrets: dict[str, dict[str, Any]] = {}
    problems: dict[str, list[str]] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        old = stored.get(prefix) or {}
        found: dict[str, Any] = {}
        for key in _SECRET_STRINGS.get(kind, ()):
            if key not in node:
                continue
            value = node.pop(key)
            if _is_kept(value):
                if old.get(key):
                    found[key] = old[key]
                elif value:  # a masked value, but nothing is stored to keep
                    problems.setdefault(_join(prefix, key), []).append("enter the value")
            elif isinstance(value, str):
                found[key] = value
            else:
                problems.setdefault(_join(prefix, key), []).append("must be a string")
        headers = node.get("headers") if kind == "endpoint" else None
        if isinstance(headers, dict) and all(
            isinstance(value, str | type(None)) for value in headers.values()
        ):
            old_headers = {name.lower(): value for name, value in (old.get("headers") or {}).items()}
            kept: dict[str, str] = {}
            for name, value in headers.items():
                if _is_kept(value):
                    if str(name).lower() in old_headers:
                        kept[name] = old_headers[str(name).lower()]
                    else:
                        problems.setdefault(_join(prefix, "headers"), []).append(
                            f"{name}: enter the header value"
                        )
                        continue
                else:
                    kept[name] = value
            if kept:
                found["headers"] = kept
            node["headers"] = {name: "" for name in headers}
        if found:
            secrets[prefix] = found
        if kind == "multi" and isinstance(node.get("graders"), dict):
            for key, sub in node["graders"].items():
                walk(sub, _join(prefix, f"graders.{key}"))

    walk(public, "")
    return public, secrets, problems


def _apply(spec: Any, secrets: Mapping[str, Any], *, masked: bool) -> Any:
    result = copy.deepcopy(spec)

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        found = secrets.get(prefix) or {}
        for key in _SECRET_STRINGS.get(node.get("type"), ()):
            if found.get(key):
                node[key] = (mask_secret(found[key]) or MASK_PREFIX) if masked else found[key]
        if node.get("type") == "endpoint" and isinstance(node.get("headers"), dict):
            values = found.get("headers") or {}
            node["headers"] = {
                name: ((mask_secret(values[name]) or MASK_PREFIX) if masked else values[name])
                if name in values
                else value
                for name, value in node["headers"].items()
            }
        if node.get("type") == "multi" and isinstance(node.get("graders"), dict):
            for key, sub in node["graders"].items():
                walk(sub, _join(prefix, f"graders.{key}"))

    walk(result, "")
    return result


def mask_secrets_in(spec: Any) -> Any:
    """A submitted spec with its secret values masked, for showing it back after an error."""
    if not isinstance(spec, dict):
        return spec
    public, secrets, _problems = split_secrets(spec)
    return _apply(public, secrets, masked=True)


def masked_spec(grader: Grader) -> dict:
    """The spec as users see it: secret values masked (`••••1234`)."""
    return _apply(grader.spec, grader.secrets or {}, masked=True)


def grading_spec(grader: Grader) -> dict:
    """The full spec for grading (secrets included). Never show or log it."""
    return _apply(grader.spec, grader.secrets or {}, masked=False)


def build_grader_for(grader: Grader):
    """The grader object (trainer.interfaces.Grader) that scores rollouts with this stored grader."""
    return build_grader(grading_spec(grader), context=grader_context())


# --- validation and writes ---------------------------------------------------------------------------------


@dataclass
class CheckedSpec:
    spec: dict  # without secret values
    secrets: dict[str, dict[str, Any]]


def check_spec(spec: Any, *, stored_secrets: Mapping[str, Any] | None = None) -> CheckedSpec:
    """Split the secrets off and build the grader once; raises GraderValidationError by field path."""
    if not isinstance(spec, dict):
        raise GraderValidationError({"": ['A grader is a JSON object, e.g. {"type": "string_check", ...}.']})
    public, secrets, problems = split_secrets(spec, stored=stored_secrets)
    try:
        build_grader(_apply(public, secrets, masked=False), context=grader_context())
    except GraderSpecError as error:
        for path, messages in error.by_field().items():
            problems.setdefault(path, []).extend(messages)
    if problems:
        raise GraderValidationError(problems)
    return CheckedSpec(spec=public, secrets=secrets)


def _name_taken(*, owner, name: str, exclude_pk: int | None) -> bool:
    clash = Grader.objects.filter(owner=owner, name=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    return clash.exists()


def _save(grader: Grader) -> Grader:
    if _name_taken(owner=grader.owner, name=grader.name, exclude_pk=grader.pk):
        raise GraderValidationError({"name": [f"You already have a grader named {grader.name!r}."]})
    try:
        with transaction.atomic():
            grader.save()
    except IntegrityError as exc:
        raise GraderValidationError({"name": [f"You already have a grader named {grader.name!r}."]}) from exc
    return grader


def create_grader(*, owner, spec: Any) -> Grader:
    checked = check_spec(spec)
    grader = Grader(
        owner=owner,
        name=checked.spec["name"].strip(),
        type=checked.spec["type"],
        spec=checked.spec,
        secrets=checked.secrets,
    )
    return _save(grader)


def update_grader(*, grader: Grader, spec: Any) -> Grader:
    """Replace the spec (masked or empty secret values keep the stored ones); bumps `version` when
    the spec or a secret changed."""
    checked = check_spec(spec, stored_secrets=grader.secrets or {})
    changed = checked.spec != grader.spec or checked.secrets != (grader.secrets or {})
    grader.name = checked.spec["name"].strip()
    grader.type = checked.spec["type"]
    grader.spec = checked.spec
    grader.secrets = checked.secrets
    if changed:
        grader.version += 1
    return _save(grader)


def delete_grader(*, grader: Grader) -> None:
    runs = list(grader.runs.order_by("-created_at").values_list("name", flat=True)[:5])
    if runs:
        count = grader.runs.count()
        listed = ", ".join(repr(run) for run in runs) + (" and others" if count > len(runs) else "")
        raise GraderInUseError(
            f"The grader {grader.name} scores {count} run{'s' if count != 1 else ''} ({listed}); "
            "a run keeps its grader so that its scores stay explainable. Delete those runs first."
        )
    grader.delete()


# --- "Run grader" ---------------------------------------------------------------------------------------------


@dataclass
class GraderRunReport:
    score: float | None
    sub_scores: dict[str, float]
    errors: list[dict[str, str]]
    errors_by_type: dict[str, int]
    latency_ms: float
    trace_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "sub_scores": self.sub_scores,
            "errors": self.errors,
            "errors_by_type": self.errors_by_type,
            "latency_ms": round(self.latency_ms, 1),
            "trace_id": self.trace_id,
        }


def _report(result: GradeResult, *, trace_id: str, secrets: list[str], wall_ms: float) -> GraderRunReport:
    errors = []
    for error in result.errors:
        message = str(error.get("message", ""))
        for secret in secrets:
            if secret and len(secret) >= 4:
                message = message.replace(secret, MASK_PREFIX)
        errors.append({**error, "message": message})
    by_type: dict[str, int] = {}
    for error in errors:
        by_type[error.get("type", "error")] = by_type.get(error.get("type", "error"), 0) + 1
    return GraderRunReport(
        score=result.score,
        sub_scores=dict(result.sub_scores),
        errors=errors,
        errors_by_type=by_type,
        latency_ms=result.latency_ms or wall_ms,
        trace_id=trace_id,
    )


def _secret_values(secrets: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    for found in secrets.values():
        for key, value in found.items():
            if key == "headers":
                values.extend(value.values())
            elif isinstance(value, str):
                values.append(value)
    return values


def run_spec(
    *,
    spec: dict,
    secrets: Mapping[str, Any],
    output_text: str,
    output_tools: list[dict] | None = None,
    item: Mapping[str, Any] | None = None,
) -> GraderRunReport:
    """Grade one sample with a spec whose secrets are given separately (raises GraderValidationError)."""
    sample = make_sample(output_text=output_text, output_tools=output_tools or [])
    started = time.perf_counter()
    try:
        # One try per call: the panel answers quickly; rollouts retry (see grader_context).
        result = run_grader(
            _apply(spec, secrets, masked=False), sample, item or {}, context=grader_context(max_retries=0)
        )
    except GraderSpecError as error:
        raise GraderValidationError(error.by_field()) from error
    return _report(
        result,
        trace_id=sample["trace_id"],
        secrets=_secret_values(secrets),
        wall_ms=(time.perf_counter() - started) * 1000,
    )


def run_stored_grader(
    *,
    grader: Grader,
    output_text: str,
    output_tools: list[dict] | None = None,
    item: Mapping[str, Any] | None = None,
    user=None,
) -> GraderRunReport:
    """The "Run grader" panel: score a sample answer against a sample item with the saved grader.

    Rate-limited per user (`user`, else the grader's owner): raises rate_limits.RateLimited."""
    rate_limits.check_rate(user=user if user is not None else grader.owner, action="grader_run")
    return run_spec(
        spec=grader.spec,
        secrets=grader.secrets or {},
        output_text=output_text,
        output_tools=output_tools,
        item=item,
    )
