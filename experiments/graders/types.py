"""The grader types of PRODUCT.md ("Graders"); `spec.build_grader` builds them from JSON."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import weakref
from collections.abc import Mapping
from typing import Any

from experiments.graders.base import Evaluation, Grader, GradingInput
from experiments.graders.errors import GraderError
from experiments.graders.formula import Formula, FormulaError
from experiments.graders.sandbox import SandboxLimits, run_python_grader
from experiments.graders.similarity import similarity
from experiments.graders.templates import render, resolve
from experiments.outbound.client import OutboundClient, OutboundError, OutboundResponse, redact
from experiments.outbound.policy import OutboundPolicy
from experiments.outbound.tools import ROLLOUT_ID_HEADER

STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
SET_METRICS = ("f1", "precision", "recall")
MAX_ERROR_EXCERPT = 300


class StringCheckGrader(Grader):
    """1.0 when the check holds, else 0.0. like/ilike: `reference` occurs in `input` (ilike ignores case)."""

    grader_type = "string_check"

    def __init__(self, *, name: str, input: str, reference: str, operation: str) -> None:
        super().__init__(name=name)
        self.input, self.reference, self.operation = input, reference, operation

    async def score(self, grading: GradingInput) -> float:
        candidate = render(self.input, grading.templates)
        reference = render(self.reference, grading.templates)
        if self.operation == "eq":
            return float(candidate == reference)
        if self.operation == "ne":
            return float(candidate != reference)
        if self.operation == "like":
            return float(reference in candidate)
        return float(reference.casefold() in candidate.casefold())


class TextSimilarityGrader(Grader):
    grader_type = "text_similarity"

    def __init__(self, *, name: str, input: str, reference: str, evaluation_metric: str) -> None:
        super().__init__(name=name)
        self.input, self.reference, self.metric = input, reference, evaluation_metric

    async def score(self, grading: GradingInput) -> float:
        candidate = render(self.input, grading.templates)
        reference = render(self.reference, grading.templates)
        return similarity(self.metric, candidate=candidate, reference=reference)


_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def to_item_set(value: Any, *, pattern: re.Pattern[str] | None, case_sensitive: bool) -> set[str]:
    """The set of items a value names: a list, a JSON list in text, pattern matches, or lines/commas."""
    if isinstance(value, str):
        text = value
        if pattern is not None:
            items = [match.group(0) for match in pattern.finditer(text)]
        else:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                items = [item if isinstance(item, str) else json.dumps(item) for item in parsed]
            else:
                items = [_LIST_MARKER.sub("", part) for part in re.split(r"[\n,;]", text)]
    elif isinstance(value, list | tuple | set):
        items = [item if isinstance(item, str) else json.dumps(item) for item in value]
    else:
        raise GraderError("template", f"expected a list or text, got {type(value).__name__}")
    cleaned = {item.strip().strip("`'\"").strip() for item in items}
    cleaned.discard("")
    return cleaned if case_sensitive else {item.casefold() for item in cleaned}


class SetMatchGrader(Grader):
    """Precision, recall or F1 of the items the model names against a reference list."""

    grader_type = "set_match"

    def __init__(
        self,
        *,
        name: str,
        input: str,
        reference: str,
        metric: str = "f1",
        pattern: str | None = None,
        case_sensitive: bool = True,
    ) -> None:
        super().__init__(name=name)
        self.input, self.reference, self.metric = input, reference, metric
        self.pattern = re.compile(pattern) if pattern else None
        self.case_sensitive = case_sensitive

    async def score(self, grading: GradingInput) -> float:
        named = to_item_set(
            resolve(self.input, grading.templates), pattern=self.pattern, case_sensitive=self.case_sensitive
        )
        # The reference is data, never extracted with the pattern meant for the model's prose.
        expected = to_item_set(
            resolve(self.reference, grading.templates), pattern=None, case_sensitive=self.case_sensitive
        )
        return set_score(named=named, expected=expected, metric=self.metric)


def set_score(*, named: set[str], expected: set[str], metric: str) -> float:
    if not named and not expected:
        return 1.0
    hits = len(named & expected)
    precision = hits / len(named) if named else 0.0
    recall = hits / len(expected) if expected else 0.0
    if metric == "precision":
        return precision
    if metric == "recall":
        return recall
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


class PythonGrader(Grader):
    grader_type = "python"

    def __init__(
        self,
        *,
        name: str,
        source: str,
        limits: SandboxLimits,
        max_concurrency: int | None = None,
        range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(name=name)
        self.source, self.limits, self.range = source, limits, range
        # Each sandbox is a process; a whole GRPO batch at once would starve the CPU and time out.
        self.max_concurrency = max_concurrency or max(2, 2 * (os.cpu_count() or 1))
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.max_concurrency)
        return self._semaphores[loop]

    def score_range(self) -> tuple[float, float]:
        return self.range

    async def score(self, grading: GradingInput) -> float:
        async with self._semaphore():
            return await self._run(grading)

    async def _run(self, grading: GradingInput) -> float:
        sample = dict(grading.sample)
        if "output_json" not in sample:
            try:
                sample["output_json"] = json.loads(sample["output_text"])
            except ValueError:
                sample["output_json"] = None
        return await run_python_grader(
            source=self.source, sample=sample, item=dict(grading.item), limits=self.limits
        )


class _HttpGrader(Grader):
    """A grader that calls out through the policy-enforcing client (pooled, created on first use)."""

    def __init__(
        self, *, name: str, policy: OutboundPolicy, max_retries: int, retry_backoff_s: float
    ) -> None:
        super().__init__(name=name)
        self.policy = policy
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._client: OutboundClient | None = None

    def _outbound(self) -> OutboundClient:
        if self._client is None:
            self._client = OutboundClient(policy=self.policy)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post_json(
        self,
        url: str,
        *,
        payload: Any,
        headers: dict[str, str],
        secrets: list[str],
        timeout_s: float,
        signing_secret: str | None = None,
    ) -> Any:
        try:
            response = await self._outbound().request(
                "POST",
                url,
                content=json.dumps(payload, default=str).encode("utf-8"),
                headers={**headers, "Content-Type": "application/json"},
                timeout_s=timeout_s,
                max_retries=self.max_retries,
                retry_backoff_s=self.retry_backoff_s,
                signing_secret=signing_secret,
            )
        except OutboundError as exc:
            raise GraderError(exc.error_type, redact(exc.message, secrets)) from exc
        return _json_body(response, secrets=secrets)


def _json_body(response: OutboundResponse, *, secrets: list[str]) -> Any:
    excerpt = redact(response.text[:MAX_ERROR_EXCERPT], secrets)
    if 400 <= response.status_code < 500:
        raise GraderError("http_4xx", f"the endpoint answered {response.status_code}: {excerpt}")
    if response.status_code >= 500:
        raise GraderError(
            "http_5xx",
            f"the endpoint answered {response.status_code} after {response.attempts} attempts: {excerpt}",
        )
    try:
        return json.loads(response.body)
    except ValueError as exc:
        raise GraderError("invalid_response", f"the endpoint did not answer JSON: {excerpt}") from exc


def _finite(value: Any, *, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GraderError("invalid_score", f"{what} is {value!r}, not a number")
    score = float(value)
    if not math.isfinite(score):
        raise GraderError("invalid_score", f"{what} is {value!r}, not a finite number")
    return score


class EndpointGrader(_HttpGrader):
    """POST {"sample", "item", "trace_id"} -> {"score": <float>}; the sample holds the whole trajectory."""

    grader_type = "endpoint"

    def __init__(
        self,
        *,
        name: str,
        url: str,
        headers: Mapping[str, str],
        signing_secret: str | None,
        timeout_s: float,
        policy: OutboundPolicy,
        max_retries: int,
        retry_backoff_s: float,
        range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(name=name, policy=policy, max_retries=max_retries, retry_backoff_s=retry_backoff_s)
        self.url, self.headers, self.signing_secret, self.timeout_s = (
            url,
            dict(headers),
            signing_secret,
            timeout_s,
        )
        self.range = range

    def score_range(self) -> tuple[float, float]:
        return self.range

    def __repr__(self) -> str:
        return f"EndpointGrader(name={self.name!r})"

    async def score(self, grading: GradingInput) -> float:
        secrets = [*self.headers.values(), *([self.signing_secret] if self.signing_secret else [])]
        answer = await self._post_json(
            self.url,
            payload={"sample": grading.sample, "item": dict(grading.item), "trace_id": grading.trace_id},
            headers={**self.headers, ROLLOUT_ID_HEADER: grading.trace_id},
            secrets=secrets,
            timeout_s=self.timeout_s,
            signing_secret=self.signing_secret,
        )
        if not isinstance(answer, dict) or "score" not in answer:
            raise GraderError("invalid_response", 'the endpoint must answer {"score": <number>}')
        return _finite(answer["score"], what="the endpoint's score")


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_LABELLED_NUMBER = re.compile(
    r"(?:score|rating|grade|result)\s*[:=]?\s*\**\s*(" + _NUMBER + ")", re.IGNORECASE
)
_ANY_NUMBER = re.compile(_NUMBER)


def parse_judge_score(text: str) -> float:
    """The number a judge model answered: JSON {"score"|"result"|"rating"}, "Score: x", or the first number."""
    stripped = text.strip()
    fenced = re.sub(r"^```(?:json)?\s*|\s*```$", "", stripped)
    try:
        parsed = json.loads(fenced)
    except ValueError:
        parsed = None
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return float(parsed)
    if isinstance(parsed, dict):
        for key in ("score", "result", "rating", "grade"):
            value = parsed.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    for pattern in (_LABELLED_NUMBER, _ANY_NUMBER):
        match = pattern.search(stripped)
        if match:
            return float(match.group(1) if match.groups() else match.group(0))
    raise GraderError("invalid_response", f"the judge's answer contains no score: {stripped[:200]!r}")


class ScoreModelGrader(_HttpGrader):
    """Asks an OpenAI-compatible chat-completions endpoint for a score, parsed and checked against `range`."""

    grader_type = "score_model"

    def __init__(
        self,
        *,
        name: str,
        model: str,
        input: list[dict[str, Any]],
        range: tuple[float, float],
        sampling_params: Mapping[str, Any],
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        policy: OutboundPolicy,
        max_retries: int,
        retry_backoff_s: float,
    ) -> None:
        super().__init__(name=name, policy=policy, max_retries=max_retries, retry_backoff_s=retry_backoff_s)
        self.model, self.input, self.range = model, input, range
        self.sampling_params = dict(sampling_params)
        self.base_url, self.api_key, self.timeout_s = base_url.rstrip("/"), api_key, timeout_s

    def __repr__(self) -> str:
        return f"ScoreModelGrader(name={self.name!r}, model={self.model!r})"

    def _messages(self, grading: GradingInput) -> list[dict[str, str]]:
        messages = []
        for message in self.input:
            content = message.get("content", "")
            if isinstance(content, list):  # content parts: keep their text
                text = "\n".join(render(str(part.get("text", "")), grading.templates) for part in content)
            else:
                text = render(str(content), grading.templates)
            role = "system" if message.get("role") == "developer" else str(message.get("role", "user"))
            messages.append({"role": role, "content": text})
        return messages

    async def score(self, grading: GradingInput) -> float:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        secrets = [self.api_key] if self.api_key else []
        answer = await self._post_json(
            f"{self.base_url}/chat/completions",
            payload={**self.sampling_params, "model": self.model, "messages": self._messages(grading)},
            headers=headers,
            secrets=secrets,
            timeout_s=self.timeout_s,
        )
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise GraderError(
                "invalid_response", "the judge's answer has no choices[0].message.content"
            ) from exc
        if not isinstance(content, str):
            raise GraderError("invalid_response", "the judge's message content is not text")
        # Checked against self.range where every grader's score is (base.checked_score): a judge
        # answering outside its range is a grader error, not clipped into a reward.
        return _finite(parse_judge_score(content), what="the judge's score")

    def score_range(self) -> tuple[float, float]:
        return self.range


class MultiGrader(Grader):
    """Runs named sub-graders concurrently and combines their scores with a formula."""

    grader_type = "multi"

    def __init__(
        self,
        *,
        name: str,
        graders: Mapping[str, Grader],
        formula: Formula,
        range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(name=name)
        self.graders = dict(graders)
        self.formula = formula
        self.range = range

    async def evaluate(self, grading: GradingInput, *, label: str, nested: bool = False) -> Evaluation:
        keys = list(self.graders)
        # Top level: sub-scores are named by their keys; nested: by their path ("a.x").
        prefix = f"{label}." if nested else ""
        evaluations = await asyncio.gather(
            *(self.graders[key].evaluate(grading, label=f"{prefix}{key}", nested=True) for key in keys)
        )
        sub_scores: dict[str, float] = {}
        errors: list[dict[str, str]] = []
        values: dict[str, float] = {}
        for key, evaluation in zip(keys, evaluations, strict=True):
            sub_scores.update(evaluation.sub_scores)
            errors.extend(evaluation.errors)
            if evaluation.score is not None:
                values[key] = evaluation.score
                sub_scores[f"{prefix}{key}"] = evaluation.score
        missing = sorted(self.formula.names - values.keys())
        if missing:
            return Evaluation(score=None, sub_scores=sub_scores, errors=errors)
        try:
            total = self.formula.evaluate(values)
        except FormulaError as exc:
            errors.append({"grader": label, "type": "formula", "message": str(exc)})
            return Evaluation(score=None, sub_scores=sub_scores, errors=errors)
        if not math.isfinite(total):
            errors.append(
                {"grader": label, "type": "invalid_score", "message": f"the formula gave {total!r}"}
            )
            return Evaluation(score=None, sub_scores=sub_scores, errors=errors)
        # A multi grader's `range` clamps its formula's result (its sub-graders' scores are checked).
        if self.range is not None:
            total = min(self.range[1], max(self.range[0], total))
        if nested:
            sub_scores[label] = total
        return Evaluation(score=total, sub_scores=sub_scores, errors=errors)

    async def aclose(self) -> None:
        for grader in self.graders.values():
            await grader.aclose()
