"""Celery tasks: thin. Each takes ids, calls one service, logs the duration."""

from __future__ import annotations

import logging
import os
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


@shared_task(
    name="experiments.tasks.train_run",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def train_run(self, run_id: int) -> str | None:
    """Train one run (routed to the `train` queue). A redelivery while the run is held does nothing."""
    from .services.training import execute_run

    started = time.monotonic()
    worker_id = f"{self.request.hostname or 'worker'}:{os.getpid()}:{self.request.id}"
    status = execute_run(run_id=run_id, worker_id=worker_id)
    logger.info(
        "train_run %s on %s ended as %s after %.1f s", run_id, worker_id, status, time.monotonic() - started
    )
    return status


@shared_task(name="experiments.tasks.build_merged_model", acks_late=True)
def build_merged_model(run_id: int) -> str:
    """Merge a run's adapter into its base model (routed to `train`: it loads the model)."""
    from .services import artifacts
    from .services.runs import log_run

    started = time.monotonic()
    path = artifacts.build_merged_model(run_id=run_id)
    log_run(run_id=run_id, level="info", message=f"Merged model ready ({time.monotonic() - started:.0f} s).")
    return str(path)


@shared_task(name="experiments.tasks.compute_readiness", acks_late=True)
def compute_readiness(report_id: int) -> str:
    """Sample the base model for a readiness report (routed to `train`: it loads the model)."""
    from .services.readiness import execute_readiness

    started = time.monotonic()
    status = execute_readiness(report_id=report_id)
    logger.info(
        "compute_readiness %s ended as %s after %.1f s", report_id, status, time.monotonic() - started
    )
    return status


@shared_task(name="experiments.tasks.run_grader_audit", acks_late=True)
def run_grader_audit(audit_id: int) -> str:
    """Send a run's sampled rollouts to a second grader (default queue: it only makes HTTP calls)."""
    from .services.audit import execute_audit

    started = time.monotonic()
    status = execute_audit(audit_id=audit_id)
    logger.info("run_grader_audit %s ended as %s after %.1f s", audit_id, status, time.monotonic() - started)
    return status


@shared_task(name="experiments.tasks.run_playground", acks_late=True)
def run_playground(session_id: int) -> str | None:
    """Play a playground session (both sides, streamed); on the `default` queue, next to the UI's work."""
    from .services.playground import execute_session

    started = time.monotonic()
    status = execute_session(session_id=session_id)
    logger.info("run_playground %s ended as %s after %.1f s", session_id, status, time.monotonic() - started)
    return status


@shared_task(name="experiments.tasks.sweep_environment_ends")
def sweep_environment_ends() -> int:
    """Deliver the environment ends a dead worker left behind (their lease has expired)."""
    from .services.environments import sweep_environment_ends as sweep

    return sweep()
