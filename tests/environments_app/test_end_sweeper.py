"""End delivered at least once when the worker dies: SIGKILL mid-step, then the beat sweeper.

A worker process (tests/environment_worker.py) runs the real rollout engine with the run's
database-backed environment; it hangs mid-step after its environments started and is SIGKILLed.
No end was sent. Once the leases expire, the periodic sweeper of a real Celery worker (beat, default
queue) delivers every missing end: the lifecycle server's log shows no started rollout without one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.models import Environment, EnvironmentLease
from experiments.services.environments import sweep_environment_ends
from tests.conftest import database_url_for_subprocesses
from tests.environment_test_server import EnvironmentServer
from tests.factories import RunFactory

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = Path(os.environ.get("RFTWEB_TEST_MODEL_CACHE", ROOT / ".pytest_cache" / "rftweb-models"))

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def env_server():
    server = EnvironmentServer()
    yield server
    server.close()


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sigkill_mid_step_then_the_sweeper_delivers_every_missing_end(
    env_server, celery_worker_factory, tmp_path, settings
):
    from trainer.tiny import build_tiny_model

    model_dir = build_tiny_model(MODEL_CACHE / "tiny")
    run = RunFactory()
    run.environment = Environment.objects.create(
        owner=run.owner,
        name="sandbox",
        start_url=env_server.start_url,
        end_url=env_server.end_url,
        signing_secret="sweeper-test-secret-0123",
        max_live=4,
    )
    run.save()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "environment_worker.py"), str(run.pk), "8", str(model_dir)],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url_for_subprocesses(), "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(
            lambda: "mid-step" in log.read_text(errors="replace"),
            120,
            f"the worker to start:\n{log.read_text()}",
        )
        _wait(lambda: log.read_text().count("mid-step") == 4, 20, "four rollouts mid-step")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    started = set(env_server.starts)
    assert len(started) == 4 and env_server.ends == []  # the cap held the other four back
    leases = EnvironmentLease.objects.filter(run=run)
    assert set(leases.values_list("trace_id", flat=True)) == started
    assert not leases.filter(end_delivered_at__isnull=False).exists()
    # Before the lease expires, the sweeper leaves them alone (the rollouts could still be running).
    assert sweep_environment_ends() == 0 and env_server.ends == []

    celery_worker_factory(queues="default", name="sweeper", beat=True)
    _wait(lambda: len(env_server.ends) >= 4, 60, "the sweeper's ends")
    time.sleep(1.5)  # another beat round must not send them again
    assert env_server.ends_by_trace() == {trace: 1 for trace in started}
    assert all(end["finish_reason"] == "lost" and end["reward"] is None for end in env_server.ends)
    assert all(end["run_id"] == str(run.pk) for end in env_server.ends)
    assert leases.filter(end_delivered_at__isnull=False).count() == 4
    assert not env_server.live
