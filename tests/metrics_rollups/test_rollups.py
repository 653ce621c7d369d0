"""Metric rollups: kept right at write time, after re-writes and a resume's discard, rebuilt from raw
points, and read by the chart's series selector for long ranges (raw points for short ones)."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta

import pytest

from experiments.models import MetricPoint, MetricRollup, RunStatus
from experiments.selectors import metrics as metric_selectors
from experiments.selectors.metrics import metric_series
from experiments.services import recording, rollups
from experiments.services.runs import record_metrics
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

START = datetime(2026, 1, 1, tzinfo=UTC)
WORKER = "worker@gpu-0"


@pytest.fixture
def run():
    return RunFactory(
        status=RunStatus.RUNNING, lease_owner=WORKER, config={"prompts_per_step": 2, "group_size": 4}
    )


def from_scratch(run) -> dict:
    """Every width's buckets computed in Python from the run's raw points."""
    buckets: dict = {}
    for key, step, value, wall in MetricPoint.objects.filter(run=run).values_list(
        "key", "step", "value", "wall_time"
    ):
        for width in MetricRollup.ROLLUP_WIDTHS:
            buckets.setdefault((key, width, step // width), []).append((step, value, wall))
    return {
        where: (
            len(points),
            min(points, key=lambda p: (p[1], p[0])),  # lowest value, earliest of equals
            max(points, key=lambda p: (p[1], p[0])),  # highest value, latest of equals
            max(points, key=lambda p: p[0]),
        )
        for where, points in buckets.items()
    }


def stored(run) -> dict:
    return {
        (r.key, r.width, r.bucket): (
            r.count,
            (r.min_step, r.min_value, r.min_time),
            (r.max_step, r.max_value, r.max_time),
            (r.last_step, r.last_value, r.last_time),
        )
        for r in MetricRollup.objects.filter(run=run)
    }


def test_rollups_match_a_from_scratch_downsample_after_interleaved_writes(run):
    rng = random.Random(5)
    steps = list(range(0, 300))
    rng.shuffle(steps)  # steps arrive out of order
    for step in steps:
        # Few distinct values: many ties, which must resolve like the raw downsampling.
        keys = rng.sample(["reward", "loss", "kl"], k=rng.randint(1, 3))
        record_metrics(run_id=run.pk, step=step, metrics={key: rng.randint(-3, 3) / 2 for key in keys})
    for step in rng.sample(range(0, 300), 80):  # later writes add the keys a step lacked
        record_metrics(run_id=run.pk, step=step, metrics={"reward": 9.0, "loss": -9.0, "kl": 0.5})

    expected = from_scratch(run)
    assert stored(run) == expected
    assert sum(count for (_, width, _), (count, *_) in expected.items() if width == 8) == (
        MetricPoint.objects.filter(run=run).count()
    )
    # Recomputing from the raw points in SQL gives the same rows.
    assert rollups.rebuild_rollups(run_id=run.pk) == len(expected)
    assert stored(run) == expected


def test_rewriting_a_stored_step_changes_nothing(run):
    for step in range(0, 40):
        record_metrics(run_id=run.pk, step=step, metrics={"reward": step / 10, "loss": -step})
    before = stored(run)
    assert record_metrics(run_id=run.pk, step=17, metrics={"reward": 100.0, "loss": -100.0}) is None
    assert record_metrics(run_id=run.pk, step=17, metrics={"reward": 1.7, "loss": -17}) is None
    assert stored(run) == before
    # A new key on a stored step is added once.
    record_metrics(run_id=run.pk, step=17, metrics={"reward": 5.0, "kl": 0.25})
    record_metrics(run_id=run.pk, step=17, metrics={"kl": 0.75})
    after = stored(run)
    assert after == from_scratch(run)
    assert after[("kl", 8, 2)][0] == 1
    assert {k: v for k, v in after.items() if k[0] != "kl"} == before


def test_a_resume_discards_the_lost_attempts_buckets_and_rebuilds_the_cut_one(run):
    rng = random.Random(11)
    for step in range(0, 200):
        record_metrics(run_id=run.pk, step=step, metrics={"reward": rng.random(), "loss": rng.random()})
    assert record_metrics(run_id=run.pk, step=140, metrics={"reward": 50.0}) is None  # stored already: kept
    recording.discard_steps_after(run_id=run.pk, lease_owner=WORKER, step=137)
    assert MetricPoint.objects.filter(run=run, step__gt=137).count() == 0
    assert MetricRollup.objects.filter(run=run, last_step__gt=137).count() == 0
    assert stored(run) == from_scratch(run)
    assert stored(run)[("reward", 256, 0)][0] == 138  # steps 0..137

    # The resumed attempt trains the steps again, with other values.
    for step in range(138, 230):
        record_metrics(run_id=run.pk, step=step, metrics={"reward": rng.random() + 1, "loss": -rng.random()})
    assert stored(run) == from_scratch(run)

    recording.discard_steps_after(run_id=run.pk, lease_owner=WORKER, step=-1)  # no checkpoint
    assert not MetricRollup.objects.filter(run=run).exists()


def test_record_step_keeps_the_rollups(run):
    for step in range(0, 30):
        recording.record_step(
            run_id=run.pk, lease_owner=WORKER, step=step, metrics={"reward": step % 7}, trajectories=[]
        )
    rows = stored(run)
    assert rows == from_scratch(run)
    assert rows[("reward", 32, 0)][1:] == (
        rows[("reward", 32, 0)][1],
        (27, 6.0, rows[("reward", 32, 0)][2][2]),  # the latest of the equal highest values
        (29, 1.0, rows[("reward", 32, 0)][3][2]),
    )
    assert rows[("reward", 32, 0)][1][:2] == (0, 0.0)  # the earliest of the equal lowest values


def bulk_points(run, *, steps, keys, seed=0) -> dict:
    """Points stored in bulk (behind the write path), then the rollups rebuilt from them."""
    rng = random.Random(seed)
    values = {}
    rows = []
    for step in steps:
        for key in keys:
            values[(key, step)] = rng.gauss(0, 1)
            rows.append(
                MetricPoint(
                    run=run,
                    seq=step,
                    step=step,
                    key=key,
                    value=values[(key, step)],
                    wall_time=START + timedelta(seconds=2 * step),
                )
            )
    MetricPoint.objects.bulk_create(rows, batch_size=5000)
    return values


def expected_series(values: dict, key: str, *, width: int, first: int, last: int) -> list[int]:
    """The steps a min/max/last downsampling over aligned buckets of `width` keeps in first..last."""
    buckets: dict[int, list[int]] = {}
    for (k, step), _ in values.items():
        if k == key and first <= step <= last:
            buckets.setdefault(step // width, []).append(step)
    kept = set()
    for steps in buckets.values():
        kept.add(min(steps, key=lambda s: (values[(key, s)], s)))
        kept.add(max(steps, key=lambda s: (values[(key, s)], s)))
        kept.add(max(steps))
    return sorted(kept)


@pytest.fixture
def no_raw_reads(monkeypatch):
    def refuse(**kwargs):
        raise AssertionError("read the raw points")

    monkeypatch.setattr(metric_selectors, "_bucketed_rows", refuse)
    monkeypatch.setattr(metric_selectors, "_bucketed_rows_portable", refuse)


def test_a_long_series_is_read_from_the_rollups_keeping_the_extremes(run, no_raw_reads):
    values = bulk_points(run, steps=range(0, 6000), keys=["reward", "loss"], seed=2)
    MetricPoint.objects.filter(run=run, key="loss", step=4321).update(value=99.0)
    values[("loss", 4321)] = 99.0
    rollups.rebuild_rollups(run_id=run.pk)

    assert metric_selectors.rollup_width(lo=0, hi=5999, max_points=300) == 64
    series = metric_series(run_ids=[run.pk], keys=["reward", "loss", "missing"], max_points=300)["runs"][
        run.pk
    ]["series"]
    for key in ("reward", "loss"):
        points = series[key]
        stored_values = [values[(key, step)] for step in range(6000)]
        assert 150 <= len(points["y"]) <= 300
        assert min(points["y"]) == min(stored_values)
        assert max(points["y"]) == max(stored_values)
        assert points["step"][-1] == 5999
        assert points["step"] == expected_series(values, key, width=64, first=0, last=5999)
        assert points["y"] == [values[(key, step)] for step in points["step"]]
        assert points["x"] == points["step"]
    assert 99.0 in series["loss"]["y"]
    assert series["missing"] == {"x": [], "y": [], "step": []}


def test_x_axes_from_the_rollups(run, no_raw_reads):
    bulk_points(run, steps=range(100, 5100), keys=["reward"], seed=4)
    rollups.rebuild_rollups(run_id=run.pk)
    by_step = metric_series(run_ids=[run.pk], keys=["reward"])["runs"][run.pk]
    steps = by_step["series"]["reward"]["step"]
    assert len(steps) <= 2000
    samples = metric_series(run_ids=[run.pk], keys=["reward"], x_axis="samples")["runs"][run.pk]
    assert samples["series"]["reward"]["x"] == [step * 8 for step in steps]
    relative = metric_series(run_ids=[run.pk], keys=["reward"], x_axis="relative_time")["runs"][run.pk]
    # Relative time counts from the run's first point shown (its first bucket's min, max or last).
    assert relative["series"]["reward"]["x"] == [2 * (step - steps[0]) for step in steps]
    assert relative["t0"] == (START + timedelta(seconds=2 * steps[0])).timestamp()
    wall = metric_series(run_ids=[run.pk], keys=["reward"], x_axis="wall_time")["runs"][run.pk]
    assert wall["series"]["reward"]["x"] == [
        (START + timedelta(seconds=2 * step)).isoformat() for step in steps
    ]
    assert relative["series"]["reward"]["y"] == by_step["series"]["reward"]["y"]


def test_a_long_zoom_reads_rollups_inside_and_raw_points_at_its_cut_edges(run, no_raw_reads):
    values = bulk_points(run, steps=range(0, 6000), keys=["kl"], seed=6)
    rollups.rebuild_rollups(run_id=run.pk)
    series = metric_series(run_ids=[run.pk], keys=["kl"], max_points=600, step_min=1003, step_max=5001)[
        "runs"
    ][run.pk]["series"]["kl"]
    assert series["step"] == expected_series(values, "kl", width=32, first=1003, last=5001)
    assert series["step"][0] >= 1003 and series["step"][-1] == 5001
    assert len(series["step"]) <= 600
    inside = [values[("kl", step)] for step in range(1003, 5002)]
    assert min(series["y"]) == min(inside) and max(series["y"]) == max(inside)


def test_a_short_zoom_reads_the_raw_points(run, monkeypatch):
    bulk_points(run, steps=range(0, 6000), keys=["kl"], seed=6)
    rollups.rebuild_rollups(run_id=run.pk)

    def refuse(**kwargs):
        raise AssertionError("read the rollups")

    monkeypatch.setattr(metric_selectors, "_rollup_rows", refuse)
    series = metric_series(run_ids=[run.pk], keys=["kl"], step_min=1000, step_max=2500)["runs"][run.pk]
    assert series["series"]["kl"]["step"] == list(range(1000, 2501))  # every point: no downsampling


def test_points_without_rollups_are_read_raw(run):
    values = bulk_points(run, steps=range(0, 6000), keys=["reward"], seed=9)  # no rebuild
    series = metric_series(run_ids=[run.pk], keys=["reward"], max_points=300)["runs"][run.pk]["series"][
        "reward"
    ]
    assert 150 <= len(series["y"]) <= 300
    assert max(series["y"]) == max(v for v in values.values())


def test_the_rebuild_command_recomputes_rollups_of_points_loaded_in_bulk(run):
    from django.core.management import call_command

    rng = random.Random(13)
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(
                run=run,
                seq=step,
                step=step,
                key=key,
                value=rng.randint(0, 4),  # ties
                wall_time=START + timedelta(seconds=step),
            )
            for step in range(0, 3000, 3)
            for key in ("reward", "eval/reward")
            if key == "reward" or step % 50 == 0
        ]
    )
    MetricRollup.objects.create(  # a stale row the rebuild must drop
        run=run,
        key="gone",
        width=8,
        bucket=0,
        count=1,
        **{
            f"{pick}_{field}": value
            for pick in ("min", "max", "last")
            for field, value in (("step", 0), ("value", 0.0), ("time", START))
        },
    )
    out = io.StringIO()
    call_command("rebuild_metric_rollups", str(run.pk), stdout=out)
    assert stored(run) == from_scratch(run)
    assert f"run {run.pk}: {len(from_scratch(run))} rollup rows" in out.getvalue()


def test_merging_buckets_orders_points_by_step_even_if_the_buckets_arrive_unordered():
    picks = [
        ([17, 3], [0.5, -1.0], [1.7, 0.3]),  # min
        ([16, 1], [9.0, 4.0], [1.6, 0.1]),  # max
        ([18, 3], [2.0, -1.0], [1.8, 0.3]),  # last (bucket 0: the min again)
    ]
    steps, values, times = metric_selectors._merge_buckets([2, 0], picks)
    assert steps == [1, 3, 16, 17, 18]
    assert values == [4.0, -1.0, 9.0, 0.5, 2.0]
    assert times == [0.1, 0.3, 1.6, 1.7, 1.8]


def test_the_migration_builds_rollups_for_runs_stored_before_them(run):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("experiments.migrations.0003_metric_rollups")
    bulk_points(run, steps=range(0, 500), keys=["reward", "loss"], seed=21)
    assert not MetricRollup.objects.filter(run=run).exists()
    migration.build_rollups(apps, None)
    assert stored(run) == from_scratch(run)
