"""Metric reads for charts: downsampled history, the keys a run has, and what arrived after a seq.

Downsampling keeps, per bucket of steps, the point with the lowest value, the one with the highest
value and the last one (never a random sample), so spikes and the series' global minimum and maximum
always survive and the curve ends where the run is. The bucketing runs in PostgreSQL as one
hash aggregate over the run's rows: `min(ARRAY[value, step, t])` picks the value and the step of a
bucket's minimum in one pass, without sorting each bucket.

A long range reads the rollups instead (`MetricRollup`, kept at write time by
`services/rollups.py`): the same min/max/last per bucket, stored for a ladder of bucket widths, so
that a 20,000-step series costs a few hundred rows instead of 20,000. The finest width that keeps
the answer within `max_points` is used; a range short enough to need no downsampling (a zoom, a
short run) reads the raw points.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import psycopg
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Max, Min

from trainer.config import defaults

from ..models import MetricPoint, MetricRollup, Run, RunEvent

X_AXES = ("step", "samples", "wall_time", "relative_time")
DEFAULT_MAX_POINTS = 2000
MIN_POINTS = 3  # one bucket: min, max and last
MAX_POINTS_LIMIT = 20_000


class SeriesRequestError(ValueError):
    """A series request that cannot be answered as asked (shown to the caller as is)."""


def samples_per_step(config: dict) -> int:
    """Rollouts one training step consumes (prompts per step × group size; unset: the trainer's defaults)."""
    config = {**defaults(), **config}
    try:
        return max(1, int(config["prompts_per_step"]) * int(config["group_size"]))
    except (TypeError, ValueError):
        return 1


def metric_keys(run_id: int) -> list[str]:
    """Every metric key the run has stored, sorted.

    On PostgreSQL a recursive skip scan over the (run, key, step) index: one probe per distinct key
    rather than reading all of a long run's points.
    """
    if connection.vendor != "postgresql":
        return sorted(MetricPoint.objects.filter(run_id=run_id).values_list("key", flat=True).distinct())
    table = MetricPoint._meta.db_table
    sql = f"""
    WITH RECURSIVE keys(key) AS (
        (SELECT key FROM {table} WHERE run_id = %(run)s ORDER BY key LIMIT 1)
        UNION ALL
        SELECT (SELECT m.key FROM {table} m WHERE m.run_id = %(run)s AND m.key > keys.key ORDER BY m.key LIMIT 1)
        FROM keys WHERE keys.key IS NOT NULL
    )
    SELECT key FROM keys WHERE key IS NOT NULL
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"run": run_id})
        return sorted(row[0] for row in cursor.fetchall())


def metrics_after(
    run_id: int, after_seq: int, *, limit: int = 5000, through_seq: int | None = None
) -> list[dict]:
    """The metric points stored after `after_seq` (up to `through_seq`), one entry per step event,
    oldest first.

    `[{"seq", "step", "time", "metrics": {key: value}}]`; at most `limit` events (continue from the
    last `seq` returned).
    """
    rows = MetricPoint.objects.filter(run_id=run_id, seq__gt=after_seq)
    if through_seq is not None:
        rows = rows.filter(seq__lte=through_seq)
    rows = rows.order_by("seq", "key").values_list("seq", "step", "key", "value", "wall_time")
    # A bounded range (a block, the tail of a live run) is fetched at once; an open-ended one through a
    # server-side cursor (its declare and fetches cost round trips that a few rows do not repay).
    events: list[dict] = []
    for seq, step, key, value, wall_time in (
        rows if through_seq is not None else rows.iterator(chunk_size=5000)
    ):
        if not events or events[-1]["seq"] != seq:
            if len(events) == limit:
                break
            events.append({"seq": seq, "step": step, "time": wall_time.isoformat(), "metrics": {}})
        events[-1]["metrics"][key] = value
    return events


# metrics_after_json's blocks: the events of seqs (k*BLOCK, (k+1)*BLOCK], kept in the cache as JSON
# text once the run's last_seq is past the block (a committed seq's points never change, except when
# a resumed attempt discards steps: that bumps the run's generation, and blocks of another
# generation are rebuilt). Small blocks: at every reload, a live run's watchers read the tail after
# the last finished block from the database, up to a block's worth of events (bench_load.py: 25
# reloads/s of a run at 20 steps/s).
METRICS_BLOCK_SEQS = 10
METRICS_BLOCK_SECONDS = 3600


def _events_json(events: list[dict]) -> str:
    """The events as the items of a JSON array (no brackets)."""
    return orjson.dumps(events).decode()[1:-1]


def _generation_key(run_id: int) -> str:
    return f"metrics-generation:{run_id}"


def _block_key(run_id: int, block: int) -> str:
    return f"metrics-block:{run_id}:{METRICS_BLOCK_SEQS}:{block}"


def bump_metrics_generation(run_id: int) -> None:
    """Forget the run's cached blocks of metric events (its stored points changed)."""
    cache.set(_generation_key(run_id), time.time_ns(), timeout=None)


def metrics_after_json(
    *, run_id: int, after_seq: int, last_seq: int, limit: int = 5000
) -> tuple[str, int, int]:
    """metrics_after as JSON: (the events as the items of a JSON array, how many, the last seq).

    `last_seq` is the run's committed last_seq, read before. A watcher reloading a long live run's
    points asks for thousands of events again and again: the finished blocks of seqs come from the
    cache (one round trip for all of them), and only the head before the first block and the tail
    after the last one are read from the database.
    """
    parts: list[str] = []
    count = 0
    cursor = after_seq  # read up to here
    last = after_seq  # the last event's seq
    first_block = -(-after_seq // METRICS_BLOCK_SEQS)  # the first block starting after after_seq
    last_block = last_seq // METRICS_BLOCK_SEQS - 1  # the last block ending at or before last_seq

    def add(events: list[dict]) -> None:
        nonlocal count, cursor, last
        if events:
            parts.append(_events_json(events))
            count += len(events)
            cursor = last = events[-1]["seq"]

    if first_block <= last_block:
        if after_seq < first_block * METRICS_BLOCK_SEQS:
            add(metrics_after(run_id, after_seq, limit=limit, through_seq=first_block * METRICS_BLOCK_SEQS))
        blocks = range(first_block, last_block + 1)
        keys = [_block_key(run_id, block) for block in blocks]
        cached = cache.get_many([_generation_key(run_id), *keys])
        generation = cached.get(_generation_key(run_id), 0)
        fresh = {}
        for block, key in zip(blocks, keys, strict=True):
            if count >= limit:
                break
            entry = cached.get(key)
            if entry is None or entry[0] != generation:
                start = block * METRICS_BLOCK_SEQS
                events = metrics_after(
                    run_id, start, limit=METRICS_BLOCK_SEQS, through_seq=start + METRICS_BLOCK_SEQS
                )
                entry = (generation, _events_json(events), len(events), events[-1]["seq"] if events else None)
                fresh[key] = entry
            _, text, size, block_last = entry
            if count + size > limit:
                break
            if size:
                parts.append(text)
                count += size
                last = block_last
            cursor = (block + 1) * METRICS_BLOCK_SEQS
        if fresh:
            cache.set_many(fresh, timeout=METRICS_BLOCK_SECONDS)
    if count < limit and cursor < last_seq:
        # Up to the run's committed last_seq, read before: a step committed since is in the next reload.
        add(metrics_after(run_id, cursor, limit=limit - count, through_seq=last_seq))
    return ",".join(parts), count, last


# Each key's first and last step: two index probes per key on (run, key, step).
_RANGE_SQL = """
SELECT k.key,
       (SELECT min(step) FROM {table} WHERE run_id = %(run_id)s AND key = k.key {step_filter}),
       (SELECT max(step) FROM {table} WHERE run_id = %(run_id)s AND key = k.key {step_filter})
FROM unnest(%(keys)s::text[]) AS k(key)
"""

# One hash aggregate over the run's points: per key and bucket of `width` steps, the (value, step,
# time) of the lowest and the highest value, and the (step, value, time) of the last step. Comparing
# arrays picks a whole point by its first element without sorting the bucket. The chosen points are
# then deduplicated and returned as one row per key of step-ordered arrays (little to parse).
_BUCKET_SQL = """
WITH buckets AS (
    SELECT key,
           min(ARRAY[value, step{time}]) AS low,
           max(ARRAY[value, step{time}]) AS high,
           max(ARRAY[step, value{time}]) AS last
    FROM {table}
    WHERE run_id = %(run_id)s AND key = ANY(%(keys)s) {step_filter}
    GROUP BY key, (step - %(lo)s) / %(width)s
), points AS (
    SELECT DISTINCT b.key, p.step::int AS step, p.value, p.t
    FROM buckets b,
         LATERAL (VALUES (b.low[2], b.low[1], b.low[3]),
                         (b.high[2], b.high[1], b.high[3]),
                         (b.last[1], b.last[2], b.last[3])) AS p(step, value, t)
)
SELECT key, array_agg(step ORDER BY step), array_agg(value ORDER BY step), array_agg(t ORDER BY step)
FROM points GROUP BY key
"""

Columns = tuple[list[int], list[float], list[float]]  # steps, values, epoch seconds; by step


def _bucketed_rows(
    *,
    run_id: int,
    keys: Sequence[str],
    max_points: int,
    step_min: int | None,
    step_max: int | None,
    with_time: bool = True,
    span: tuple[int, int, set[str]] | None = None,
) -> dict[str, Columns]:
    """{key: (steps, values, epoch seconds)}, ≤ max_points points per key, in step order.

    Without `with_time` the times may be None: the arrays carry two numbers instead of three and
    nothing converts a timestamp per row (about a third of the query's time).

    All keys share one bucket width (the steps they span divided by max_points // 3): a bucket
    holding three points or fewer keeps them all, so sparse series such as eval metrics stay exact.
    """
    step_filter = ""
    params: dict = {"run_id": run_id, "keys": list(keys)}
    if step_min is not None:
        step_filter += " AND step >= %(step_min)s"
        params["step_min"] = step_min
    if step_max is not None:
        step_filter += " AND step <= %(step_max)s"
        params["step_max"] = step_max
    table = MetricPoint._meta.db_table
    if span is None:
        span = _step_span(run_id=run_id, keys=keys, step_min=step_min, step_max=step_max)
    if span is None:
        return {}
    lo, hi = span[0], span[1]
    with connection.cursor() as cursor:
        params["lo"] = lo
        params["width"] = max(1, math.ceil((hi - lo + 1) / max(1, max_points // 3)))
        if hi - lo + 1 <= max_points:
            params["width"] = 1  # every step fits: nothing to downsample
        with transaction.atomic():
            # The default work_mem (4 MB) makes the planner sort 300,000 rows on disk instead of
            # hashing ~10,000 groups in memory (~5 MB): four times slower.
            cursor.execute("SET LOCAL work_mem = '32MB'")
            # Binary results (a server-binding psycopg cursor on the same connection and
            # transaction): the float arrays arrive as machine doubles instead of text to parse.
            with psycopg.Cursor(connection.connection) as raw:
                raw.execute(
                    _BUCKET_SQL.format(
                        table=table,
                        step_filter=step_filter,
                        time=", date_part('epoch', wall_time)" if with_time else "",
                    ),
                    params,
                    binary=True,
                )
                rows = raw.fetchall()
    return {key: (steps, values, times) for key, steps, values, times in rows}


def _bucketed_rows_portable(
    *,
    run_id: int,
    keys: Sequence[str],
    max_points: int,
    step_min: int | None,
    step_max: int | None,
    with_time: bool = True,
    span: tuple[int, int, set[str]] | None = None,
) -> dict[str, Columns]:
    """The same selection in Python for the embedded SQLite default: one ordered scan per key."""
    rows = MetricPoint.objects.filter(run_id=run_id, key__in=keys)
    if step_min is not None:
        rows = rows.filter(step__gte=step_min)
    if step_max is not None:
        rows = rows.filter(step__lte=step_max)
    series: dict[str, list[tuple[int, float, float]]] = {}
    for key, step, value, wall in rows.order_by("key", "step").values_list(
        "key", "step", "value", "wall_time"
    ):
        series.setdefault(key, []).append((step, value, wall.timestamp()))
    if not series:
        return {}
    lo = min(points[0][0] for points in series.values())
    hi = max(points[-1][0] for points in series.values())
    width = 1 if hi - lo + 1 <= max_points else math.ceil((hi - lo + 1) / max(1, max_points // 3))
    result = {}
    for key, points in series.items():
        buckets: dict[int, list[tuple[int, float, float]]] = {}
        for point in points:
            buckets.setdefault((point[0] - lo) // width, []).append(point)
        picked: dict[int, tuple[int, float, float]] = {}
        for bucket in buckets.values():
            for point in (min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1]), bucket[-1]):
                picked[point[0]] = point
        ordered = [picked[step] for step in sorted(picked)]
        result[key] = ([p[0] for p in ordered], [p[1] for p in ordered], [p[2] for p in ordered])
    return result


def _step_span(
    *, run_id: int, keys: Sequence[str], step_min: int | None, step_max: int | None
) -> tuple[int, int, set[str]] | None:
    """(first step, last step, the keys that have points) within the requested range; None if empty.

    On PostgreSQL two index probes per key; elsewhere one aggregate per key.
    """
    if connection.vendor == "postgresql":
        step_filter = ""
        params: dict = {"run_id": run_id, "keys": list(keys)}
        if step_min is not None:
            step_filter += " AND step >= %(step_min)s"
            params["step_min"] = step_min
        if step_max is not None:
            step_filter += " AND step <= %(step_max)s"
            params["step_max"] = step_max
        with connection.cursor() as cursor:
            cursor.execute(
                _RANGE_SQL.format(table=MetricPoint._meta.db_table, step_filter=step_filter), params
            )
            ranges = {key: (lo, hi) for key, lo, hi in cursor.fetchall() if lo is not None}
    else:
        rows = MetricPoint.objects.filter(run_id=run_id, key__in=keys)
        if step_min is not None:
            rows = rows.filter(step__gte=step_min)
        if step_max is not None:
            rows = rows.filter(step__lte=step_max)
        ranges = {
            key: (lo, hi)
            for key, lo, hi in rows.order_by()
            .values("key")
            .annotate(lo=Min("step"), hi=Max("step"))
            .values_list("key", "lo", "hi")
        }
    if not ranges:
        return None
    return (
        min(lo for lo, _ in ranges.values()),
        max(hi for _, hi in ranges.values()),
        set(ranges),
    )


def rollup_width(*, lo: int, hi: int, max_points: int) -> int | None:
    """The finest rollup width whose buckets over steps lo..hi give ≤ max_points points (three per
    bucket at most); None when the range needs no downsampling or no width fits (read raw points)."""
    if hi - lo + 1 <= max_points:
        return None
    for width in MetricRollup.ROLLUP_WIDTHS:
        if 3 * (hi // width - lo // width + 1) <= max_points:
            return width
    return None


# The rollup rows of one width over a range of buckets, per key, as bucket-ordered arrays of their
# min, max and last points (merged into one step-ordered series by `_merge_buckets`). The index on
# (run, key, width, bucket) hands the rows over in bucket order, so no sort runs; the bucket array
# comes along so that the merge can check that order rather than trust it.
_ROLLUP_SQL = """
SELECT k.key, a.*
FROM unnest(%(keys)s::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT array_agg(r.bucket) AS buckets, {columns}
    FROM (
        SELECT * FROM {table}
        WHERE run_id = %(run_id)s AND key = k.key AND width = %(width)s
          AND bucket >= %(b_lo)s AND bucket <= %(b_hi)s
        ORDER BY bucket
    ) AS r
) AS a
WHERE a.buckets IS NOT NULL
"""


def _rollup_columns(with_time: bool) -> str:
    columns = []
    for pick in ("min", "max", "last"):
        columns += [f"array_agg(r.{pick}_step)", f"array_agg(r.{pick}_value)"]
        if with_time:
            columns.append(f"array_agg(date_part('epoch', r.{pick}_time))")
    return ", ".join(columns)


def _merge_buckets(buckets: list[int], picks: list[tuple[list, list, list]]) -> Columns:
    """One series from per-bucket (min, max, last) points given as parallel arrays: each bucket's
    points in step order (the last one is its latest step), a point that is two of them kept once."""
    order: Sequence[int] = range(len(buckets))
    if any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
        order = sorted(order, key=buckets.__getitem__)
    (low_s, low_v, low_t), (high_s, high_v, high_t), (last_s, last_v, last_t) = picks
    steps: list[int] = []
    values: list[float] = []
    times: list = []
    for i in order:
        low, high, last = low_s[i], high_s[i], last_s[i]
        if low < high:
            steps += (low, high)
            values += (low_v[i], high_v[i])
            times += (low_t[i], high_t[i])
        elif low > high:
            steps += (high, low)
            values += (high_v[i], low_v[i])
            times += (high_t[i], low_t[i])
        else:
            steps.append(low)
            values.append(low_v[i])
            times.append(low_t[i])
        if last != low and last != high:
            steps.append(last)
            values.append(last_v[i])
            times.append(last_t[i])
    return steps, values, times


Point = tuple[int, float, float | None]  # step, value, epoch seconds


def _pick(points: list[Point]) -> list[Point]:
    """One bucket's min (earliest of equal values), max (latest of equal values) and last point,
    in step order: what a rollup row holds."""
    low = min(points, key=lambda p: (p[1], p[0]))
    high = max(points, key=lambda p: (p[1], p[0]))
    last = max(points, key=lambda p: p[0])
    return sorted({p[0]: p for p in (low, high, last)}.values())


def _raw_bucket(
    *, run_id: int, keys: Sequence[str], first: int, last: int, with_time: bool
) -> dict[str, list[Point]]:
    """The min/max/last points of steps first..last (a bucket the requested range cuts), per key."""
    rows = MetricPoint.objects.filter(run_id=run_id, key__in=keys, step__gte=first, step__lte=last)
    points: dict[str, list[Point]] = {}
    for key, step, value, wall in rows.values_list("key", "step", "value", "wall_time"):
        points.setdefault(key, []).append((step, value, wall.timestamp() if with_time else None))
    return {key: _pick(found) for key, found in points.items()}


def _rollup_rows(
    *,
    run_id: int,
    keys: Sequence[str],
    width: int,
    lo: int,
    hi: int,
    step_min: int | None,
    step_max: int | None,
    with_time: bool,
) -> dict[str, Columns]:
    """{key: (steps, values, epoch seconds)} from the rollups of `width` over steps lo..hi.

    A bucket that the requested range cuts (a zoom's edges) is computed from its raw points within
    the range instead, so that nothing outside the range shows.
    """
    b_lo, b_hi = lo // width, hi // width
    edges: list[tuple[int, int]] = []
    if step_min is not None and step_min > b_lo * width:
        edges.append((step_min, min(hi, b_lo * width + width - 1)))
        b_lo += 1
    if step_max is not None and step_max < b_hi * width + width - 1 and b_hi >= b_lo:
        edges.append((max(lo, b_hi * width), step_max))
        b_hi -= 1
    inner: dict[str, Columns] = {}
    if b_lo <= b_hi:
        if connection.vendor == "postgresql":
            sql = _ROLLUP_SQL.format(table=MetricRollup._meta.db_table, columns=_rollup_columns(with_time))
            params = {"run_id": run_id, "keys": list(keys), "width": width, "b_lo": b_lo, "b_hi": b_hi}
            # Binary results, as in _bucketed_rows: float arrays arrive as machine doubles.
            with psycopg.Cursor(connection.connection) as raw:
                raw.execute(sql, params, binary=True)
                fetched = raw.fetchall()
            for key, buckets, *arrays in fetched:
                if not with_time:
                    nothing = [None] * len(buckets)
                    arrays = [*arrays[0:2], nothing, *arrays[2:4], nothing, *arrays[4:6], nothing]
                inner[key] = _merge_buckets(buckets, [tuple(arrays[i : i + 3]) for i in (0, 3, 6)])
        else:
            picked: dict[str, dict[int, Point]] = {}
            rows = MetricRollup.objects.filter(
                run_id=run_id, key__in=keys, width=width, bucket__gte=b_lo, bucket__lte=b_hi
            ).values_list(
                "key",
                "min_step",
                "min_value",
                "min_time",
                "max_step",
                "max_value",
                "max_time",
                "last_step",
                "last_value",
                "last_time",
            )
            for key, *fields in rows:
                kept = picked.setdefault(key, {})
                for index in (0, 3, 6):
                    step, value, wall = fields[index : index + 3]
                    kept[step] = (step, value, wall.timestamp() if with_time else None)
            for key, kept in picked.items():
                ordered = [kept[step] for step in sorted(kept)]
                inner[key] = ([p[0] for p in ordered], [p[1] for p in ordered], [p[2] for p in ordered])
    if not edges:
        return inner
    merged: dict[str, list[Point]] = {}
    for first, last in edges:
        for key, points in _raw_bucket(
            run_id=run_id, keys=keys, first=first, last=last, with_time=with_time
        ).items():
            merged.setdefault(key, []).extend(points)
    for key, (steps, values, times) in inner.items():
        merged.setdefault(key, []).extend(zip(steps, values, times, strict=True))
    result = {}
    for key, points in merged.items():
        points.sort(key=lambda p: p[0])
        result[key] = ([p[0] for p in points], [p[1] for p in points], [p[2] for p in points])
    return result


def _series_rows(
    *,
    run_id: int,
    keys: Sequence[str],
    max_points: int,
    step_min: int | None,
    step_max: int | None,
    with_time: bool,
) -> dict[str, Columns]:
    """The downsampled columns of one run: from the rollups when the range is long enough for one
    of their widths, else (or when the run's rollups are missing) from the raw points."""
    span = _step_span(run_id=run_id, keys=keys, step_min=step_min, step_max=step_max)
    if span is None:
        return {}
    lo, hi, present = span
    width = rollup_width(lo=lo, hi=hi, max_points=max_points)
    if width is not None:
        rows = _rollup_rows(
            run_id=run_id,
            keys=keys,
            width=width,
            lo=lo,
            hi=hi,
            step_min=step_min,
            step_max=step_max,
            with_time=with_time,
        )
        if present <= set(rows):
            return rows
        # A series with points but no rollups (loaded behind the write path: rebuild_rollups).
    bucketed = _bucketed_rows if connection.vendor == "postgresql" else _bucketed_rows_portable
    return bucketed(
        run_id=run_id,
        keys=keys,
        max_points=max_points,
        step_min=step_min,
        step_max=step_max,
        with_time=with_time,
        span=span,
    )


def metric_series(
    *,
    run_ids: list[int],
    keys: list[str],
    max_points: int = DEFAULT_MAX_POINTS,
    x_axis: str = "step",
    step_min: int | None = None,
    step_max: int | None = None,
) -> dict:
    """Downsampled series of `keys` for each run, ready for a chart.

    Returns `{"x_axis": x_axis, "max_points": n, "runs": {run_id: {"last_seq": int, "t0": epoch
    seconds of the first point (the origin of relative time) or None, "series":
    {key: {"x": [...], "y": [...], "step": [...]}}}}}` where x is the step,
    the samples seen (step × rollouts per step), the wall time (ISO 8601) or the seconds since the
    run's first point. At most `max_points` points per series; callers filter `run_ids` by visibility.
    """
    if x_axis not in X_AXES:
        raise SeriesRequestError(f"x_axis must be one of {', '.join(X_AXES)}.")
    max_points = max(MIN_POINTS, min(int(max_points), MAX_POINTS_LIMIT))
    keys = list(dict.fromkeys(keys))
    runs = {run.pk: run for run in Run.objects.filter(pk__in=run_ids).only("pk", "config", "last_seq")}
    result: dict = {"x_axis": x_axis, "max_points": max_points, "runs": {}}
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None:
            continue
        rows = _series_rows(
            run_id=run_id,
            keys=keys,
            max_points=max_points,
            step_min=step_min,
            step_max=step_max,
            with_time=x_axis in ("wall_time", "relative_time"),
        )
        origin = min(
            (times[0] for _, _, times in rows.values() if times and times[0] is not None), default=None
        )
        per_step = samples_per_step(run.config or {})
        series = {}
        for key in keys:
            steps, values, times = rows.get(key, ([], [], []))
            if x_axis == "step":
                xs = steps
            elif x_axis == "samples":
                xs = [step * per_step for step in steps]
            elif x_axis == "wall_time":
                xs = [datetime.fromtimestamp(t, tz=UTC).isoformat() for t in times]
            else:
                xs = [round(t - origin, 3) for t in times]
            series[key] = {"x": xs, "y": values, "step": steps}
        result["runs"][run_id] = {"last_seq": run.last_seq, "t0": origin, "series": series}
    return result


def run_progress(run: Run) -> dict:
    """Where a run stands: step, total, fraction done and an ETA from its recent step times.

    The ETA uses the median `step_time` of the last 20 steps (robust to one slow eval step).
    """
    total = run.total_steps or 0
    step = run.current_step or 0
    fraction = min(1.0, step / total) if total else 0.0
    recent = list(
        MetricPoint.objects.filter(run_id=run.pk, key="step_time")
        .order_by("-step")
        .values_list("value", flat=True)[:20]
    )
    seconds_per_step = statistics.median(recent) if recent else None
    eta = None
    if seconds_per_step is not None and total and step < total and not run.is_terminal:
        eta = seconds_per_step * (total - step)
    return {
        "step": step,
        "total": total,
        "fraction": fraction,
        "percent": round(fraction * 100, 1),
        "seconds_per_step": seconds_per_step,
        "eta_seconds": eta,
    }


def run_devices(run: Run) -> dict:
    """How the run is spread: devices asked for, the world size it ran with, sharding, and the last
    step's per-rank times (a multi-device run reports them; see trainer/distributed.py)."""
    config = run.config or {}
    requested = config.get("devices", 1)
    latest = (
        MetricPoint.objects.filter(run_id=run.pk, key="world_size")
        .order_by("-step")
        .values_list("step", "value")
        .first()
    )
    ranks: list[dict] = []
    communication_s = None
    if latest:
        step, world_size = latest[0], int(latest[1])
        values = dict(
            MetricPoint.objects.filter(run_id=run.pk, step=step, key__startswith="timing/").values_list(
                "key", "value"
            )
        )
        communication_s = values.get("timing/communication_s")
        ranks = [
            {
                "rank": rank,
                "rollout_s": values.get(f"timing/rank{rank}/rollout_s"),
                "update_s": values.get(f"timing/rank{rank}/update_s"),
                "communication_s": values.get(f"timing/communication_s/rank{rank}"),
            }
            for rank in range(world_size)
        ]
    else:
        step, world_size = None, (1 if requested == 1 else None)
    return {
        "requested": requested,
        "world_size": world_size,
        "sharding": config.get("sharding", "none"),
        "step": step,
        "ranks": ranks,
        "communication_s": communication_s,
    }


def run_log_events(*, run_id: int, limit: int = 200) -> list[RunEvent]:
    """The run's latest status changes, log lines and checkpoints (not metrics), oldest first."""
    events = (
        RunEvent.objects.filter(run_id=run_id).exclude(kind=RunEvent.Kind.METRICS).order_by("-seq")[:limit]
    )
    return list(reversed(events))
