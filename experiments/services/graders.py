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

from trainer.graders import (
    GraderContext,
    GraderSpecError,
    build_grader,
    make_sample,
    run_grader,
    unmet_requirements,
)
from trainer.graders.spec import derived_multi_name
from trainer.interfaces import GradeResult

from ..fields import mask_secret
from ..models import Grader
from ..outbound import policy_from_settings
from . import rate_limits

MASK_PREFIX = "••••"
_SECRET_STRINGS = {
    "score_model": ("api_key",),
    "label_model": ("api_key",),
    "text_similarity": ("api_key",),
    "endpoint": ("signing_secret",),
}


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
        embeddings_base_url=settings.RFT_EMBEDDINGS_BASE_URL,
        embeddings_api_key=settings.RFT_EMBEDDINGS_API_KEY,
        embeddings_model=settings.RFT_EMBEDDINGS_MODEL,
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


def grader_needs(grader: Grader) -> list[str]:
    """What this server lacks for the grader to score (e.g. "needs a judge endpoint: ..."), by
    sub-grader path; empty when it can score. A grader saved before the server changed (a judge
    removed, a spec no longer valid) reports that too instead of failing the page."""
    try:
        built = build_grader_for(grader)
    except GraderSpecError as error:
        return [f"the saved spec is no longer valid: {message}" for message in error.errors]
    return unmet_requirements(built)


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


def mask_checked(checked: CheckedSpec) -> dict:
    """A checked spec as users may see it: secret values masked."""
    return _apply(checked.spec, checked.secrets, masked=True)


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


def _derive_name(*, owner, spec: dict) -> None:
    """Give a grader pasted without a name (a multi grader, as in the graders guide) the name the
    grader builder derives, numbered when the user already has one by that name."""
    if spec.get("name") is not None or spec.get("type") != "multi":
        return
    base = derived_multi_name(spec)
    name, number = base, 2
    while _name_taken(owner=owner, name=name, exclude_pk=None):
        name, number = f"{base} ({number})", number + 1
    spec["name"] = name


def create_grader(*, owner, spec: Any) -> Grader:
    checked = check_spec(spec)
    _derive_name(owner=owner, spec=checked.spec)
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
    if checked.spec.get("name") is None:
        checked.spec["name"] = grader.name
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


# --- the hosted grader API shape (`/api/v1/graders/run`, `/validate`) -------------------------------------------

# The error flags of the hosted response's `metadata.errors`, all present (false) in every answer.
HOSTED_ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)
_PYTHON_RUNTIME_ERRORS = {"exception", "timeout", "memory", "output_too_large", "invalid_score"}
_MODEL_TYPES = {"score_model", "label_model", "text_similarity", "endpoint"}


def _types_by_label(spec: Mapping[str, Any], label: str, found: dict[str, str], *, top: bool) -> None:
    found[label] = str(spec.get("type"))
    if spec.get("type") == "multi" and isinstance(spec.get("graders"), Mapping):
        for key, sub in spec["graders"].items():
            if isinstance(sub, Mapping):
                _types_by_label(sub, key if top else f"{label}.{key}", found, top=False)


def _hosted_errors(errors: list[dict[str, str]], types: Mapping[str, str]) -> dict[str, Any]:
    flags: dict[str, Any] = {flag: False for flag in HOSTED_ERROR_FLAGS}
    flags.update(
        python_grader_server_error_type=None,
        python_grader_runtime_error_details=None,
        model_grader_server_error_details=None,
    )
    for error in errors:
        error_type, message = error.get("type", ""), error.get("message", "")
        grader_type = types.get(error.get("grader", ""), "")
        if error_type == "formula":
            flags["formula_parse_error"] = True
        elif error_type == "template":
            flags["invalid_variable_error"] = True
        elif grader_type == "python" and error_type == "sandbox":
            flags["python_grader_server_error"] = True
            flags["python_grader_server_error_type"] = error_type
        elif grader_type == "python" and error_type in _PYTHON_RUNTIME_ERRORS:
            flags["python_grader_runtime_error"] = True
            flags["python_grader_runtime_error_details"] = message
        elif grader_type in _MODEL_TYPES and error_type == "invalid_response":
            flags["model_grader_parse_error"] = True
            flags["model_grader_server_error_details"] = message
        elif grader_type in _MODEL_TYPES:
            flags["model_grader_server_error"] = True
            flags["model_grader_server_error_details"] = message
        else:
            flags["other_error"] = True
    return flags


def run_hosted(
    *, grader_spec: Any, model_sample: str, item: Mapping[str, Any] | None, user
) -> dict[str, Any]:
    """Grade one model sample the way the hosted `graders/run` does, answering in its shape:
    {"reward", "metadata": {name, type, errors, execution_time, scores, token_usage,
    sampled_model_name}, "sub_rewards", "model_grader_token_usage_per_model"}.

    `reward` is null (never a silent 0) when grading failed; `metadata.errors` says why.
    Raises GraderValidationError for a spec that cannot be built; rate-limited per user like the
    "Run grader" panel (rate_limits.RateLimited).
    """
    rate_limits.check_rate(user=user, action="grader_run")
    if not isinstance(grader_spec, dict):
        raise GraderValidationError({"": ['A grader is a JSON object, e.g. {"type": "string_check", ...}.']})
    public, secrets, problems = split_secrets(grader_spec)
    if problems:
        raise GraderValidationError(problems)
    spec = _apply(public, secrets, masked=False)
    sample = make_sample(output_text=model_sample)
    started = time.perf_counter()
    try:
        result = run_grader(spec, sample, item or {}, context=grader_context(max_retries=0))
    except GraderSpecError as error:
        raise GraderValidationError(error.by_field()) from error
    elapsed_s = time.perf_counter() - started
    report = _report(result, trace_id=sample["trace_id"], secrets=_secret_values(secrets), wall_ms=0)
    name = public.get("name") or (derived_multi_name(public) if public.get("type") == "multi" else "")
    types: dict[str, str] = {}
    _types_by_label(public, name, types, top=True)
    is_multi = public.get("type") == "multi"
    sub_rewards = {key: value for key, value in report.sub_scores.items() if is_multi and key != name}
    model = public.get("model") if public.get("type") in ("score_model", "label_model") else None
    usage = dict(result.token_usage)
    return {
        "reward": report.score,
        "metadata": {
            "name": name,
            "type": public.get("type"),
            "errors": _hosted_errors(report.errors, types),
            "execution_time": round(elapsed_s, 6),
            "scores": dict(report.sub_scores),
            "token_usage": usage or None,
            "sampled_model_name": model,
            "passed": dict(result.passed),
            "error_messages": report.errors,
        },
        "sub_rewards": sub_rewards,
        "model_grader_token_usage_per_model": {model: usage} if model and usage else {},
    }
