"""`record_step`, the worker's write path: every field of every rollout lands as the trainer made it,
a step reported again stores nothing twice, text PostgreSQL cannot hold is made safe, and only the
lease holder writes. On the real database (rollouts go in with COPY on PostgreSQL)."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from experiments.models import MetricPoint, RunEvent, RunStatus, Trajectory
from experiments.services.recording import record_step
from experiments.services.runs import LeaseLost
from tests.factories import DatasetItemFactory, RunFactory, UserFactory
from trainer.interfaces import TrajectoryRecord

pytestmark = pytest.mark.django_db(transaction=True)

HOLDER = "worker-a@host:1"


@pytest.fixture
def run():
    run = RunFactory(
        owner=UserFactory(),
        status=RunStatus.RUNNING,
        lease_owner=HOLDER,
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
        attempt=1,
    )
    return run


def rollout(step: int, sample: int, **changes) -> TrajectoryRecord:
    fields = dict(
        trace_id=f"trace_{uuid.uuid4().hex}",
        step=step,
        split="train",
        item_index=sample // 2,
        group_index=sample // 2,
        sample_index=sample % 2,
        messages=[
            {"role": "user", "content": 'What does a "blue" widget cost?\n\tTab, é, 💡, back\\slash'},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"sku": "B-1", "n": [1, 2.5]}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"price": "4.99"}', "latency_ms": 12.5},
            {"role": "assistant", "content": "4.99"},
        ],
        final_answer="4.99",
        reward=0.75,
        score=1.0,
        penalty=0.25,
        advantage=-0.5,
        sub_scores={"exact": 1.0, "f1": 0.5},
        grader_errors=[],
        tool_calls=1,
        tool_call_names=["lookup"],
        tool_errors=0,
        prompt_tokens=31,
        completion_tokens=7,
        latency_ms=240.5,
        finish_reason="answer",
    )
    fields.update(changes)
    return TrajectoryRecord(**fields)


def test_every_field_of_every_rollout_is_stored_as_reported(run):
    item = DatasetItemFactory(dataset=run.train_dataset, index=0)
    records = [rollout(1, sample) for sample in range(4)]
    records[3] = rollout(1, 3, reward=None, score=None, advantage=None, grader_errors=[{"type": "timeout"}])
    event = record_step(
        run_id=run.pk,
        lease_owner=HOLDER,
        step=1,
        metrics={"reward": 0.75, "loss": 0.1},
        trajectories=records,
        item_ids={("train", 0): item.pk},
    )
    assert event is not None and event.kind == "metrics"
    stored = {t.trace_id: t for t in Trajectory.objects.filter(run=run)}
    assert set(stored) == {record.trace_id for record in records}
    for record in records:
        row = stored[record.trace_id]
        for name, value in record.__dict__.items():
            assert getattr(row, name) == value, name
        assert row.item_id == (item.pk if record.item_index == 0 else None)
        assert row.flags == []
        assert row.created_at is not None and abs((timezone.now() - row.created_at).total_seconds()) < 60
    keys = MetricPoint.objects.filter(run=run).exclude(key__startswith="watch/").values_list("key", flat=True)
    assert sorted(keys) == ["loss", "reward"]  # (the reward-hacking watch adds its watch/* metrics)


def test_a_step_reported_again_stores_nothing_twice_and_announces_nothing(run):
    records = [rollout(2, sample) for sample in range(4)]
    first = record_step(
        run_id=run.pk, lease_owner=HOLDER, step=2, metrics={"reward": 0.5}, trajectories=records
    )
    again = record_step(
        run_id=run.pk, lease_owner=HOLDER, step=2, metrics={"reward": 0.5}, trajectories=records
    )
    assert first is not None and again is None
    assert Trajectory.objects.filter(run=run).count() == 4
    stored_points = MetricPoint.objects.filter(run=run).count()
    assert MetricPoint.objects.filter(run=run, key="reward").count() == 1
    assert RunEvent.objects.filter(run=run, kind="metrics").count() == 1
    # A partly new report (a resumed attempt that got further) stores only what is new.
    more = records[:2] + [rollout(2, 4), rollout(2, 5)]
    record_step(run_id=run.pk, lease_owner=HOLDER, step=2, metrics={"reward": 0.5}, trajectories=more)
    assert Trajectory.objects.filter(run=run).count() == 6
    assert MetricPoint.objects.filter(run=run).count() == stored_points
    # The same trace id twice in one report is stored once.
    twice = rollout(3, 0)
    record_step(run_id=run.pk, lease_owner=HOLDER, step=3, metrics={}, trajectories=[twice, twice])
    assert Trajectory.objects.filter(run=run, step=3).count() == 1


def test_nul_characters_from_the_model_are_replaced_and_other_text_kept(run):
    dirty = rollout(
        1,
        0,
        final_answer="4.\x0099",
        messages=[
            {"role": "user", "content": "a literal \\u0000 stays as written"},
            {"role": "assistant", "content": "bad\x00byte", "extra\x00key": ["x\x00", 1]},
        ],
        sub_scores={"f\x001": 0.5},
    )
    record_step(run_id=run.pk, lease_owner=HOLDER, step=1, metrics={"reward": 1.0}, trajectories=[dirty])
    row = Trajectory.objects.get(trace_id=dirty.trace_id)
    assert row.final_answer == "4.\ufffd99"
    assert row.messages == [
        {"role": "user", "content": "a literal \\u0000 stays as written"},
        {"role": "assistant", "content": "bad\ufffdbyte", "extra\ufffdkey": ["x\ufffd", 1]},
    ]
    assert row.sub_scores == {"f\ufffd1": 0.5}


def test_only_the_lease_holder_writes(run):
    with pytest.raises(LeaseLost):
        record_step(
            run_id=run.pk,
            lease_owner="worker-b@host:2",
            step=1,
            metrics={"reward": 1.0},
            trajectories=[rollout(1, 0)],
        )
    assert not Trajectory.objects.filter(run=run).exists()
    assert not MetricPoint.objects.filter(run=run).exists()
