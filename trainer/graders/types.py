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

from trainer.graders.base import Evaluation, Grader, GradingInput
from trainer.graders.errors import GraderError
from trainer.graders.formula import Formula, FormulaError
from trainer.graders.sandbox import SandboxLimits, run_python_grader
from trainer.graders.similarity import similarity
from trainer.graders.templates import render, resolve
from trainer.outbound.client import OutboundClient, OutboundError, OutboundResponse, redact
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.tools import ROLLOUT_ID_HEADER

STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
NEEDS_JUDGE = (
    "needs a judge endpoint: the server has no default judge (RFT_JUDGE_BASE_URL) and the grader "
    "names no base_url"
)
NEEDS_EMBEDDINGS = (
    "needs an embeddings endpoint: the server has no default (RFT_EMBEDDINGS_BASE_URL) and the grader "
    "names no base_url"
)
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

    def __init__(
        self,
        *,
        name: str,
        input: str,
        reference: str,
        evaluation_metric: str,
        embeddings: EmbeddingsClient | None = None,
    ) -> None:
        super().__init__(name=name)
        self.input, self.reference, self.metric = input, reference, evaluation_metric
        self.embeddings = embeddings

    def score_range(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.metric == "cosine" else (0.0, 1.0)

    def unmet_requirements(self, *, label: str | None = None) -> list[str]:
        if self.metric == "cosine" and (self.embeddings is None or not self.embeddings.base_url):
            return [f"{label or self.name}: {NEEDS_EMBEDDINGS}"]
        return []

    async def score(self, grading: GradingInput) -> float:
        candidate = render(self.input, grading.templates)
        reference = render(self.reference, grading.templates)
        if self.metric == "cosine":
            if self.embeddings is None or not self.embeddings.base_url:
                raise GraderError("needs_endpoint", NEEDS_EMBEDDINGS)
            return await self.embeddings.cosine(candidate, reference, grading=grading)
        return similarity(self.metric, candidate=candidate, reference=reference)

    async def aclose(self) -> None:
        if self.embeddings is not None:
            await self.embeddings.aclose()


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


class OutboundCaller:
    """POSTs JSON through the policy-enforcing client (pooled, created on first use, per loop owner)."""

    def __init__(self, *, policy: OutboundPolicy, max_retries: int, retry_backoff_s: float) -> None:
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

    async def post_json(
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


class _HttpGrader(Grader):
    """A grader that calls out through the policy-enforcing client."""

    def __init__(
        self, *, name: str, policy: OutboundPolicy, max_retries: int, retry_backoff_s: float
    ) -> None:
        super().__init__(name=name)
        self.policy = policy
        self.caller = OutboundCaller(policy=policy, max_retries=max_retries, retry_backoff_s=retry_backoff_s)

    async def aclose(self) -> None:
        await self.caller.aclose()

    async def _post_json(self, url: str, **kwargs: Any) -> Any:
        return await self.caller.post_json(url, **kwargs)


class EmbeddingsClient:
    """Cosine similarity of two texts through an OpenAI-compatible `/embeddings` endpoint."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        timeout_s: float,
        policy: OutboundPolicy,
        max_retries: int,
        retry_backoff_s: float,
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.api_key, self.model, self.timeout_s = api_key, model, timeout_s
        self.caller = OutboundCaller(policy=policy, max_retries=max_retries, retry_backoff_s=retry_backoff_s)

    def __repr__(self) -> str:
        return f"EmbeddingsClient(base_url={self.base_url!r}, model={self.model!r})"

    async def cosine(self, candidate: str, reference: str, *, grading: GradingInput) -> float:
        if not candidate.strip() or not reference.strip():
            # Embedding APIs refuse empty input; an empty answer shares nothing with the reference.
            return 0.0 if candidate.strip() or reference.strip() else 1.0
        answer = await self.caller.post_json(
            f"{self.base_url}/embeddings",
            payload={"model": self.model, "input": [candidate, reference]},
            headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {},
            secrets=[self.api_key] if self.api_key else [],
            timeout_s=self.timeout_s,
        )
        try:
            rows = sorted(answer["data"], key=lambda row: row.get("index", 0))
            first, second = (list(map(float, row["embedding"])) for row in rows[:2])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GraderError(
                "invalid_response", "the embeddings endpoint's answer has no data[].embedding pair"
            ) from exc
        if isinstance(answer, dict):
            grading.add_usage(answer.get("usage"))
        if len(first) != len(second) or not first:
            raise GraderError("invalid_response", "the two embeddings differ in length or are empty")
        norm = math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second))
        if norm == 0:
            raise GraderError("invalid_response", "the embeddings endpoint returned a zero vector")
        return max(-1.0, min(1.0, sum(a * b for a, b in zip(first, second, strict=True)) / norm))

    async def aclose(self) -> None:
        await self.caller.aclose()


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


def _judge_json(text: str) -> tuple[str, Any]:
    """The judge's answer stripped, and its JSON value (None when it is not JSON; ``` fences allowed)."""
    stripped = text.strip()
    try:
        return stripped, json.loads(re.sub(r"^```(?:json)?\s*|\s*```$", "", stripped))
    except ValueError:
        return stripped, None


def parse_judge_score(text: str) -> float:
    """The number a judge model answered: JSON {"score"|"result"|"rating"}, "Score: x", or the first number."""
    stripped, parsed = _judge_json(text)
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


def message_texts(content: Any) -> list[str] | None:
    """The texts of a message's content: a string, one {type, text} part, or a list of parts."""
    if isinstance(content, str):
        return [content]
    parts = [content] if isinstance(content, Mapping) else content
    if not isinstance(parts, list):
        return None
    texts = [part.get("text") for part in parts if isinstance(part, Mapping)]
    if len(texts) != len(parts) or not all(isinstance(text, str) for text in texts):
        return None
    return texts


class _ModelGrader(_HttpGrader):
    """Asks an OpenAI-compatible chat-completions endpoint (the judge) about the sample."""

    def __init__(
        self,
        *,
        name: str,
        model: str,
        input: list[dict[str, Any]],
        sampling_params: Mapping[str, Any],
        base_url: str | None,
        api_key: str | None,
        timeout_s: float,
        policy: OutboundPolicy,
        max_retries: int,
        retry_backoff_s: float,
    ) -> None:
        super().__init__(name=name, policy=policy, max_retries=max_retries, retry_backoff_s=retry_backoff_s)
        self.model, self.input = model, input
        self.sampling_params = dict(sampling_params)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.api_key, self.timeout_s = api_key, timeout_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"

    def unmet_requirements(self, *, label: str | None = None) -> list[str]:
        return [] if self.base_url else [f"{label or self.name}: {NEEDS_JUDGE}"]

    def _messages(self, grading: GradingInput) -> list[dict[str, str]]:
        messages = []
        for message in self.input:
            texts = message_texts(message.get("content", "")) or []
            text = "\n".join(render(part, grading.templates) for part in texts)
            role = "system" if message.get("role") == "developer" else str(message.get("role", "user"))
            messages.append({"role": role, "content": text})
        return messages

    async def _ask(self, grading: GradingInput, **extra: Any) -> str:
        if not self.base_url:
            raise GraderError("needs_endpoint", NEEDS_JUDGE)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        secrets = [self.api_key] if self.api_key else []
        answer = await self._post_json(
            f"{self.base_url}/chat/completions",
            payload={
                **self.sampling_params,
                **extra,
                "model": self.model,
                "messages": self._messages(grading),
            },
            headers=headers,
            secrets=secrets,
            timeout_s=self.timeout_s,
        )
        if isinstance(answer, dict):
            grading.add_usage(answer.get("usage"))
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise GraderError(
                "invalid_response", "the judge's answer has no choices[0].message.content"
            ) from exc
        if not isinstance(content, str):
            raise GraderError("invalid_response", "the judge's message content is not text")
        return content


class ScoreModelGrader(_ModelGrader):
    """The judge answers a score, parsed and checked against `range` (base.checked_score): a judge
    answering outside its range is a grader error, not clipped into a reward."""

    grader_type = "score_model"

    def __init__(self, *, range: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.range = range

    def score_range(self) -> tuple[float, float]:
        return self.range

    async def score(self, grading: GradingInput) -> float:
        content = await self._ask(grading)
        return _finite(parse_judge_score(content), what="the judge's score")


class LabelModelGrader(_ModelGrader):
    """The judge picks one of `labels`; 1.0 when it is one of `passing_labels`, else 0.0."""

    grader_type = "label_model"

    def __init__(self, *, labels: list[str], passing_labels: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labels, self.passing_labels = list(labels), list(passing_labels)

    async def score(self, grading: GradingInput) -> float:
        # Structured output keeps the answer to one label where the judge supports it; the parse
        # below also reads a plain-text answer from judges that ignore response_format.
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": self.labels}},
            "required": ["label"],
            "additionalProperties": False,
        }
        content = await self._ask(
            grading,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "label", "strict": True, "schema": schema},
            },
        )
        return float(parse_judge_label(content, self.labels) in self.passing_labels)


def parse_judge_label(text: str, labels: list[str]) -> str:
    """The label a judge answered: JSON {"label": ...}, the bare label, or the one label it names."""
    stripped, parsed = _judge_json(text)
    candidate = parsed.get("label") if isinstance(parsed, dict) else parsed
    by_fold = {label.casefold(): label for label in labels}
    if isinstance(candidate, str) and candidate.strip().casefold() in by_fold:
        return by_fold[candidate.strip().casefold()]
    bare = stripped.strip("`'\".* ").casefold()
    if bare in by_fold:
        return by_fold[bare]
    named = [
        label
        for label in labels
        if re.search(r"(?<![\w-])" + re.escape(label.casefold()) + r"(?![\w-])", stripped.casefold())
    ]
    if len(named) == 1:
        return named[0]
    raise GraderError(
        "invalid_response",
        f"the judge's answer names {'no' if not named else 'more than one'} of the labels "
        f"{labels}: {stripped[:200]!r}",
    )


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

    def score_range(self) -> tuple[float, float] | None:
        return self.range

    def unmet_requirements(self, *, label: str | None = None) -> list[str]:
        prefix = f"{label}." if label else ""
        return [
            reason
            for key, grader in self.graders.items()
            for reason in grader.unmet_requirements(label=f"{prefix}{key}")
        ]

    async def evaluate(self, grading: GradingInput, *, label: str, nested: bool = False) -> Evaluation:
        keys = list(self.graders)
        # Top level: sub-scores are named by their keys; nested: by their path ("a.x").
        prefix = f"{label}." if nested else ""
        evaluations = await asyncio.gather(
            *(self.graders[key].evaluate(grading, label=f"{prefix}{key}", nested=True) for key in keys)
        )
        sub_scores: dict[str, float] = {}
        errors: list[dict[str, str]] = []
        passed: dict[str, bool] = {}
        values: dict[str, float] = {}
        for key, evaluation in zip(keys, evaluations, strict=True):
            sub_scores.update(evaluation.sub_scores)
            errors.extend(evaluation.errors)
            passed.update(evaluation.passed)
            if evaluation.score is not None:
                values[key] = evaluation.score
                sub_scores[f"{prefix}{key}"] = evaluation.score
        missing = sorted(self.formula.names - values.keys())
        if missing:
            return Evaluation(score=None, sub_scores=sub_scores, errors=errors, passed=passed)
        try:
            total = self.formula.evaluate(values)
        except FormulaError as exc:
            errors.append({"grader": label, "type": "formula", "message": str(exc)})
            return Evaluation(score=None, sub_scores=sub_scores, errors=errors, passed=passed)
        if not math.isfinite(total):
            errors.append(
                {"grader": label, "type": "invalid_score", "message": f"the formula gave {total!r}"}
            )
            return Evaluation(score=None, sub_scores=sub_scores, errors=errors, passed=passed)
        # A multi grader's `range` clamps its formula's result (its sub-graders' scores are checked).
        if self.range is not None:
            total = min(self.range[1], max(self.range[0], total))
        if nested:
            sub_scores[label] = total
        if self.pass_threshold is not None:
            passed[label] = total >= self.pass_threshold
        return Evaluation(score=total, sub_scores=sub_scores, errors=errors, passed=passed)

    async def aclose(self) -> None:
        for grader in self.graders.values():
            await grader.aclose()
