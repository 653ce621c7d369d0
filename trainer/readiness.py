"""Readiness: k rollouts per item with the base model (adapter off, no training), graded.

This reuses the training loop's own evaluation (`_Run.evaluate`: the same rollout engine, chunking,
grading and pass@k metrics as a run's baseline) so a readiness report and a run's step-0 eval
measure the same thing. The statistics (best-of-k curve, zero-variance items, verdict) are the web
app's business; this returns the graded rollouts, per-item rewards and the eval metrics.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from trainer.config import ConfigError, TrainerConfig
from trainer.generation import GenerationBackend
from trainer.interfaces import Grader, ToolExecutor, TrajectoryRecord
from trainer.loop import _Run, validate_items
from trainer.metrics import trajectory_record
from trainer.models import load_policy


@dataclass
class ReadinessResult:
    records: list[TrajectoryRecord]  # every rollout, split "eval", step 0
    rewards_by_item: dict[int, list[float | None]]  # item index -> the k rewards (None: grader error)
    metrics: dict[str, float]  # eval/reward, eval/pass@1..k, eval/tools/... as a run's baseline reports
    time_s: float


class _NullReporter:
    def report_step(self, step, metrics, trajectories) -> None:  # pragma: no cover - never called
        pass

    def report_checkpoint(self, step, path, metrics) -> None:  # pragma: no cover - never called
        pass

    def log(self, level, message) -> None:
        pass


def evaluate_base_model(
    *,
    config: TrainerConfig,
    items: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] = (),
    tool_executor: ToolExecutor,
    grader: Grader,
    k: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    backend_factory: Callable[[Any, Any], GenerationBackend] | None = None,
) -> ReadinessResult:
    """Sample `k` (default: config.eval_samples_per_item) rollouts per item with the base model."""
    if isinstance(config, Mapping):
        config = TrainerConfig.from_dict(dict(config))
    if k is not None:
        config = replace(config, eval_samples_per_item=k)
    config.validate()
    items = list(items)
    if not items:
        raise ConfigError("items: at least one item is required")
    validate_items(items, name="items")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    model, tokenizer = load_policy(config=config)
    model.eval()
    loop = asyncio.new_event_loop()
    try:
        run = _Run(
            config=config,
            train_items=items,
            eval_items=items,
            tools=list(tools),
            tool_executor=tool_executor,
            grader=grader,
            reporter=_NullReporter(),
            should_stop=should_stop,
            output_dir=".",
            backend_factory=backend_factory,
            model=model,
            tokenizer=tokenizer,
            loop=loop,
        )
        # A fresh LoRA adapter changes nothing (B = 0), but the base model is what is measured here.
        with model.disable_adapter(), torch.no_grad():
            metrics, rollouts = run.evaluate(0)
    finally:
        try:
            for closable in (tool_executor, grader):
                close = getattr(closable, "aclose", None)
                if close is not None:
                    loop.run_until_complete(close())
        finally:
            loop.close()
    records = [trajectory_record(rollout, step=0) for rollout in rollouts]
    rewards_by_item: dict[int, list[float | None]] = {}
    for record in records:
        rewards_by_item.setdefault(record.item_index, []).append(record.reward)
    return ReadinessResult(
        records=records,
        rewards_by_item=rewards_by_item,
        metrics=dict(metrics),
        time_s=time.perf_counter() - started,
    )
