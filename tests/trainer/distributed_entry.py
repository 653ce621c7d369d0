"""What each rank of the trainer's multi-device tests runs (ranks are spawned: this must be a module).

`run_toy(arguments)` trains the toy task in this rank and returns, on rank 0, everything the
reporter received. Each rollout samples from a stream seeded by its place in the step (see
trainer/README.md, "Determinism"), so a 2-rank run and a 1-rank run see the same rollouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.interfaces import GradeResult


class LengthGrader:
    """Scores by answer length, so that a random model's rollouts already differ in reward."""

    async def grade(self, sample, item, *, trace_id):
        return GradeResult(score=(len(sample["output_text"]) % 3) / 2, sub_scores={"length": 1.0})


class KillingGrader:
    """Grades like `inner`, then SIGKILLs its own process (a rank dying mid-run, as an OOM kill)."""

    def __init__(self, inner: Any, *, after: int):
        self.inner = inner
        self.after = after
        self.calls = 0

    async def grade(self, sample, item, *, trace_id):
        import os
        import signal

        self.calls += 1
        if self.calls > self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        return await self.inner.grade(sample, item, trace_id=trace_id)


class ListReporter:
    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float], list[Any]]] = []
        self.checkpoints: list[tuple[int, str]] = []
        self.logs: list[tuple[str, str]] = []

    def report_step(self, step: int, metrics: Mapping[str, float], trajectories: Sequence[Any]) -> None:
        self.steps.append((step, dict(metrics), list(trajectories)))

    def report_checkpoint(self, step: int, path: str, metrics: Mapping[str, float]) -> None:
        self.checkpoints.append((step, path))

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))


def run_toy(arguments: dict[str, Any]) -> dict[str, Any]:
    """arguments: config (dict), items (count), output_dir, resume_from, tool_url,
    stop_after_step. Returns what rank 0's reporter received (other ranks: the same keys, empty)."""
    import os

    import torch

    from trainer import TrainerConfig, train
    from trainer.toy import TOY_TOOL_NAME, TOY_TOOLS, ToyGrader, ToyToolExecutor, toy_items

    torch.set_num_threads(1)
    reporter = ListReporter()
    if arguments.get("tool_url"):
        from trainer.outbound.policy import OutboundPolicy
        from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

        executor = HttpToolExecutor(
            endpoints={TOY_TOOL_NAME: ToolEndpoint(url=arguments["tool_url"], timeout_s=10.0)},
            policy=OutboundPolicy(allow_loopback=True),
        )
        grader = ToyGrader()
    else:
        executor, grader = ToyToolExecutor(), LengthGrader()
    Path(arguments["output_dir"]).mkdir(parents=True, exist_ok=True)
    (Path(arguments["output_dir"]) / f"pid-rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    if arguments.get("kill_rank") is not None and os.environ.get("RANK") == str(arguments["kill_rank"]):
        grader = KillingGrader(grader, after=arguments["kill_after_gradings"])
    train_items = toy_items(count=arguments.get("items", 8), seed=1)
    stop_after = arguments.get("stop_after_step")
    result = train(
        config=TrainerConfig.from_dict(arguments["config"]),
        train_items=train_items,
        eval_items=toy_items(count=arguments["eval_items"], seed=2) if arguments.get("eval_items") else [],
        tools=TOY_TOOLS,
        tool_executor=executor,
        grader=grader,
        reporter=reporter,
        should_stop=(lambda: stop_after is not None and len(reporter.steps) >= stop_after),
        output_dir=arguments["output_dir"],
        resume_from=arguments.get("resume_from"),
    )
    return {
        "result": result,
        "steps": reporter.steps,
        "checkpoints": reporter.checkpoints,
        "logs": reporter.logs,
    }
