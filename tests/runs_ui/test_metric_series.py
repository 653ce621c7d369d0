"""The charts' history: min/max/last downsampling, x axes, gap fill after a seq, metric keys."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from experiments.models import MetricPoint
from experiments.selectors import metrics as metric_selectors
from experiments.selectors.metrics import metric_keys, metric_series, metrics_after, run_progress

from .conftest import write_metrics

pytestmark = pytest.mark.django_db

START = datetime(2026, 1, 1, tzinfo=UTC)


def bulk_points(run, *, steps, keys, seed=0):
    rng = random.Random(seed)
    rows = []
    values = {}
    for step in steps:
        for key in keys:
            value = rng.gauss(0, 1)
            values[(key, step)] = value
            rows.append(
                MetricPoint(
                    run=run,
                    seq=step,
                    step=step,
                    key=key,
                    value=value,
                    wall_time=START + timedelta(seconds=2 * step),
                )
            )
    MetricPoint.objects.bulk_create(rows)
    return values


def test_long_series_are_downsampled_keeping_the_extremes_and_the_last_point(run):
    values = bulk_points(run, steps=range(0, 5000), keys=["reward", "loss"])
    values[("loss", 3210)] = 99.0
    MetricPoint.objects.filter(run=run, key="loss", step=3210).update(value=99.0)

    series = metric_series(run_ids=[run.pk], keys=["reward", "loss"], max_points=300)["runs"][run.pk][
        "series"
    ]

    for key in ("reward", "loss"):
        points = series[key]
        assert 200 <= len(points["y"]) <= 300
        assert points["step"] == sorted(points["step"])
        assert len(set(points["step"])) == len(points["step"])
        stored = [values[(key, step)] for step in range(5000)]
        assert min(points["y"]) == min(stored)
        assert max(points["y"]) == max(stored)
        assert points["step"][-1] == 4999  # the curve ends where the run is
        assert all(values[(key, step)] == y for step, y in zip(points["step"], points["y"], strict=True))
    assert 99.0 in series["loss"]["y"]  # a single-step spike survives


def test_each_bucket_keeps_its_own_minimum_and_maximum(run):
    values = bulk_points(run, steps=range(1, 3001), keys=["kl"], seed=3)
    max_points = 150
    series = metric_series(run_ids=[run.pk], keys=["kl"], max_points=max_points)["runs"][run.pk]["series"][
        "kl"
    ]
    kept = dict(zip(series["step"], series["y"], strict=True))
    width = -(-3000 // (max_points // 3))
    for start in range(1, 3001, width):
        bucket = {step: values[("kl", step)] for step in range(start, min(start + width, 3001))}
        assert min(bucket.values()) in kept.values()
        assert max(bucket.values()) in kept.values()
        assert max(bucket) in kept  # the bucket's last step


def test_short_and_sparse_series_come_back_exactly(run):
    bulk_points(run, steps=range(0, 500, 10), keys=["eval/reward"])
    bulk_points(run, steps=range(0, 500), keys=["reward"], seed=1)
    series = metric_series(run_ids=[run.pk], keys=["eval/reward", "reward"], max_points=2000)["runs"][run.pk][
        "series"
    ]
    assert series["eval/reward"]["step"] == list(range(0, 500, 10))
    assert series["reward"]["step"] == list(range(500))


def test_postgresql_bucketing_matches_the_portable_implementation(run):
    if connection.vendor != "postgresql":
        pytest.skip("the SQL bucketing runs on PostgreSQL only")
    bulk_points(run, steps=range(0, 4000), keys=["a", "b"], seed=7)
    bulk_points(run, steps=range(0, 4000, 7), keys=["sparse"], seed=8)
    kwargs = {
        "run_id": run.pk,
        "keys": ["a", "b", "sparse"],
        "max_points": 240,
        "step_min": 100,
        "step_max": 3900,
    }
    assert metric_selectors._bucketed_rows(**kwargs) == metric_selectors._bucketed_rows_portable(**kwargs)


def test_x_axis_choices(run):
    bulk_points(run, steps=range(5, 10), keys=["reward"])
    result = metric_series(run_ids=[run.pk], keys=["reward"], x_axis="samples")["runs"][run.pk]
    assert result["series"]["reward"]["x"] == [step * 8 for step in range(5, 10)]  # 2 prompts × 4 rollouts
    relative = metric_series(run_ids=[run.pk], keys=["reward"], x_axis="relative_time")["runs"][run.pk]
    assert relative["series"]["reward"]["x"] == [0, 2, 4, 6, 8]
    wall = metric_series(run_ids=[run.pk], keys=["reward"], x_axis="wall_time")["runs"][run.pk]
    assert wall["series"]["reward"]["x"][0] == (START + timedelta(seconds=10)).isoformat()
    with pytest.raises(metric_selectors.SeriesRequestError):
        metric_series(run_ids=[run.pk], keys=["reward"], x_axis="epoch")


def test_step_range_and_several_runs(run, owner):
    from tests.factories import RunFactory

    other = RunFactory(owner=owner)
    bulk_points(run, steps=range(0, 50), keys=["reward"])
    bulk_points(other, steps=range(0, 20), keys=["reward"])
    result = metric_series(run_ids=[run.pk, other.pk], keys=["reward", "missing"], step_min=10, step_max=19)
    assert result["runs"][run.pk]["series"]["reward"]["step"] == list(range(10, 20))
    assert result["runs"][other.pk]["series"]["reward"]["step"] == list(range(10, 20))
    assert result["runs"][run.pk]["series"]["missing"] == {"x": [], "y": [], "step": []}


def test_metrics_after_a_seq_and_metric_keys(run):
    write_metrics(run, [1, 2, 3])
    run.refresh_from_db()
    first_seq = run.last_seq - 2
    events = metrics_after(run.pk, first_seq)
    assert [event["step"] for event in events] == [2, 3]
    assert events[0]["metrics"] == {"reward": 0.2, "reward_std": 0.2, "loss": 0.2}
    assert events[0]["seq"] == first_seq + 1
    assert metrics_after(run.pk, run.last_seq) == []
    assert metric_keys(run.pk) == ["loss", "reward", "reward_std"]


def test_progress_and_eta_from_recent_step_times(run):
    write_metrics(run, range(1, 11), keys=("step_time",), value=lambda key, step: 2.0)
    run.refresh_from_db()
    progress = run_progress(run)
    assert progress["step"] == 10 and progress["total"] == 100
    assert progress["percent"] == 10.0
    assert progress["eta_seconds"] == pytest.approx(180.0)


def test_metrics_after_json_from_cached_blocks_matches_the_database(
    run, monkeypatch, django_capture_on_commit_callbacks
):
    """A live run's watchers reload its points again and again: finished blocks of seqs come from the
    cache as JSON text; the answer is the same as reading every point, for any `after` and limit, and
    a resumed attempt's discarded steps are not served from the cache."""
    import json

    from experiments.models import Run
    from experiments.services.recording import discard_steps_after

    monkeypatch.setattr(metric_selectors, "METRICS_BLOCK_SEQS", 4)
    write_metrics(run, range(1, 23))
    run.refresh_from_db()

    def as_json(after, limit=5000):
        text, count, last = metric_selectors.metrics_after_json(
            run_id=run.pk, after_seq=after, last_seq=run.last_seq, limit=limit
        )
        events = json.loads(f"[{text}]")
        assert count == len(events)
        return events, last

    for _ in range(2):  # the first pass fills the cache, the second reads it
        for after in (0, 1, 3, 4, 5, 9, 20, run.last_seq):
            for limit in (1, 3, 5, 5000):
                expected = metrics_after(run.pk, after, limit=limit)
                events, last = as_json(after, limit)
                assert events == json.loads(json.dumps(expected)), (after, limit)
                assert last == (expected[-1]["seq"] if expected else after)

    Run.objects.filter(pk=run.pk).update(status="running", lease_owner="worker-1")
    with django_capture_on_commit_callbacks(execute=True):
        discard_steps_after(run_id=run.pk, lease_owner="worker-1", step=10)
    run.refresh_from_db()
    events, _ = as_json(0)
    assert [event["step"] for event in events] == list(range(1, 11))
