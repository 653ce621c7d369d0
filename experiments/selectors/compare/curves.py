"""Overlaid metric curves of several runs: downsampled series (read concurrently, cached per run
until it records again) and the metric keys any of them has."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from django.core.cache import cache
from django.db import connection

from ...models import Run
from ..metrics import MAX_POINTS_LIMIT, MIN_POINTS, X_AXES, SeriesRequestError, metric_keys, metric_series


def compare_metric_keys(*, run_ids: Sequence[int]) -> list[str]:
    """Every metric key present in any of the runs, sorted."""
    keys: set[str] = set()
    for run_id in run_ids:
        keys.update(metric_keys(run_id))
    return sorted(keys)


SERIES_CACHE_SECONDS = 600


def _series_cache_key(run_id: int, last_seq: int, request: tuple) -> str:
    digest = hashlib.sha256(repr(request).encode()).hexdigest()[:24]
    return f"compare-series:{run_id}:{last_seq}:{digest}"


SERIES_THREADS = 4


def _read_series(*, run_ids: list[int], **request) -> dict[int, dict]:
    """{run id: metric_series' answer for the run}; several runs are read concurrently, each on its
    own database connection (PostgreSQL aggregates them on separate cores).

    Inside a transaction (a request under ATOMIC_REQUESTS, a test) other connections could not see
    its uncommitted rows, so the runs are read on this connection, one after the other.
    """
    if len(run_ids) == 1 or connection.in_atomic_block or connection.vendor != "postgresql":
        return metric_series(run_ids=run_ids, **request)["runs"]

    def read(run_id: int) -> dict:
        try:
            return metric_series(run_ids=[run_id], **request)["runs"]
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=min(SERIES_THREADS, len(run_ids))) as pool:
        parts = list(pool.map(read, run_ids))
    return {run_id: data for part in parts for run_id, data in part.items()}


def overlaid_series(
    *,
    run_ids: list[int],
    keys: list[str],
    x_axis: str = "step",
    max_points: int = 2000,
    step_min: int | None = None,
    step_max: int | None = None,
) -> dict:
    """`metric_series` (min/max/last-preserving downsampling) for several runs. Smoothing is the
    charts' own (`RftSmoothing` in static/js/live_chart.js): the points are returned as stored.

    Each run's answer is cached under the run's `last_seq`: a run that records a step gets a new
    `last_seq` and so a fresh answer, while finished runs (most of a comparison, viewed again on
    every reload, axis switch and zoom-out) are read from the cache instead of re-aggregating their
    points.
    """
    if x_axis not in X_AXES:
        raise SeriesRequestError(f"x_axis must be one of {', '.join(X_AXES)}.")
    max_points = max(MIN_POINTS, min(int(max_points), MAX_POINTS_LIMIT))
    keys = list(dict.fromkeys(keys))
    window = {"x_axis": x_axis, "max_points": max_points, "step_min": step_min, "step_max": step_max}
    request = (tuple(keys), *window.values())
    last_seqs = dict(Run.objects.filter(pk__in=run_ids).values_list("pk", "last_seq"))
    found: dict[int, dict] = {}
    cache_keys = {run_id: _series_cache_key(run_id, last_seqs[run_id], request) for run_id in last_seqs}
    cached = cache.get_many(list(cache_keys.values()))
    for run_id, cache_key in cache_keys.items():
        if cache_key in cached:
            found[run_id] = cached[cache_key]
    to_read = [run_id for run_id in run_ids if run_id in last_seqs and run_id not in found]
    if to_read:
        fresh = _read_series(run_ids=to_read, keys=keys, **window)
        found.update(fresh)
        cache.set_many({cache_keys[run_id]: data for run_id, data in fresh.items()}, SERIES_CACHE_SECONDS)
    return {
        "x_axis": x_axis,
        "max_points": max_points,
        "runs": {run_id: found[run_id] for run_id in run_ids if run_id in found},
    }
