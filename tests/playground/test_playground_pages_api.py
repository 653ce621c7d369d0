"""The playground's pages and API without a worker: choices, validation, sessions, stop, ownership."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from experiments.models import DatasetItem, PlaygroundSession, PlaygroundStatus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_the_page_offers_kept_checkpoints_and_items_and_creates_a_session(client, playground_run):
    client.force_login(playground_run.owner)
    page = client.get(f"/playground/?run={playground_run.pk}").content.decode()
    assert '<option value="10"' in page and "eval reward 0.750" in page
    item = DatasetItem.objects.filter(dataset=playground_run.eval_dataset).order_by("index").first()
    assert f'<option value="{item.pk}"' in page and "What is the secret colour?" in page

    refused = client.post("/playground/", {"run": playground_run.pk, "step": "10", "item": "", "prompt": ""})
    assert "Choose a dataset item or type a prompt." in refused.content.decode()
    pruned = client.post("/playground/", {"run": playground_run.pk, "step": "20", "item": item.pk})
    assert "No adapter for step 20" in pruned.content.decode()

    response = client.post("/playground/", {"run": playground_run.pk, "step": "10", "item": item.pk})
    session = PlaygroundSession.objects.get()
    assert response["Location"] == f"/playground/{session.pk}/"
    assert session.step == 10 and session.item == item and session.messages == item.data["messages"]
    assert session.status == PlaygroundStatus.CREATED
    shown = client.get(f"/playground/{session.pk}/").content.decode()
    assert 'id="side-adapter"' in shown and 'id="side-base"' in shown and "checkpoint at step 10" in shown
    # Reachable from the run page's checkpoint list.
    assert (
        f"/playground/?run={playground_run.pk}&amp;step=10"
        in client.get(f"/runs/{playground_run.pk}/").content.decode()
    )

    stranger = UserFactory(username="stranger")
    client.force_login(stranger)
    assert client.get(f"/playground/{session.pk}/").status_code == 404
    assert "No run has a checkpoint yet" in client.get("/playground/").content.decode()


def test_the_api_creates_starts_reads_and_stops_sessions(playground_run, django_capture_on_commit_callbacks):
    api = APIClient()
    api.force_authenticate(playground_run.owner)
    created = api.post(
        "/api/v1/playground/",
        {"run": playground_run.pk, "step": 10, "prompt": "Which colour?"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "created" and body["websocket"] == f"/ws/playground/{body['id']}/"
    assert body["messages"][-1] == {"role": "user", "content": "Which colour?"}
    stopped = api.post(f"/api/v1/playground/{body['id']}/stop/")
    assert stopped.json()["status"] == "stopped"  # never started: stopped at once

    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        started = api.post(
            "/api/v1/playground/",
            {"run": playground_run.pk, "prompt": "Which?", "start": True},
            format="json",
        )
    assert started.json()["status"] == "queued" and len(enqueued) == 1
    # No final adapter yet: the latest checkpoint plays, and the session says so.
    assert api.get(f"/api/v1/playground/{started.json()['id']}/").json()["step"] == 10

    assert api.post("/api/v1/playground/", {"run": playground_run.pk}, format="json").status_code == 400
    stranger = APIClient()
    stranger.force_authenticate(UserFactory(username="stranger"))
    assert stranger.get(f"/api/v1/playground/{body['id']}/").status_code == 404
    refused = stranger.post("/api/v1/playground/", {"run": playground_run.pk, "prompt": "x"}, format="json")
    assert refused.status_code == 400 and "run" in refused.json()
