"""The run form sets the watch's pause rule; Clone keeps it."""

from __future__ import annotations

import pytest
from django.test import Client

from experiments.forms.runs import RunForm
from experiments.models import Run
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, UserFactory
from tests.run_forms import form_data

pytestmark = pytest.mark.django_db


def test_the_pause_rule_set_in_the_form_is_stored_and_cloned(django_capture_on_commit_callbacks):
    owner = UserFactory()
    train = DatasetFactory(owner=owner, item_count=1, status="ready")
    DatasetItemFactory(dataset=train, index=0)
    grader = GraderFactory(owner=owner)
    client = Client()
    client.force_login(owner)
    data = form_data(
        RunForm(user=owner),
        name="watched",
        train_dataset=train.pk,
        grader=grader.pk,
        watch_pause_enabled="on",
        watch_pause_rule="no_tool_calls",
        watch_pause_threshold="0.3",
        watch_pause_window="2",
    )
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/runs/new/", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    run = Run.objects.get(owner=owner)
    assert run.watch_config == {
        "pause": {"enabled": True, "rule": "no_tool_calls", "threshold": 0.3, "window": 2}
    }
    clone = RunForm.initial_from_run(run)
    assert clone["watch_pause_enabled"] and clone["watch_pause_rule"] == "no_tool_calls"
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'pause when <span class="mono">no_tool_calls</span> flags ≥ 30%' in page


def test_the_api_refuses_a_bad_watch_config_naming_the_key():
    from rest_framework.test import APIClient

    owner = UserFactory()
    train = DatasetFactory(owner=owner, item_count=1, status="ready")
    DatasetItemFactory(dataset=train, index=0)
    api = APIClient()
    api.force_authenticate(owner)
    response = api.post(
        "/api/v1/runs/",
        {
            "name": "bad watch",
            "base_model": "tiny",
            "train_dataset": train.pk,
            "grader": GraderFactory(owner=owner).pk,
            "watch_config": {"pause": {"enabled": True, "threshold": 3}},
            "start": False,
        },
        format="json",
    )
    assert response.status_code == 400
    assert "watch.pause.threshold" in response.json()["watch_config"][0]
