"""What `python -m trainer <config>` needs besides the library: an HTTP tool executor and a JSONL
reporter. No Django and nothing from `experiments`: the trainer stands alone. Its graders are the web
app's own (`trainer.graders`, built from the same grader JSON).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from trainer.config import ConfigError
from trainer.interfaces import ToolCall, ToolResult, TrajectoryRecord


@dataclass(frozen=True)
class HttpTool:
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    max_response_bytes: int = 1_000_000


class SimpleHttpToolExecutor:
    """POSTs each call in the agent-RFT wire format; 5xx, timeouts and connection errors are retried
    (3 tries with backoff); a 4xx body is shown to the model. No SSRF policy: for trusted scripts."""

    def __init__(self, *, tools: Mapping[str, HttpTool], attempts: int = 3, backoff_s: float = 0.25) -> None:
        self.tools = dict(tools)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def execute(
        self, calls: Sequence[ToolCall], *, item: Mapping[str, Any], trace_id: str
    ) -> list[ToolResult]:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=256))
        return list(await asyncio.gather(*(self._call(call, item=item, trace_id=trace_id) for call in calls)))

    async def _call(self, call: ToolCall, *, item: Mapping[str, Any], trace_id: str) -> ToolResult:
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(
                call_id=call.call_id,
                name=call.name,
                output=f"Error: unknown tool {call.name!r}.",
                ok=False,
                error_type="unknown_tool",
                error="no endpoint for this tool",
                attempts=0,
            )
        body = json.dumps(
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex}",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
                "item": dict(item),
                "trace_id": trace_id,
            }
        ).encode()
        started = time.perf_counter()
        error_type, detail, status = "connection", "", None
        for attempt in range(1, self.attempts + 1):
            headers = {**tool.headers, "Content-Type": "application/json", "X-RFT-Rollout-Id": trace_id}
            if tool.signing_secret:
                timestamp = str(int(time.time()))
                digest = hmac.new(
                    tool.signing_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
                )
                headers["X-RFT-Signature"] = f"t={timestamp},v1={digest.hexdigest()}"
            try:
                async with self._client.stream(
                    "POST", tool.url, content=body, headers=headers, timeout=tool.timeout_s
                ) as response:
                    status = response.status_code
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > tool.max_response_bytes:
                            return self._failure(
                                call, started, attempt, status, "too_large", "response too large"
                            )
                        chunks.append(chunk)
                    text = b"".join(chunks).decode("utf-8", errors="replace")
            except httpx.TimeoutException as error:
                error_type, detail = "timeout", str(error) or "timed out"
            except httpx.HTTPError as error:
                error_type, detail = "connection", str(error) or type(error).__name__
            else:
                if 200 <= status < 300:
                    return ToolResult(
                        call_id=call.call_id,
                        name=call.name,
                        output=_output_from_body(text),
                        ok=True,
                        latency_ms=(time.perf_counter() - started) * 1000,
                        status_code=status,
                        attempts=attempt,
                    )
                if 400 <= status < 500:
                    return self._failure(call, started, attempt, status, "http_4xx", text[:2000])
                error_type, detail = "http_5xx", f"HTTP {status}"
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        return self._failure(call, started, self.attempts, status, error_type, detail)

    @staticmethod
    def _failure(
        call: ToolCall, started: float, attempts: int, status: int | None, error_type: str, detail: str
    ):
        shown = detail if error_type == "http_4xx" else f"the tool failed ({error_type})"
        return ToolResult(
            call_id=call.call_id,
            name=call.name,
            output=f"Error: {shown}",
            ok=False,
            error_type=error_type,
            error=detail,
            latency_ms=(time.perf_counter() - started) * 1000,
            status_code=status,
            attempts=attempts,
        )


def _output_from_body(text: str) -> str:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(payload, dict) and "output" in payload:
        output = payload["output"]
        return output if isinstance(output, str) else json.dumps(output)
    return text


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
