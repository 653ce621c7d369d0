"""Three stored runs over one eval set, built so that every comparison has a known answer.

Eval items 0-5, two rollouts per item, at step 0 (the base model) and step 20 (the final eval).
Per-item mean rewards:

    item              0     1     2     3     4     5
    base (A, step 0)  0.0   0.5   0.5   0.0   0.0   0.0
    A final           0.5   0.5   1.0   0.0   0.5   0.2
    B final           1.0   0.0   1.0   0.5   0.52  0.2    vs A: +, -, =, +, = (0.02 < 0.05), =
    C final           0.5   0.5   0.0   0.0   0.5   1.0    vs A: =, =, -, =, =, +

A: the baseline; B: a higher learning rate; C: bigger groups and a tool-call penalty.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from experiments.models import MetricPoint, Trajectory
from tests.factories import DatasetFactory, GraderFactory, RunFactory, ToolFactory, UserFactory
from tests.runs_ui.conftest import TrajectoryFactory

BASE = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
FINALS = {
    "A": [0.5, 0.5, 1.0, 0.0, 0.5, 0.2],
    "B": [1.0, 0.0, 1.0, 0.5, 0.52, 0.2],
    "C": [0.5, 0.5, 0.0, 0.0, 0.5, 1.0],
}
CONFIGS = {
    "A": {"learning_rate": 1e-5},
    "B": {"learning_rate": 3e-5},
    "C": {"learning_rate": 1e-5, "group_size": 16, "tool_call_penalty": 0.1},
}
BASE_CALLS = [1, 2, 3, 9, 12, 2]  # the base model's runaway rollouts (9 and 12 calls)
FINAL_CALLS = {"A": [1, 2, 2, 3, 2, 1], "B": [1, 1, 2, 2, 1, 1], "C": [1, 1, 1, 1, 1, 1]}


def store_eval(run, step, rewards, calls):
    for item, (reward, n_calls) in enumerate(zip(rewards, calls, strict=True)):
        for sample in range(2):
            names = ["search"] * n_calls if sample == 0 else ["search", "read_file"][: n_calls % 3]
            TrajectoryFactory(
                run=run,
                step=step,
                split=Trajectory.Split.EVAL,
                item_index=item,
                group_index=item,
                sample_index=sample,
                reward=reward,
                score=reward,
                tool_calls=len(names),
                tool_call_names=names,
                final_answer=f"answer {item} from {run.name} at {step}",
            )


def store_metrics(run, steps, value):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    MetricPoint.objects.bulk_create(
        MetricPoint(
            run=run,
            seq=step + 1,
            step=step,
            key=key,
            value=value(key, step),
            wall_time=start + timedelta(seconds=2 * step),
        )
        for step in steps
        for key in ("reward", "loss")
    )
    run.last_seq = max(steps) + 1
    run.save(update_fields=["last_seq"])


@pytest.fixture
def owner():
    return UserFactory(username="comparer")


@pytest.fixture
def stranger():
    return UserFactory(username="stranger")


@pytest.fixture
def compared(owner):
    """{"A": run, "B": run, "C": run}, sharing datasets, tools and grader; finished."""
    train = DatasetFactory(owner=owner, name="capitals-train")
    evals = DatasetFactory(owner=owner, name="capitals-eval", split="eval")
    grader = GraderFactory(owner=owner, name="exact")
    tool = ToolFactory(owner=owner, name="search")
    started = datetime(2026, 1, 1, tzinfo=UTC)
    runs = {}
    for position, name in enumerate("ABC"):
        run = RunFactory(
            owner=owner,
            name=f"run-{name}",
            config=CONFIGS[name],
            train_dataset=train,
            eval_dataset=evals,
            grader=grader,
            status="succeeded",
            started_at=started,
            finished_at=started + timedelta(seconds=100 * (position + 1)),
            current_step=20,
            total_steps=20,
        )
        run.tools.add(tool)
        store_eval(run, 0, BASE, BASE_CALLS)
        store_eval(run, 20, FINALS[name], FINAL_CALLS[name])
        store_metrics(
            run,
            range(0, 21),
            lambda key, step, p=position: p + step / 20 if key == "reward" else 1 / (1 + step),
        )
        runs[name] = run
    return runs
