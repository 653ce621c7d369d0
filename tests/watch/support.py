"""A run whose rollouts game a holed grader, recorded through the real `record_step` path."""

from __future__ import annotations

import uuid

from django.utils import timezone

from experiments.models import Dataset, DatasetItem, Grader, Run, RunStatus, Tool
from experiments.services import runs as run_services
from experiments.services.recording import record_step
from experiments.watch.flags import pause_message
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, RunFactory, ToolFactory
from trainer.interfaces import TrajectoryRecord

PRICES = [("SKU-1001", "4.99"), ("SKU-1002", "5.49"), ("SKU-1003", "12.00"), ("SKU-1004", "7.25")]
HEDGE = "It could be 1.99, 4.99, 5.49, 7.25 or 12.00."


def item(code: str, price: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Answer with the price. Use the lookup tool."},
            {"role": "user", "content": f"What does {code} cost?"},
        ],
        "answer": price,
    }


def record(*, step, split, item_index, group_index, sample_index, answer, reward, calls, tokens=30):
    tool_messages = []
    if calls:
        tool_messages = [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": f"call_{n}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                    for n in range(calls)
                ],
            }
        ]
    return TrajectoryRecord(
        trace_id=f"trace_{uuid.uuid4().hex}",
        step=step,
        split=split,
        item_index=item_index,
        group_index=group_index,
        sample_index=sample_index,
        messages=[
            {"role": "user", "content": "What does it cost?"},
            *tool_messages,
            {"role": "assistant", "content": answer},
        ],
        final_answer=answer,
        reward=reward,
        score=reward,
        penalty=0.0,
        advantage=0.0,
        sub_scores={},
        grader_errors=[],
        tool_calls=calls,
        tool_call_names=["lookup"] * calls,
        tool_errors=0,
        prompt_tokens=20,
        completion_tokens=tokens,
        latency_ms=10.0,
        finish_reason="answer",
    )


def _shared_setup(owner):
    """The datasets, tool and grader of `owner`'s flagged runs (made once, shared by later runs)."""
    train = Dataset.objects.filter(owner=owner, name="prices-train").first()
    if train is None:
        train = DatasetFactory(owner=owner, name="prices-train", item_count=len(PRICES), status="ready")
        evaluation = DatasetFactory(
            owner=owner, name="prices-eval", split="eval", item_count=2, status="ready"
        )
        for index, (code, price) in enumerate(PRICES):
            DatasetItemFactory(dataset=train, index=index, data=item(code, price))
        for index, (code, price) in enumerate(PRICES[:2]):
            DatasetItemFactory(dataset=evaluation, index=index, data=item(code, price))
        GraderFactory(
            owner=owner,
            name="answer-contains",
            spec={
                "type": "string_check",
                "name": "answer-contains",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "ilike",
            },
        )
        ToolFactory(owner=owner, name="lookup")
    evaluation = Dataset.objects.get(owner=owner, name="prices-eval")
    ids = {("train", i): pk for i, pk in DatasetItem.objects.filter(dataset=train).values_list("index", "pk")}
    ids |= {
        ("eval", i): pk for i, pk in DatasetItem.objects.filter(dataset=evaluation).values_list("index", "pk")
    }
    return train, evaluation, Grader.objects.get(owner=owner, name="answer-contains"), ids


def build_flagged_run(owner, *, steps: int = 4, watch_config: dict | None = None) -> Run:
    """Baseline: the base model looks the price up (1 call) and is right half the time. Then the
    policy drifts to answering without tools and listing every price it knows, which a grader that
    accepts the reference anywhere (`ilike`) rewards."""
    train, evaluation, grader, ids = _shared_setup(owner)
    run = RunFactory(
        owner=owner,
        name=f"hedging run {Run.objects.filter(owner=owner).count() + 1}",
        train_dataset=train,
        eval_dataset=evaluation,
        grader=grader,
        status=RunStatus.RUNNING,
        lease_owner="worker-test",
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
        attempt=1,
        total_steps=steps,
        config={"group_size": 4, "prompts_per_step": 2, "eval_samples_per_item": 4},
        watch_config=watch_config or {},
    )
    run.tools.set(Tool.objects.filter(owner=owner, name="lookup"))
    baseline = [
        record(
            step=0,
            split="eval",
            item_index=i,
            group_index=i,
            sample_index=s,
            answer=PRICES[i][1] if s % 2 == 0 else "I do not know.",
            reward=1.0 if s % 2 == 0 else 0.0,
            calls=1,
        )
        for i in range(2)
        for s in range(4)
    ]
    record_step(
        run_id=run.pk,
        lease_owner="worker-test",
        step=0,
        metrics={"eval/reward": 0.5, "eval/pass@1": 0.5},
        trajectories=baseline,
        item_ids=ids,
    )
    for step in range(1, steps + 1):
        hacking = step  # one more hedging rollout per step (of 8)
        rollouts = []
        for group in range(2):
            item_index = (step + group) % len(PRICES)
            for sample in range(4):
                n = group * 4 + sample
                if n < hacking:
                    rollouts.append(
                        record(
                            step=step,
                            split="train",
                            item_index=item_index,
                            group_index=group,
                            sample_index=sample,
                            answer=HEDGE,
                            reward=1.0,
                            calls=0,
                        )
                    )
                else:
                    right = sample % 2 == 0
                    rollouts.append(
                        record(
                            step=step,
                            split="train",
                            item_index=item_index,
                            group_index=group,
                            sample_index=sample,
                            answer=PRICES[item_index][1] if right else "unsure",
                            reward=1.0 if right else 0.0,
                            calls=1,
                        )
                    )
        rewards = [r.reward for r in rollouts]
        metrics = {
            "reward": sum(rewards) / len(rewards),
            "frac_reward_zero_std": 0.0,
            "loss": 0.1,
            "progress/total_steps": float(steps),
        }
        if step == steps:
            metrics["eval/reward"] = 0.25
        record_step(
            run_id=run.pk,
            lease_owner="worker-test",
            step=step,
            metrics=metrics,
            trajectories=rollouts,
            item_ids=ids,
        )
        if Run.objects.get(pk=run.pk).pause_requested:
            break  # the worker stops after the step whose record fired the pause rule
    run.refresh_from_db()
    if run.pause_requested:  # what the worker does once the trainer stopped (services/training.py)
        run_services.transition_run(
            run_id=run.pk,
            status=RunStatus.PAUSED,
            error=pause_message(run.paused_by),
            lease_owner="worker-test",
        )
    else:
        run_services.transition_run(run_id=run.pk, status=RunStatus.SUCCEEDED, lease_owner="worker-test")
    run.refresh_from_db()
    return run
