"""What every grader shares: turning a score or a GraderError into a `GradeResult`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from trainer.graders.errors import GraderError
from trainer.graders.templates import TemplateContext
from trainer.interfaces import GradeResult

logger = logging.getLogger(__name__)


def normalize_sample(sample: Mapping[str, Any], *, trace_id: str) -> dict[str, Any]:
    """The sample with every documented key present (graders may rely on them)."""
    normalized = dict(sample)
    normalized["output_text"] = str(normalized.get("output_text") or "")
    normalized["output_tools"] = list(normalized.get("output_tools") or [])
    normalized["messages"] = list(normalized.get("messages") or [])
    normalized["trace_id"] = str(normalized.get("trace_id") or trace_id)
    return normalized


@dataclass
class GradingInput:
    sample: dict[str, Any]
    item: Mapping[str, Any]
    trace_id: str
    templates: TemplateContext
    # Tokens the judge/embedding models reported for this grading ({"prompt_tokens": n, ...}).
    token_usage: dict[str, int] = field(default_factory=dict)

    def add_usage(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                self.token_usage[key] = self.token_usage.get(key, 0) + value


@dataclass
class Evaluation:
    score: float | None
    sub_scores: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    passed: dict[str, bool] = field(default_factory=dict)


def checked_score(value: Any, score_range: tuple[float, float] | None) -> float:
    """A grader's raw score as a reward, or GraderError: it must be a finite number within the grader's
    range. Out of range is the grader's error (counted, excluded from the update), never a reward."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GraderError("invalid_score", f"the score is {value!r}, not a number")
    score = float(value)
    if not math.isfinite(score):
        raise GraderError("invalid_score", f"the score is {value!r}, not a finite number")
    if score_range is not None and not score_range[0] <= score <= score_range[1]:
        low, high = score_range
        raise GraderError(
            "out_of_range", f"the score {value!r} is outside the grader's range [{low:g}, {high:g}]"
        )
    return score


class Grader:
    """Base of all grader types; implements `trainer.interfaces.Grader`."""

    grader_type: ClassVar[str] = ""

    def __init__(self, *, name: str) -> None:
        self.name = name
        # Set by build_grader from the spec's `pass_threshold`: a score at or above it passes.
        self.pass_threshold: float | None = None

    def unmet_requirements(self, *, label: str | None = None) -> list[str]:
        """Why this grader cannot score here (e.g. no judge endpoint configured); empty when it can."""
        return []

    def score_range(self) -> tuple[float, float] | None:
        """The scores this grader may give ([0, 1] unless a type says otherwise; None: any finite one)."""
        return (0.0, 1.0)

    async def score(self, grading: GradingInput) -> float:
        """The score; raises GraderError when there is none."""
        raise NotImplementedError

    async def evaluate(self, grading: GradingInput, *, label: str, nested: bool = False) -> Evaluation:
        """Score under `label` (a sub-grader's path inside a multi grader, else the grader's name)."""
        try:
            value = checked_score(await self.score(grading), self.score_range())
        except GraderError as exc:
            logger.info("grader %s (%s) failed: %s: %s", label, self.grader_type, exc.error_type, exc.message)
            return Evaluation(
                score=None, errors=[{"grader": label, "type": exc.error_type, "message": exc.message}]
            )
        passed = {label: value >= self.pass_threshold} if self.pass_threshold is not None else {}
        return Evaluation(score=value, sub_scores={label: value}, passed=passed)

    async def grade(
        self, sample: Mapping[str, Any], item: Mapping[str, Any], *, trace_id: str
    ) -> GradeResult:
        started = time.perf_counter()
        normalized = normalize_sample(sample, trace_id=trace_id)
        grading = GradingInput(
            sample=normalized,
            item=item,
            trace_id=trace_id,
            templates=TemplateContext(sample=normalized, item=item),
        )
        evaluation = await self.evaluate(grading, label=self.name)
        return GradeResult(
            score=evaluation.score,
            sub_scores=evaluation.sub_scores,
            errors=evaluation.errors,
            latency_ms=(time.perf_counter() - started) * 1000,
            passed=evaluation.passed,
            token_usage=grading.token_usage,
        )

    async def aclose(self) -> None:
        """Release outbound connections (graders that call HTTP endpoints hold a pooled client)."""
        return None

    async def __aenter__(self) -> Grader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
