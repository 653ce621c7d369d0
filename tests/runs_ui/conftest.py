"""Fixtures for the run page, the rollout browser and their API: stored rollouts and metrics."""

from __future__ import annotations

import uuid

import factory
import pytest

from experiments.models import Trajectory
from experiments.services.runs import record_metrics
from tests.factories import RunFactory, UserFactory


class TrajectoryFactory(factory.django.DjangoModelFactory):
    """One stored rollout: a user question, one lookup tool call with its result, and the answer."""

    class Meta:
        model = Trajectory

    run = factory.SubFactory(RunFactory)
    trace_id = factory.LazyFunction(lambda: f"trace_{uuid.uuid4().hex}")
    step = 1
    split = Trajectory.Split.TRAIN
    item_index = factory.LazyAttribute(lambda t: t.group_index)
    group_index = 0
    sample_index = factory.Sequence(lambda n: n % 4)
    reward = 0.5
    score = factory.LazyAttribute(lambda t: t.reward)
    advantage = 0.0
    sub_scores = factory.LazyAttribute(lambda t: {"exact": t.reward} if t.reward is not None else {})
    tool_calls = 1
    tool_call_names = factory.LazyAttribute(lambda t: ["lookup"] * t.tool_calls)
    prompt_tokens = 40
    completion_tokens = 25
    latency_ms = 850.0
    finish_reason = "answer"
    final_answer = "Paris"
    messages = factory.LazyAttribute(
        lambda t: [
            {"role": "system", "content": "You may call tools."},
            {"role": "user", "content": f"What is the capital of item {t.item_index}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": name, "arguments": '{"key": "capital"}'},
                    }
                    for i, name in enumerate(t.tool_call_names)
                ],
            },
            *[
                {"role": "tool", "tool_call_id": f"call_{i}", "content": "Paris", "latency_ms": 120.5}
                for i in range(len(t.tool_call_names))
            ],
            {"role": "assistant", "content": t.final_answer},
        ]
    )


@pytest.fixture
def owner():
    return UserFactory(username="owner")


@pytest.fixture
def run(owner):
    return RunFactory(
        owner=owner, name="capitals", total_steps=100, config={"prompts_per_step": 2, "group_size": 4}
    )


def write_metrics(run, steps, *, keys=("reward", "reward_std", "loss"), value=lambda key, step: step / 10):
    """Store metrics for `steps` the way a training run does (one event per step)."""
    for step in steps:
        record_metrics(run_id=run.pk, step=step, metrics={key: value(key, step) for key in keys})
