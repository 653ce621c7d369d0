"""Metric reads for charts: downsampled history, the keys a run has, and what arrived after a seq.

Downsampling keeps, per bucket of steps, the point with the lowest value, the one with the highest
value and the last one (never a random sample), so spikes and the series' global minimum and maximum
always survive and the curve ends where the run is. The bucketing runs in PostgreSQL as one
hash aggregate over the run's rows: `min(ARRAY[value, step, t])` picks the value and the step of a
bucket's minimum in one pass, without sorting each bucket.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
from django.db import connection, transaction

from ..models import MetricPoint, Run, RunEvent

X_AXES = ("step", "samples", "wall_time", "relative_time")
DEFAULT_MAX_POINTS = 2000
MIN_POINTS = 3  # one bucket: min, max and last
MAX_POINTS_LIMIT = 20_000


class SeriesRequestError(ValueError):
    """A series request that cannot be answered as asked (shown to the caller as is)."""


def samples_per_step(config: dict) -> int:
    """Rollouts one training step consumes (prompts per step × group size, the trainer's defaults)."""
    try:
        return max(1, int(config.get("prompts_per_step", 4)) * int(config.get("group_size", 8)))
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


def metrics_after(run_id: int, after_seq: int, *, limit: int = 5000) -> list[dict]:
    """The metric points stored after `after_seq`, one entry per step event, oldest first.

    `[{"seq", "step", "time", "metrics": {key: value}}]`; at most `limit` events (continue from the
    last `seq` returned).
    """
    rows = (
        MetricPoint.objects.filter(run_id=run_id, seq__gt=after_seq)
        .order_by("seq", "key")
        .values_list("seq", "step", "key", "value", "wall_time")
    )
    events: list[dict] = []
    for seq, step, key, value, wall_time in rows.iterator(chunk_size=5000):
        if not events or events[-1]["seq"] != seq:
            if len(events) == limit:
                break
            events.append({"seq": seq, "step": step, "time": wall_time.isoformat(), "metrics": {}})
        events[-1]["metrics"][key] = value
    return events


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
    with connection.cursor() as cursor:
        cursor.execute(_RANGE_SQL.format(table=table, step_filter=step_filter), params)
        ranges = [(lo, hi) for _key, lo, hi in cursor.fetchall() if lo is not None]
        if not ranges:
            return {}
        lo = min(lo for lo, _ in ranges)
        hi = max(hi for _, hi in ranges)
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
    bucketed = _bucketed_rows if connection.vendor == "postgresql" else _bucketed_rows_portable
    result: dict = {"x_axis": x_axis, "max_points": max_points, "runs": {}}
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None:
            continue
        rows = bucketed(
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


def run_log_events(*, run_id: int, limit: int = 200) -> list[RunEvent]:
    """The run's latest status changes, log lines and checkpoints (not metrics), oldest first."""
    events = (
        RunEvent.objects.filter(run_id=run_id).exclude(kind=RunEvent.Kind.METRICS).order_by("-seq")[:limit]
    )
    return list(reversed(events))
