"""An event published by a task in a real Celery worker process reaches a WebSocket client through Redis."""

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from experiments import tasks
from experiments.models import Run, RunStatus
from experiments.services import runs as run_services
from tests.factories import RunFactory, UserFactory

from .realtime_support import receive_events, run_socket, session_cookie_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@sync_to_async
def running_run_with_a_dead_worker():
    owner = UserFactory(username="owner")
    run = RunFactory(owner=owner)
    run_services.acquire_lease(run_id=run.pk, worker_id="gpu-host-that-died")
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    return run, session_cookie_for(owner)


async def test_task_in_a_real_worker_publishes_to_a_websocket_client(celery_worker_factory):
    worker = await sync_to_async(celery_worker_factory)(queues="default")
    run, session = await running_run_with_a_dead_worker()

    socket = run_socket(run.pk, session=session)
    connected, _ = await socket.connect()
    assert connected
    assert [event["seq"] for event in await receive_events(socket, count=1)] == [1]  # "running"

    await sync_to_async(tasks.sweep_lost_runs.delay)()
    (event,) = await receive_events(socket, count=1, timeout=30)
    assert event["seq"] == 2
    assert event["payload"]["status"] == RunStatus.FAILED
    assert "gpu-host-that-died" in event["payload"]["error"]
    await socket.disconnect()
    assert "experiments.tasks.sweep_lost_runs" in worker.log()
    assert (await Run.objects.aget(pk=run.pk)).status == RunStatus.FAILED
