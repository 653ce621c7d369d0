"""Celery tasks: thin. Each takes ids, calls one service, logs the duration."""

from __future__ import annotations

import logging
import time

from celery import shared_task

from .services import runs as run_services

logger = logging.getLogger(__name__)


@shared_task(name="experiments.tasks.sweep_lost_runs")
def sweep_lost_runs() -> list[int]:
    """Periodic (beat): runs whose worker stopped heartbeating are marked failed and can be resumed."""
    started = time.monotonic()
    failed = run_services.sweep_lost_runs()
    logger.info("sweep_lost_runs: %d lost run(s) in %.3f s", len(failed), time.monotonic() - started)
    return failed
