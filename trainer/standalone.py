"""What `python -m trainer <config>` needs besides the library: the tool executor and a JSONL
reporter. No Django and nothing from `experiments`: the trainer stands alone. Its graders are the web
app's own (`trainer.graders`, built from the same grader JSON; see `trainer.__main__`).

Tools are called through `trainer.outbound.HttpToolExecutor`, the same executor (wire format,
signing, retries, caps, SSRF policy) the web app uses; only the policy differs: the app builds it
from its settings, a run file from its `outbound` section (`script_policy`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.config import ConfigError
from trainer.interfaces import TrajectoryRecord
from trainer.outbound.client import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_S, validate_outbound_url
from trainer.outbound.client import OutboundError as _OutboundError
from trainer.outbound.policy import OutboundPolicy, OutboundPolicyError
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint


def script_policy(section: Any) -> OutboundPolicy:
    """The outbound policy of a run file: `outbound: {allow_loopback: true, allowlist: [...]}`.

    Loopback is allowed by default (a script's tool servers usually run next to it); private and
    other non-public addresses only when listed (host names, "*.corp.example", CIDRs), as in the app.
    """
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError("outbound: must be a mapping with allow_loopback and/or allowlist")
    unknown = sorted(set(section) - {"allow_loopback", "allowlist"})
    if unknown:
        raise ConfigError(f"outbound: unknown key(s) {', '.join(unknown)}")
    allowlist = section.get("allowlist") or []
    if isinstance(allowlist, str) or not all(isinstance(entry, str) for entry in allowlist):
        raise ConfigError("outbound.allowlist: must be a list of host names and CIDRs")
    allow_loopback = section.get("allow_loopback", True)
    if not isinstance(allow_loopback, bool):
        raise ConfigError("outbound.allow_loopback: must be true or false")
    try:
        return OutboundPolicy(allow_loopback=allow_loopback, allowlist=tuple(allowlist))
    except OutboundPolicyError as error:
        raise ConfigError(f"outbound.allowlist: {error}") from error


def tool_endpoint(spec: Mapping[str, Any], *, where: str) -> ToolEndpoint:
    """A tool's endpoint from a run file entry; the URL obeys the same rule as in the app."""
    url = spec.get("url")
    try:
        validate_outbound_url(url)
    except _OutboundError as error:
        raise ConfigError(f"{where}.url: {error.message}") from error
    headers = spec.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
    ):
        raise ConfigError(f"{where}.headers: must map header names to string values")
    secret = spec.get("signing_secret")
    if secret is not None and not isinstance(secret, str):
        raise ConfigError(f"{where}.signing_secret: must be a string")
    try:
        timeout_s = float(spec.get("timeout_s", DEFAULT_TIMEOUT_S))
        max_response_bytes = int(spec.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: timeout_s and max_response_bytes must be numbers") from error
    if timeout_s <= 0 or max_response_bytes <= 0:
        raise ConfigError(f"{where}: timeout_s and max_response_bytes must be positive")
    return ToolEndpoint(
        url=url,
        headers=dict(headers),
        signing_secret=secret or None,
        timeout_s=timeout_s,
        max_response_bytes=max_response_bytes,
    )


def tool_executor(endpoints: Mapping[str, ToolEndpoint], policy: OutboundPolicy) -> HttpToolExecutor:
    """The app's executor (3 retries with backoff for 5xx, timeouts and connection errors)."""
    return HttpToolExecutor(endpoints, policy)


class JsonlReporter:
    """Writes metrics.jsonl, trajectories.jsonl, checkpoints.jsonl and log.jsonl into a directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        with self._lock, open(self.directory / name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def report_step(
        self, step: int, metrics: Mapping[str, float], trajectories: Sequence[TrajectoryRecord]
    ) -> None:
        self._append("metrics.jsonl", {"step": step, "time": time.time(), "metrics": dict(metrics)})
        for record in trajectories:
            self._append("trajectories.jsonl", dataclasses.asdict(record))

    def report_checkpoint(self, step: int, path: str, metrics: Mapping[str, float]) -> None:
        self._append("checkpoints.jsonl", {"step": step, "path": path, "metrics": dict(metrics)})

    def log(self, level: str, message: str) -> None:
        self._append("log.jsonl", {"time": time.time(), "level": level, "message": message})


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}:{number}: invalid JSON ({error.msg})") from error
    return items
