"""Metric rollups: each series' min/max/last per bucket of steps, kept at write time.

The chart's downsampling keeps, per bucket of steps, the point with the lowest value, the one with
the highest value and the last one (see `selectors/metrics.py`). For a long run that means reading
every stored point on each view; `MetricRollup` stores the answer per bucket for a ladder of
bucket widths (8, 16, … steps, each twice the one before) so that a chart of a 20,000-step run
reads a few hundred rows per series instead of 20,000.

- `add_points` folds one step's new points into every width's bucket: one upsert statement
  (`INSERT … ON CONFLICT DO UPDATE`, PostgreSQL and SQLite ≥ 3.24). The callers hold the run's
  row lock, so there is one writer per run.
- `discard_after` follows `recording.discard_steps_after` (a resumed run drops what a lost attempt
  recorded after its checkpoint): the buckets past the step go, the bucket holding it is rebuilt.
- `rebuild_rollups` recomputes a run's rollups from its raw points in SQL (data loaded behind the
  write path's back, such as COPY, and the migration that introduced rollups).

Ties follow the raw downsampling: the minimum is the earliest of equal lowest values, the maximum
the latest of equal highest values.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from django.db import connection, transaction

from ..models import MetricPoint, MetricRollup, Run

WIDTHS: tuple[int, ...] = MetricRollup.ROLLUP_WIDTHS

_COLUMNS = (
    "run_id",
    "key",
    "width",
    "bucket",
    "count",
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


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _table() -> str:
    return _q(MetricRollup._meta.db_table)


def _upsert_sql(rows: int | None) -> str:
    """The upsert of `rows` VALUES rows, or (None, PostgreSQL) of the keys × widths cross product
    of arrays: a handful of parameters, where thousands of placeholders cost psycopg more time to
    parse than PostgreSQL takes to run the statement."""
    table = _table()

    def old(column: str) -> str:
        return f"{table}.{_q(column)}"

    def new(column: str) -> str:
        return f"excluded.{_q(column)}"

    lower = (
        f"({new('min_value')} < {old('min_value')} OR ({new('min_value')} = {old('min_value')} "
        f"AND {new('min_step')} < {old('min_step')}))"
    )
    higher = (
        f"({new('max_value')} > {old('max_value')} OR ({new('max_value')} = {old('max_value')} "
        f"AND {new('max_step')} > {old('max_step')}))"
    )
    later = f"({new('last_step')} >= {old('last_step')})"
    sets = [f"{_q('count')} = {old('count')} + {new('count')}"]
    for prefix, condition in (("min", lower), ("max", higher), ("last", later)):
        for suffix in ("step", "value", "time"):
            column = f"{prefix}_{suffix}"
            sets.append(f"{_q(column)} = CASE WHEN {condition} THEN {new(column)} ELSE {old(column)} END")
    if rows is None:
        point = "%(step)s, p.value, %(time)s"
        source = (
            f"SELECT %(run_id)s, p.key, w.width, w.bucket, 1, {point}, {point}, {point} "
            "FROM unnest(%(keys)s::text[], %(values)s::float8[]) AS p(key, value) "
            "CROSS JOIN unnest(%(widths)s::int[], %(buckets)s::int[]) AS w(width, bucket)"
        )
    else:
        placeholders = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
        source = f"VALUES {', '.join([placeholders] * rows)}"
    return (
        f"INSERT INTO {table} ({', '.join(_q(c) for c in _COLUMNS)}) {source} "
        f"ON CONFLICT ({_q('run_id')}, {_q('key')}, {_q('width')}, {_q('bucket')}) "
        f"DO UPDATE SET {', '.join(sets)}"
    )


def add_points(*, run: Run | int, step: int, values: Mapping[str, float], wall_time: datetime) -> None:
    """Fold one step's newly stored points (`{key: value}`, none of them stored before) into the
    run's rollups, every width at once. The caller holds the run's row lock (one writer per run)."""
    if not values:
        return
    run_id = run if isinstance(run, int) else run.pk
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _upsert_sql(None),
                {
                    "run_id": run_id,
                    "step": step,
                    "time": wall_time,
                    "keys": list(values),
                    "values": [float(value) for value in values.values()],
                    "widths": list(WIDTHS),
                    "buckets": [step // width for width in WIDTHS],
                },
            )
        return
    time = connection.ops.adapt_datetimefield_value(wall_time)
    params: list = []
    for key, value in values.items():
        value = float(value)
        for width in WIDTHS:
            params += [run_id, key, width, step // width, 1, step, value, time]
            params += [step, value, time, step, value, time]
    per_row = len(_COLUMNS)
    rows = len(params) // per_row
    # Elsewhere (SQLite) one VALUES row per key and width: one statement unless the backend's
    # parameter limit asks for less (999 or 32,766).
    batch = max(1, min(rows, (connection.features.max_query_params or 65_535) // per_row))
    with connection.cursor() as cursor:
        for start in range(0, rows, batch):
            chunk = params[start * per_row : (start + batch) * per_row]
            cursor.execute(_upsert_sql(len(chunk) // per_row), chunk)


def _floor_div(expression: str, divisor: int) -> str:
    """`expression // divisor` in SQL (integer division truncates towards zero in SQL)."""
    return (
        f"(CASE WHEN {expression} >= 0 THEN {expression} / {divisor} "
        f"ELSE -((-({expression}) - 1) / {divisor}) - 1 END)"
    )


# Per bucket, pick the source row holding the lowest value (then earliest step), the highest value
# (then latest step) and the latest step, and sum the counts. The source is either the raw points
# (the finest width) or the rollups of the width below (each bucket is two of those).
_REBUILD_SQL = """
WITH src AS ({source}),
ranked AS (
    SELECT src.*,
           row_number() OVER (PARTITION BY key, bucket ORDER BY lo_value, lo_step) AS r_lo,
           row_number() OVER (PARTITION BY key, bucket ORDER BY hi_value DESC, hi_step DESC) AS r_hi,
           row_number() OVER (PARTITION BY key, bucket ORDER BY la_step DESC) AS r_la,
           sum(n) OVER (PARTITION BY key, bucket) AS total
    FROM src
)
INSERT INTO {table} ({columns})
SELECT %(run_id)s, key, %(width)s, bucket, max(total),
       max(CASE WHEN r_lo = 1 THEN lo_step END), max(CASE WHEN r_lo = 1 THEN lo_value END),
       max(CASE WHEN r_lo = 1 THEN lo_time END),
       max(CASE WHEN r_hi = 1 THEN hi_step END), max(CASE WHEN r_hi = 1 THEN hi_value END),
       max(CASE WHEN r_hi = 1 THEN hi_time END),
       max(CASE WHEN r_la = 1 THEN la_step END), max(CASE WHEN r_la = 1 THEN la_value END),
       max(CASE WHEN r_la = 1 THEN la_time END)
FROM ranked
WHERE r_lo = 1 OR r_hi = 1 OR r_la = 1
GROUP BY key, bucket
"""


def _rebuild_buckets(*, run_id: int, step_lo: int | None = None, step_hi: int | None = None) -> None:
    """Recompute, at every width, the run's buckets that hold any step in [step_lo, step_hi] (all of
    them when unbounded) from what is stored now: the finest width from the raw points, each wider
    one from the width below."""
    table = _table()
    points = _q(MetricPoint._meta.db_table)
    columns = ", ".join(_q(c) for c in _COLUMNS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Sorting a long run's points three ways: keep it in memory.
            cursor.execute("SET LOCAL work_mem = '64MB'")
        previous = None
        for width in WIDTHS:
            params: dict = {"run_id": run_id, "width": width}
            where = ""
            if step_lo is not None:
                params["b_lo"] = step_lo // width
                where += " AND bucket >= %(b_lo)s"
            if step_hi is not None:
                params["b_hi"] = step_hi // width
                where += " AND bucket <= %(b_hi)s"
            cursor.execute(
                f"DELETE FROM {table} WHERE run_id = %(run_id)s AND width = %(width)s{where}", params
            )
            if previous is None:
                step_filter = ""
                if step_lo is not None:
                    params["s_lo"] = params["b_lo"] * width
                    step_filter += " AND step >= %(s_lo)s"
                if step_hi is not None:
                    params["s_hi"] = params["b_hi"] * width + width - 1
                    step_filter += " AND step <= %(s_hi)s"
                source = (
                    f"SELECT key, {_floor_div('step', width)} AS bucket, 1 AS n, "
                    "step AS lo_step, value AS lo_value, wall_time AS lo_time, "
                    "step AS hi_step, value AS hi_value, wall_time AS hi_time, "
                    "step AS la_step, value AS la_value, wall_time AS la_time "
                    f"FROM {points} WHERE run_id = %(run_id)s{step_filter}"
                )
            else:
                ratio = width // previous
                bucket_filter = ""
                if step_lo is not None:
                    params["p_lo"] = params["b_lo"] * ratio
                    bucket_filter += " AND bucket >= %(p_lo)s"
                if step_hi is not None:
                    params["p_hi"] = params["b_hi"] * ratio + ratio - 1
                    bucket_filter += " AND bucket <= %(p_hi)s"
                params["previous"] = previous
                source = (
                    f"SELECT key, {_floor_div('bucket', ratio)} AS bucket, {_q('count')} AS n, "
                    "min_step AS lo_step, min_value AS lo_value, min_time AS lo_time, "
                    "max_step AS hi_step, max_value AS hi_value, max_time AS hi_time, "
                    "last_step AS la_step, last_value AS la_value, last_time AS la_time "
                    f"FROM {table} WHERE run_id = %(run_id)s AND width = %(previous)s{bucket_filter}"
                )
            cursor.execute(_REBUILD_SQL.format(source=source, table=table, columns=columns), params)
            previous = width


def discard_after(*, run_id: int, step: int) -> None:
    """Follow the deletion of the run's points after `step`: drop the buckets that start after it
    and rebuild the ones holding it. The caller holds the run's row lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {_table()} WHERE run_id = %s AND bucket * width + width - 1 > %s",
            [run_id, step],
        )
    _rebuild_buckets(run_id=run_id, step_lo=step, step_hi=step)


@transaction.atomic
def rebuild_rollups(*, run_id: int) -> int:
    """Recompute a run's rollups from its raw points (after a bulk load that bypassed `add_points`,
    or for runs stored before rollups existed). Returns how many rollup rows it holds now."""
    list(Run.objects.select_for_update().filter(pk=run_id).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_table()} WHERE run_id = %s", [run_id])
    _rebuild_buckets(run_id=run_id)
    return MetricRollup.objects.filter(run_id=run_id).count()
