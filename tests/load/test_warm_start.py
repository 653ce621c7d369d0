"""A server process sets itself up before it listens (rftweb/warmup.py through rftweb/lifespan.py): its
first requests find the views imported, the templates compiled and the connections open, instead of
fifty people who open a page on a restarted server all waiting for that one-time work together."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rftweb.lifespan import Lifespan
from tests.factories import DatasetFactory, DatasetItemFactory, RunFactory, UserFactory
from tests.runs_ui.conftest import write_metrics

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter (this one has imported everything already): the project's ASGI application, its
# start-up run as uvicorn runs it (or not), then the pages bench_load's people ask for, noting which
# modules those requests had to import and which templates they had to compile.
FIRST_REQUESTS = r"""
import asyncio, json, sys

import django

django.setup()

from rftweb.asgi import application

user_id, paths, warm = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "warm"
sent = []
if warm:
    messages = asyncio.Queue()
    messages.put_nowait({"type": "lifespan.startup"})

    async def start():
        async def send(message):
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                messages.put_nowait({"type": "lifespan.shutdown"})

        await application({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, send)

    asyncio.run(start())

from django.contrib.auth import get_user_model
from django.template import engines
from django.test import Client

client = Client(HTTP_HOST="localhost")
client.force_login(get_user_model().objects.get(pk=user_id))
loader = engines["django"].engine.template_loaders[0]
compiled_before = set(loader.get_template_cache)
before = set(sys.modules)
statuses = {path: client.get(path).status_code for path in paths}
print(json.dumps({
    "lifespan": sent,
    "statuses": statuses,
    "imported": sorted(set(sys.modules) - before),
    "compiled": sorted(set(loader.get_template_cache) - compiled_before),
}))
"""


def _first_requests(*, user_id: int, paths: list[str], warm: bool) -> dict:
    from tests.conftest import database_url_for_subprocesses

    env = {
        **{key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DJANGO_SETTINGS_MODULE": "rftweb.settings.test",
        "DATABASE_URL": database_url_for_subprocesses(),
        "RFT_IMPORT_PROCESSES": "0",  # no upload helper to start: this is about the pages
    }
    result = subprocess.run(
        [sys.executable, "-c", FIRST_REQUESTS, str(user_id), json.dumps(paths), "warm" if warm else "cold"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # committed: the other interpreter reads it
def test_after_start_up_the_first_requests_import_and_compile_nothing(redis_url):
    user = UserFactory()
    dataset = DatasetFactory(owner=user)
    DatasetItemFactory(dataset=dataset)
    run = RunFactory(owner=user, train_dataset=dataset, status="running")
    write_metrics(run, range(1, 6))
    paths = [
        "/",
        "/runs/",
        "/datasets/",
        "/tools/",
        "/graders/",
        f"/datasets/{dataset.pk}/",
        f"/runs/{run.pk}/",
        f"/runs/{run.pk}/rollouts/",
        "/api/v1/runs/",
        "/api/v1/datasets/",
        f"/api/v1/runs/{run.pk}/metrics/",
        f"/api/v1/runs/{run.pk}/series/?x=step&max_points=2000&keys=reward,kl,loss",
    ]

    warm = _first_requests(user_id=user.pk, paths=paths, warm=True)
    assert warm["lifespan"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert set(warm["statuses"].values()) == {200}, warm["statuses"]
    assert warm["imported"] == [], " ".join(warm["imported"])
    assert warm["compiled"] == [], warm["compiled"]

    # The same requests in a process that skipped its start-up: what the first visitors would wait for.
    cold = _first_requests(user_id=user.pk, paths=paths, warm=False)
    assert set(cold["statuses"].values()) == {200}, cold["statuses"]
    assert "experiments.views.runs" in cold["imported"]
    assert len(cold["imported"]) > 100, cold["imported"]
    assert "experiments/run_page.html" in cold["compiled"]


def _lifespan_messages(lifespan: Lifespan, incoming: list[dict]) -> list[dict]:
    async def drive():
        queue: asyncio.Queue = asyncio.Queue()
        for message in incoming:
            queue.put_nowait(message)
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await lifespan({"type": "lifespan"}, queue.get, send)
        return sent

    return asyncio.run(drive())


def test_start_up_steps_run_in_order_off_the_event_loop_before_start_up_completes():
    ran: list[tuple[str, bool]] = []
    main = threading.main_thread()

    def step(name):
        return lambda: ran.append((name, threading.current_thread() is main))

    sent = _lifespan_messages(
        Lifespan(startup=[step("warm up"), step("upload helpers")]),
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
    )
    assert ran == [("warm up", False), ("upload helpers", False)]
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


def test_a_failing_start_up_step_fails_the_start_with_its_error_and_stops_there():
    ran = []

    def broken():
        raise RuntimeError("the URL configuration does not import")

    sent = _lifespan_messages(
        Lifespan(startup=[broken, lambda: ran.append("after")]),
        [{"type": "lifespan.startup"}],
    )
    assert ran == []
    assert [message["type"] for message in sent] == ["lifespan.startup.failed"]
    assert "the URL configuration does not import" in sent[0]["message"]
