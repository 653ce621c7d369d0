"""Grader JSON -> a grader object, with errors that point at the offending field.

Accepts the widely used grader shapes as they are (see PRODUCT.md) plus rftweb's own `set_match`
and `endpoint` types. Unknown fields are reported rather than ignored: a misspelt field would
otherwise silently grade with a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.graders.base import Grader
from trainer.graders.errors import GraderSpecError
from trainer.graders.formula import FUNCTIONS, FormulaError, parse_formula
from trainer.graders.sandbox import SandboxLimits, sandbox_status
from trainer.graders.similarity import EMBEDDING_METRICS, METRICS
from trainer.graders.templates import validate_template
from trainer.graders.types import (
    SET_METRICS,
    STRING_OPERATIONS,
    EmbeddingsClient,
    EndpointGrader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    SetMatchGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    message_texts,
)
from trainer.outbound.client import OutboundError, validate_outbound_url
from trainer.outbound.policy import OutboundPolicy

GRADER_TYPES = (
    "string_check",
    "text_similarity",
    "set_match",
    "score_model",
    "label_model",
    "python",
    "endpoint",
    "multi",
)
MAX_NESTING = 3
MAX_NAME_CHARS = 100
MAX_SOURCE_CHARS = 100_000
_SUB_GRADER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMMON_FIELDS = {"type", "name", "pass_threshold"}
_FIELDS: dict[str, set[str]] = {
    "string_check": {"input", "reference", "operation"},
    # base_url/api_key/model: the embeddings endpoint of a cosine grader (else the server's default).
    "text_similarity": {"input", "reference", "evaluation_metric", "base_url", "api_key", "model"},
    "set_match": {"input", "reference", "metric", "pattern", "case_sensitive"},
    "python": {"source", "image_tag", "range"},
    "score_model": {"model", "input", "range", "sampling_params", "base_url", "api_key", "timeout_s"},
    "label_model": {
        "model",
        "input",
        "labels",
        "passing_labels",
        "sampling_params",
        "base_url",
        "api_key",
        "timeout_s",
    },
    "endpoint": {"url", "headers", "signing_secret", "timeout_s", "range"},
    "multi": {"graders", "calculate_output", "range"},
}


@dataclass(frozen=True)
class GraderContext:
    """Server-side settings graders need: the outbound policy, the default judge, sandbox limits."""

    policy: OutboundPolicy = field(default_factory=OutboundPolicy)
    judge_base_url: str | None = None
    judge_api_key: str | None = field(default=None, repr=False)
    embeddings_base_url: str | None = None
    embeddings_api_key: str | None = field(default=None, repr=False)
    embeddings_model: str = "text-embedding-3-large"
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    http_timeout_s: float = 30.0
    max_retries: int = 2
    retry_backoff_s: float = 0.5


class _Errors:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{path}: {message}" if path else message)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _string(
    spec: Mapping[str, Any], key: str, prefix: str, errors: _Errors, *, required: bool = True
) -> str | None:
    value = spec.get(key)
    if value is None:
        if required:
            errors.add(_join(prefix, key), "required")
        return None
    if not isinstance(value, str):
        errors.add(_join(prefix, key), f"must be a string, not {type(value).__name__}")
        return None
    return value


def _template(spec: Mapping[str, Any], key: str, prefix: str, errors: _Errors) -> str | None:
    value = _string(spec, key, prefix, errors)
    if value is not None:
        for problem in validate_template(value):
            errors.add(_join(prefix, key), problem)
    return value


def _choice(
    spec: Mapping[str, Any],
    key: str,
    prefix: str,
    errors: _Errors,
    choices: tuple[str, ...],
    *,
    default: str | None = None,
) -> str | None:
    value = spec.get(key, default)
    if value is None:
        errors.add(_join(prefix, key), f"required (one of {', '.join(choices)})")
        return None
    if value not in choices:
        errors.add(_join(prefix, key), f"must be one of {', '.join(choices)}, not {value!r}")
        return None
    return str(value)


def _positive_number(
    spec: Mapping[str, Any], key: str, prefix: str, errors: _Errors, *, default: float, maximum: float
) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        errors.add(_join(prefix, key), f"must be a number of seconds in (0, {maximum:g}]")
        return default
    return float(value)


def _range(
    spec: Mapping[str, Any], key: str, prefix: str, errors: _Errors, *, default: tuple[float, float] | None
) -> tuple[float, float] | None:
    value = spec.get(key)
    if value is None:
        return default
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not value[0] < value[1]
    ):
        errors.add(_join(prefix, key), "must be [low, high] with low < high")
        return default
    return (float(value[0]), float(value[1]))


def _headers(spec: Mapping[str, Any], key: str, prefix: str, errors: _Errors) -> dict[str, str]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        errors.add(_join(prefix, key), "must be an object of header names to string values")
        return {}
    return dict(value)


def _url(
    spec: Mapping[str, Any], key: str, prefix: str, errors: _Errors, *, value: str | None = None
) -> str | None:
    url = value if value is not None else _string(spec, key, prefix, errors)
    if url is None:
        return None
    try:
        validate_outbound_url(url)
    except OutboundError as exc:
        errors.add(_join(prefix, key), exc.message)
        return None
    return url


def _build_string_check(spec, name, prefix, errors, context, depth):
    return StringCheckGrader(
        name=name,
        input=_template(spec, "input", prefix, errors) or "",
        reference=_template(spec, "reference", prefix, errors) or "",
        operation=_choice(spec, "operation", prefix, errors, STRING_OPERATIONS) or "eq",
    )


def _endpoint_url(spec, prefix, errors, *, default: str | None) -> str | None:
    """`base_url` of the spec, else the server's default; None (not an error) when neither is set:
    the grader is kept as pasted and reports what it needs (`unmet_requirements`)."""
    value = spec.get("base_url", default)
    if value is None:
        return None
    if not isinstance(value, str):
        errors.add(_join(prefix, "base_url"), "must be a string")
        return None
    return _url(spec, "base_url", prefix, errors, value=value)


def _api_key(spec, prefix, errors, *, default: str | None) -> str | None:
    api_key = spec["api_key"] if "api_key" in spec else default
    if api_key is not None and not isinstance(api_key, str):
        errors.add(_join(prefix, "api_key"), "must be a string")
        return None
    return api_key or None


def _build_text_similarity(spec, name, prefix, errors, context, depth):
    input_template = _template(spec, "input", prefix, errors) or ""
    reference = _template(spec, "reference", prefix, errors) or ""
    metric = _choice(spec, "evaluation_metric", prefix, errors, METRICS + EMBEDDING_METRICS) or "fuzzy_match"
    embeddings = None
    if metric in EMBEDDING_METRICS:
        model = _string(spec, "model", prefix, errors, required=False) or context.embeddings_model
        embeddings = EmbeddingsClient(
            base_url=_endpoint_url(spec, prefix, errors, default=context.embeddings_base_url),
            api_key=_api_key(spec, prefix, errors, default=context.embeddings_api_key),
            model=model,
            timeout_s=context.http_timeout_s,
            policy=context.policy,
            max_retries=context.max_retries,
            retry_backoff_s=context.retry_backoff_s,
        )
    else:
        for key in ("base_url", "api_key", "model"):
            if key in spec:
                errors.add(_join(prefix, key), "only for evaluation_metric cosine (the embeddings endpoint)")
    return TextSimilarityGrader(
        name=name,
        input=input_template,
        reference=reference,
        evaluation_metric=metric,
        embeddings=embeddings,
    )


def _build_set_match(spec, name, prefix, errors, context, depth):
    pattern = _string(spec, "pattern", prefix, errors, required=False)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.add(_join(prefix, "pattern"), f"not a valid regular expression: {exc}")
            pattern = None
    case_sensitive = spec.get("case_sensitive", True)
    if not isinstance(case_sensitive, bool):
        errors.add(_join(prefix, "case_sensitive"), "must be true or false")
        case_sensitive = True
    return SetMatchGrader(
        name=name,
        input=_template(spec, "input", prefix, errors) or "",
        reference=_template(spec, "reference", prefix, errors) or "",
        metric=_choice(spec, "metric", prefix, errors, SET_METRICS, default="f1") or "f1",
        pattern=pattern,
        case_sensitive=case_sensitive,
    )


def _build_python(spec, name, prefix, errors, context, depth):
    source = _string(spec, "source", prefix, errors)
    if source is not None:
        if len(source) > MAX_SOURCE_CHARS:
            errors.add(_join(prefix, "source"), f"longer than {MAX_SOURCE_CHARS} characters")
        else:
            _check_python_source(source, _join(prefix, "source"), errors)
    status = sandbox_status()
    if not status.available:
        errors.add(_join(prefix, "type"), status.reason)
    return PythonGrader(
        name=name,
        source=source or "",
        limits=context.sandbox_limits,
        range=_range(spec, "range", prefix, errors, default=(0.0, 1.0)) or (0.0, 1.0),
    )


def _check_python_source(source: str, path: str, errors: _Errors) -> None:
    import ast

    try:
        # Parsing only: nothing of the user's code runs outside the sandbox.
        tree = ast.parse(source)
    except SyntaxError as exc:
        errors.add(path, f"syntax error on line {exc.lineno}: {exc.msg}")
        return
    if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
        errors.add(path, "must define grade(sample, item) -> float")


def _judge_messages(spec, prefix, errors) -> list[dict[str, Any]]:
    messages = spec.get("input")
    checked: list[dict[str, Any]] = []
    if not isinstance(messages, list) or not messages:
        errors.add(_join(prefix, "input"), "required: a non-empty list of {role, content} messages")
        return checked
    for index, message in enumerate(messages):
        path = _join(prefix, f"input[{index}]")
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            errors.add(path, "must be an object with a role and a content")
            continue
        texts = message_texts(message.get("content"))
        if texts is None:
            errors.add(_join(path, "content"), "must be text, a {type, text} part or a list of them")
            continue
        for text in texts:
            for problem in validate_template(text):
                errors.add(_join(path, "content"), problem)
        checked.append(dict(message))
    return checked


# Spellings of chat-completions parameters in grader JSON that the endpoint knows by another name.
_SAMPLING_PARAM_NAMES = {"max_completions_tokens": "max_completion_tokens"}


def _sampling_params(spec, prefix, errors) -> dict[str, Any]:
    sampling_params = spec.get("sampling_params") or {}
    if not isinstance(sampling_params, Mapping):
        errors.add(_join(prefix, "sampling_params"), "must be an object")
        return {}
    return {_SAMPLING_PARAM_NAMES.get(key, key): value for key, value in sampling_params.items()}


def _judge_fields(spec, name, prefix, errors, context) -> dict[str, Any]:
    return {
        "name": name,
        "model": _string(spec, "model", prefix, errors) or "",
        "input": _judge_messages(spec, prefix, errors),
        "sampling_params": _sampling_params(spec, prefix, errors),
        "base_url": _endpoint_url(spec, prefix, errors, default=context.judge_base_url),
        "api_key": _api_key(spec, prefix, errors, default=context.judge_api_key),
        "timeout_s": _positive_number(
            spec, "timeout_s", prefix, errors, default=context.http_timeout_s, maximum=600
        ),
        "policy": context.policy,
        "max_retries": context.max_retries,
        "retry_backoff_s": context.retry_backoff_s,
    }


def _build_score_model(spec, name, prefix, errors, context, depth):
    return ScoreModelGrader(
        range=_range(spec, "range", prefix, errors, default=(0.0, 1.0)) or (0.0, 1.0),
        **_judge_fields(spec, name, prefix, errors, context),
    )


def _labels(spec, key, prefix, errors) -> list[str]:
    value = spec.get(key)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(label, str) and label.strip() for label in value)
    ):
        errors.add(_join(prefix, key), "required: a non-empty list of label strings")
        return []
    return list(value)


def _build_label_model(spec, name, prefix, errors, context, depth):
    labels = _labels(spec, "labels", prefix, errors)
    passing = _labels(spec, "passing_labels", prefix, errors)
    unknown = [label for label in passing if labels and label not in labels]
    if unknown:
        errors.add(_join(prefix, "passing_labels"), f"not among the labels: {', '.join(unknown)}")
    return LabelModelGrader(
        labels=labels, passing_labels=passing, **_judge_fields(spec, name, prefix, errors, context)
    )


def _build_endpoint(spec, name, prefix, errors, context, depth):
    signing_secret = _string(spec, "signing_secret", prefix, errors, required=False)
    return EndpointGrader(
        name=name,
        url=_url(spec, "url", prefix, errors) or "http://invalid",
        headers=_headers(spec, "headers", prefix, errors),
        signing_secret=signing_secret or None,
        timeout_s=_positive_number(
            spec, "timeout_s", prefix, errors, default=context.http_timeout_s, maximum=600
        ),
        policy=context.policy,
        max_retries=context.max_retries,
        retry_backoff_s=context.retry_backoff_s,
        range=_range(spec, "range", prefix, errors, default=(0.0, 1.0)) or (0.0, 1.0),
    )


def _build_multi(spec, name, prefix, errors, context, depth):
    graders: dict[str, Grader] = {}
    sub_specs = spec.get("graders")
    if not isinstance(sub_specs, Mapping) or not sub_specs:
        errors.add(_join(prefix, "graders"), "required: an object of named sub-graders")
        sub_specs = {}
    if depth >= MAX_NESTING:
        errors.add(_join(prefix, "graders"), f"multi graders nest at most {MAX_NESTING} levels")
        sub_specs = {}
    for key, sub_spec in sub_specs.items():
        path = _join(prefix, f"graders.{key}")
        if not isinstance(key, str) or not _SUB_GRADER_KEY.fullmatch(key) or key in FUNCTIONS:
            errors.add(path, "the name must be an identifier (letters, digits, _) and not a function name")
            continue
        grader = _build(
            sub_spec, prefix=path, errors=errors, context=context, depth=depth + 1, default_name=key
        )
        if grader is not None:
            graders[key] = grader
    formula_text = _string(spec, "calculate_output", prefix, errors)
    formula = None
    if formula_text is not None:
        try:
            formula = parse_formula(formula_text, allowed_names=list(sub_specs))
        except FormulaError as exc:
            errors.add(_join(prefix, "calculate_output"), str(exc))
    if formula is None:
        formula = parse_formula("0", allowed_names=())
    return MultiGrader(
        name=name, graders=graders, formula=formula, range=_range(spec, "range", prefix, errors, default=None)
    )


_BUILDERS: dict[str, Callable[..., Grader]] = {
    "string_check": _build_string_check,
    "text_similarity": _build_text_similarity,
    "set_match": _build_set_match,
    "python": _build_python,
    "score_model": _build_score_model,
    "label_model": _build_label_model,
    "endpoint": _build_endpoint,
    "multi": _build_multi,
}


def _build(
    spec: Any, *, prefix: str, errors: _Errors, context: GraderContext, depth: int, default_name: str | None
) -> Grader | None:
    if not isinstance(spec, Mapping):
        errors.add(prefix, "must be a JSON object describing a grader")
        return None
    grader_type = spec.get("type")
    if grader_type not in _BUILDERS:
        shown = "required" if grader_type is None else f"unknown grader type {grader_type!r}"
        errors.add(_join(prefix, "type"), f"{shown} (one of {', '.join(GRADER_TYPES)})")
        return None
    name = spec.get("name", default_name)
    if name is None and grader_type == "multi":
        name = derived_multi_name(spec)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        errors.add(
            _join(prefix, "name"), f"required: a non-empty string of at most {MAX_NAME_CHARS} characters"
        )
        name = default_name or "grader"
    for key in sorted(set(spec) - _COMMON_FIELDS - _FIELDS[grader_type]):
        errors.add(_join(prefix, str(key)), f"unknown field for a {grader_type} grader")
    threshold = spec.get("pass_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        errors.add(_join(prefix, "pass_threshold"), "must be a number")
        threshold = None
    grader = _BUILDERS[grader_type](spec, name, prefix, errors, context, depth)
    grader.pass_threshold = float(threshold) if threshold is not None else None
    return grader


def derived_multi_name(spec: Mapping[str, Any]) -> str:
    """A name for a multi grader pasted without one (the graders guide's own example has none):
    "multi: " and its sub-graders' keys, e.g. "multi: name, email"."""
    keys = list(spec.get("graders") or {}) if isinstance(spec.get("graders"), Mapping) else []
    name = "multi: " + ", ".join(str(key) for key in keys) if keys else "multi"
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def unmet_requirements(grader: Grader) -> list[str]:
    """Why a built grader cannot score on this server ("a.b: needs a judge endpoint: ..."); [] if it can."""
    return grader.unmet_requirements()


def build_grader(spec: Any, *, context: GraderContext | None = None) -> Grader:
    """A grader implementing `trainer.interfaces.Grader` from pasted/stored grader JSON.

    Raises GraderSpecError listing every problem as "field.path: message".
    """
    errors = _Errors()
    grader = _build(
        spec, prefix="", errors=errors, context=context or GraderContext(), depth=0, default_name=None
    )
    if errors.messages or grader is None:
        raise GraderSpecError(errors.messages or ["not a grader"])
    return grader
