"""Tools: create, edit, delete, import from an OpenAI function definition, and "Try it".

Header values and the signing secret are secrets: they are stored encrypted (EncryptedJSONField),
never returned, and an edit that leaves a header value blank keeps the stored value. Validation
errors are Django `ValidationError`s keyed by field, so that forms and the API place them where the
user typed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from trainer.outbound import ToolEndpoint, try_tool_call
from trainer.outbound.tools import TryToolCallResult

from ..models import Tool
from ..outbound import check_outbound_url, policy_from_settings
from . import rate_limits

# RFC 9110 token characters: what a header name may contain.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
# Headers the wire format sets itself; a tool cannot override them.
RESERVED_HEADERS = {"content-type", "content-length", "host", "x-rft-rollout-id", "x-rft-signature"}
_JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
MAX_HEADERS = 30


class ToolInUseError(Exception):
    """The tool belongs to at least one run's configuration and cannot be deleted."""


# --- parameters (JSON Schema) -----------------------------------------------------------------------


def _path_text(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _friendly_schema_error(error: jsonschema.exceptions.SchemaError) -> str:
    where = "parameters" + _path_text(error.path)
    last = error.path[-1] if error.path else None
    if last == "type" or (error.validator == "anyOf" and isinstance(error.instance, str)):
        return f"{where}: {error.instance!r} is not a JSON Schema type (use one of {', '.join(_JSON_TYPES)})."
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: must be {'an' if str(expected)[0] in 'aeiou' else 'a'} {expected}, not {json.dumps(error.instance)[:80]}."
    if error.validator == "uniqueItems":
        return f"{where}: lists the same name twice."
    return f"{where}: {error.message}"


def schema_problems(parameters: Any) -> list[str]:
    """What is wrong with `parameters` as the JSON Schema of a function's arguments (empty: fine)."""
    if not isinstance(parameters, dict):
        return [
            'parameters: must be a JSON object (a JSON Schema such as {"type": "object", "properties": {}}).'
        ]
    problems: list[str] = []
    validator_class = jsonschema.validators.validator_for(parameters, default=jsonschema.Draft202012Validator)
    errors = sorted(
        validator_class(validator_class.META_SCHEMA).iter_errors(parameters), key=lambda e: list(e.path)
    )
    seen: set[str] = set()
    for error in errors:
        message = _friendly_schema_error(jsonschema.exceptions.SchemaError.create_from(error))
        if message not in seen:
            seen.add(message)
            problems.append(message)
    if problems:
        return problems
    if parameters.get("type") != "object":
        problems.append(
            'parameters: the arguments of a function are an object: set "type": "object" '
            'and describe each argument under "properties".'
        )
    properties = parameters.get("properties", {})
    for name in parameters.get("required", []) or []:
        if isinstance(properties, dict) and name not in properties:
            problems.append(f"parameters.required: {name!r} is required but not described in properties.")
    return problems


def check_parameters(parameters: Any) -> dict:
    problems = schema_problems(parameters)
    if problems:
        raise ValidationError({"parameters": problems})
    return parameters


def parse_json_text(text: str, *, field: str) -> Any:
    """JSON from a textarea, or a ValidationError on `field` that says where the syntax broke."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            {field: f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."}
        ) from exc


def arguments_problems(*, tool: Tool, arguments: Any) -> list[str]:
    """Where sample arguments break the tool's schema (a rollout sends them anyway; shown as warnings)."""
    try:
        validator = jsonschema.validators.validator_for(
            tool.parameters, default=jsonschema.Draft202012Validator
        )
        return [
            f"arguments{_path_text(error.path)}: {error.message}"
            for error in validator(tool.parameters).iter_errors(arguments)
        ][:10]
    except jsonschema.exceptions.SchemaError:
        return []


# --- importing an OpenAI function definition ----------------------------------------------------------


def parse_function_definition(definition: str | Mapping[str, Any]) -> dict[str, Any]:
    """{"name", "description", "parameters"} from an OpenAI function definition.

    Accepts the Chat Completions shape `{"type": "function", "function": {...}}`, the bare
    `{"name", "description", "parameters"}` shape (also with `"type": "function"` beside it, as the
    Responses API writes it) and a one-element list of either.
    """
    if isinstance(definition, str):
        definition = parse_json_text(definition, field="definition")
    if isinstance(definition, list):
        if len(definition) != 1:
            raise ValidationError(
                {"definition": f"Paste one function definition at a time (this list has {len(definition)})."}
            )
        definition = definition[0]
    if not isinstance(definition, Mapping):
        raise ValidationError({"definition": "A function definition is a JSON object."})
    function = definition.get("function") if isinstance(definition.get("function"), Mapping) else definition
    if definition.get("type") not in (None, "function"):
        raise ValidationError(
            {
                "definition": f'Only function tools can be imported (this one has "type": {definition["type"]!r}).'
            }
        )
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError({"definition": 'The definition has no "name".'})
    description = function.get("description", "")
    if not isinstance(description, str):
        raise ValidationError({"definition": '"description" must be a string.'})
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    problems = schema_problems(parameters)
    if problems:
        raise ValidationError({"definition": problems})
    imported = {"name": name, "description": description, "parameters": parameters}
    url = definition.get("server_url", definition.get("url"))
    if isinstance(url, str) and url.strip():  # an agent-RFT tool definition names its endpoint
        imported["url"] = url.strip()
    return imported


# --- importing the tool list of an agent-RFT job -------------------------------------------------------

MAX_IMPORTED_TOOLS = 100


def _tool_entry(entry: Any, where: str, problems: list[str]) -> dict[str, Any] | None:
    """One entry of a job's tool list: {"name", "server_url", "headers"} (also "url"), optionally
    with the function's "description"/"parameters" (flat or under "function")."""
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: a tool is a JSON object with a name and a server_url.")
        return None
    function = entry.get("function") if isinstance(entry.get("function"), Mapping) else entry
    name = function.get("name", entry.get("name"))
    url = entry.get("server_url", entry.get("url"))
    headers = entry.get("headers") or {}
    found = len(problems)
    if entry.get("type") not in (None, "function"):
        problems.append(
            f"{where}: only function tools can be imported (this one has type {entry['type']!r})."
        )
    if not isinstance(name, str) or not name.strip():
        problems.append(f'{where}: "name" is required.')
    if not isinstance(url, str) or not url.strip():
        problems.append(f'{where} ({name}): "server_url" is required (the URL rftweb POSTs each call to).')
    if not isinstance(headers, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
    ):
        problems.append(f'{where} ({name}): "headers" must be an object of header names to string values.')
    description = function.get("description", "")
    if not isinstance(description, str):
        problems.append(f'{where} ({name}): "description" must be a string.')
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    problems.extend(f"{where} ({name}): parameters: {problem}" for problem in schema_problems(parameters))
    if len(problems) > found:
        return None
    return {
        "name": name.strip(),
        "url": url.strip(),
        "headers": dict(headers),
        "description": description,
        "parameters": parameters,
    }


def import_tool_list(*, owner, definitions: Any) -> list[Tool]:
    """Register every tool of an agent-RFT job's tool list (a JSON array, or {"tools": [...]}), all
    or none. Raises ValidationError on "tools" naming each bad entry by its index."""
    if isinstance(definitions, str):
        definitions = parse_json_text(definitions, field="tools")
    if isinstance(definitions, Mapping) and isinstance(definitions.get("tools"), list):
        definitions = definitions["tools"]
    if not isinstance(definitions, list) or not definitions:
        raise ValidationError(
            {"tools": 'Paste the job\'s tool list: a JSON array of {"name", "server_url", "headers"}.'}
        )
    if len(definitions) > MAX_IMPORTED_TOOLS:
        raise ValidationError({"tools": f"At most {MAX_IMPORTED_TOOLS} tools at once."})
    problems: list[str] = []
    entries = [_tool_entry(entry, f"[{index}]", problems) for index, entry in enumerate(definitions)]
    names = [entry["name"] for entry in entries if entry]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"The list names {', '.join(repeated)} more than once.")
    taken = sorted(Tool.objects.filter(owner=owner, name__in=names).values_list("name", flat=True))
    if taken:
        problems.append(
            f"You already have tools named {', '.join(taken)}: rename or delete them, or leave them out."
        )
    if problems:
        raise ValidationError({"tools": problems})
    created: list[Tool] = []
    with transaction.atomic():
        for index, entry in enumerate(entries):
            try:
                created.append(create_tool(owner=owner, **entry))
            except ValidationError as error:
                details = "; ".join(
                    f"{field}: {message}"
                    for field, messages in error.message_dict.items()
                    for message in messages
                )
                raise ValidationError({"tools": [f"[{index}] ({entry['name']}): {details}"]}) from error
    return created


# --- headers --------------------------------------------------------------------------------------------


def merge_headers(*, submitted: Iterable[tuple[str, str]], stored: Mapping[str, str]) -> dict[str, str]:
    """The headers after an edit: blank values keep the stored value of that header; headers left
    out are removed. Raises ValidationError on "headers" for bad names or values."""
    merged: dict[str, str] = {}
    problems: list[str] = []
    stored_by_lower = {key.lower(): value for key, value in stored.items()}
    for raw_name, raw_value in submitted:
        name = (raw_name or "").strip()
        value = (raw_value or "").strip()
        if not name and not value:
            continue
        if not name:
            problems.append("A header value was given without a name.")
            continue
        if not _HEADER_NAME.match(name):
            problems.append(f"{name!r} is not a valid header name (letters, digits and - only).")
            continue
        if name.lower() in RESERVED_HEADERS:
            problems.append(f"{name} is set by rftweb itself on every call and cannot be overridden.")
            continue
        if any(existing.lower() == name.lower() for existing in merged):
            problems.append(f"The header {name} is listed twice.")
            continue
        if not value:
            if name.lower() not in stored_by_lower:
                problems.append(f"The header {name} needs a value.")
                continue
            value = stored_by_lower[name.lower()]
        if "\r" in value or "\n" in value:
            problems.append(f"The value of {name} contains a line break.")
            continue
        merged[name] = value
    if len(merged) > MAX_HEADERS:
        problems.append(f"At most {MAX_HEADERS} headers.")
    if problems:
        raise ValidationError({"headers": problems})
    return merged


# --- writes -------------------------------------------------------------------------------------------------


def _check_name_free(*, owner, name: str, exclude_pk: int | None) -> None:
    clash = Tool.objects.filter(owner=owner, name=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ValidationError({"name": f"You already have a tool named {name!r}."})


def _save(tool: Tool) -> Tool:
    check_parameters(tool.parameters)
    # The URL obeys the outbound URL rule (the one the client applies when calling it), not
    # URLField's validator, which takes ftp:// and refuses single-label hosts such as "tool-server".
    tool.full_clean(exclude=["owner", "url"], validate_unique=False, validate_constraints=False)
    try:
        check_outbound_url(tool.url)
    except ValidationError as exc:
        raise ValidationError({"url": exc.messages}) from exc
    _check_name_free(owner=tool.owner, name=tool.name, exclude_pk=tool.pk)
    try:
        with transaction.atomic():
            tool.save()
    except IntegrityError as exc:  # a concurrent create with the same name
        raise ValidationError({"name": f"You already have a tool named {tool.name!r}."}) from exc
    return tool


def create_tool(
    *,
    owner,
    name: str,
    url: str,
    description: str = "",
    parameters: dict | None = None,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    signing_secret: str | None = None,
    timeout_s: float = 30.0,
    max_response_bytes: int = 1_000_000,
) -> Tool:
    submitted = headers.items() if isinstance(headers, Mapping) else headers
    tool = Tool(
        owner=owner,
        name=name.strip(),
        description=description,
        parameters=parameters if parameters is not None else {"type": "object", "properties": {}},
        url=url.strip(),
        headers=merge_headers(submitted=submitted, stored={}),
        signing_secret=signing_secret or None,
        timeout_s=timeout_s,
        max_response_bytes=max_response_bytes,
    )
    return _save(tool)


def update_tool(
    *,
    tool: Tool,
    name: str | None = None,
    url: str | None = None,
    description: str | None = None,
    parameters: dict | None = None,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
    signing_secret: str | None = None,
    clear_signing_secret: bool = False,
    timeout_s: float | None = None,
    max_response_bytes: int | None = None,
) -> Tool:
    """Change what is given (None: unchanged). `headers` replaces the header list, keeping stored
    values where a value is blank; a blank `signing_secret` keeps the stored one unless
    `clear_signing_secret`."""
    if name is not None:
        tool.name = name.strip()
    if url is not None:
        tool.url = url.strip()
    if description is not None:
        tool.description = description
    if parameters is not None:
        tool.parameters = parameters
    if headers is not None:
        submitted = headers.items() if isinstance(headers, Mapping) else headers
        tool.headers = merge_headers(submitted=submitted, stored=tool.headers or {})
    if clear_signing_secret:
        tool.signing_secret = None
    elif signing_secret:
        tool.signing_secret = signing_secret
    if timeout_s is not None:
        tool.timeout_s = timeout_s
    if max_response_bytes is not None:
        tool.max_response_bytes = max_response_bytes
    return _save(tool)


def delete_tool(*, tool: Tool) -> None:
    runs = list(tool.runs.order_by("-created_at").values_list("name", flat=True)[:5])
    if runs:
        count = tool.runs.count()
        listed = ", ".join(repr(run) for run in runs) + (" and others" if count > len(runs) else "")
        raise ToolInUseError(
            f"The tool {tool.name} is used by {count} run{'s' if count != 1 else ''} ({listed}); "
            "a run keeps its tools so that it can be resumed and compared. Delete those runs first."
        )
    tool.delete()


# --- "Try it" -------------------------------------------------------------------------------------------------


def endpoint_for(tool: Tool) -> ToolEndpoint:
    """The tool as the outbound client calls it in a rollout (real headers and signing secret)."""
    return ToolEndpoint(
        url=tool.url,
        headers=dict(tool.headers or {}),
        signing_secret=tool.signing_secret or None,
        timeout_s=float(tool.timeout_s),
        max_response_bytes=int(tool.max_response_bytes),
    )


def try_tool(
    *,
    tool: Tool,
    arguments: str | Mapping[str, Any],
    item: Mapping[str, Any] | None = None,
    user=None,
) -> TryToolCallResult:
    """Send one call exactly as a rollout would (body with `item` and a fresh `trace_id`,
    X-RFT-Rollout-Id, signature) through the one outbound client and its SSRF policy.

    Rate-limited per user (`user`, else the tool's owner): raises rate_limits.RateLimited."""
    rate_limits.check_rate(user=user if user is not None else tool.owner, action="tool_try")
    return try_tool_call(
        name=tool.name,
        endpoint=endpoint_for(tool),
        arguments=arguments,
        policy=policy_from_settings(),
        item=item or {},
    )


def try_result_as_dict(result: TryToolCallResult) -> dict[str, Any]:
    """JSON-safe form of a "Try it" result for the API and templates (header values already masked)."""
    return {
        "ok": result.ok,
        "status_code": result.status_code,
        "latency_ms": round(result.latency_ms, 1),
        "output": result.output,
        "error_type": result.error_type,
        "error": result.error,
        "attempts": result.attempts,
        "trace_id": result.trace_id,
        "request": {
            "method": result.request.method,
            "url": result.request.url,
            "headers": dict(result.request.headers),
            "body": result.request.body,
        },
    }
