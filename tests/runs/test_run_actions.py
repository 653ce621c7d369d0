"""Every action the run pages take is one service call that the API shares: launching a run without
choosing tools, and building the merged model (enqueued when the request's transaction commits)."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from experiments.forms.runs import RunForm
from experiments.models import Run
from experiments.services.training import run_output_dir
from rftweb import queues
from rftweb.celery import app as celery_app
from tests.factories import (
    DatasetFactory,
    DatasetItemFactory,
    GraderFactory,
    RunFactory,
    ToolFactory,
    UserFactory,
)
from tests.run_forms import form_data

pytestmark = pytest.mark.django_db


def item_calling(index: int, tool: str) -> dict:
    return {
        "messages": [{"role": "user", "content": f"What does SKU-{index} cost?"}],
        "tools": [{"type": "function", "function": {"name": tool, "parameters": {"type": "object"}}}],
        "answer": "4.99",
    }


@pytest.fixture
def setup():
    owner = UserFactory()
    train = DatasetFactory(owner=owner, item_count=1, status="ready")
    DatasetItemFactory(dataset=train, index=0, has_tools=True, data=item_calling(0, "lookup"))
    evaluation = DatasetFactory(owner=owner, item_count=1, status="ready")
    DatasetItemFactory(dataset=evaluation, index=0, has_tools=True, data=item_calling(1, "convert"))
    tools = {name: ToolFactory(owner=owner, name=name) for name in ("lookup", "convert", "unused")}
    ToolFactory(name="lookup")  # someone else's tool of the same name is never picked
    return {
        "owner": owner,
        "train": train,
        "eval": evaluation,
        "tools": tools,
        "grader": GraderFactory(owner=owner),
    }


def test_a_launch_without_tools_takes_the_tools_the_datasets_name_in_the_form_and_the_api_alike(
    setup, django_capture_on_commit_callbacks
):
    owner = setup["owner"]
    common = {
        "train_dataset": setup["train"].pk,
        "eval_dataset": setup["eval"].pk,
        "grader": setup["grader"].pk,
    }
    expected = {setup["tools"]["lookup"].pk, setup["tools"]["convert"].pk}

    client = Client()
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/runs/new/", form_data(RunForm(user=owner), name="by form", **common))
    assert response.status_code == 302, response.content.decode()[-2000:]

    api = APIClient()
    api.force_authenticate(owner)
    for name, extra in (("api, tools omitted", {}), ("api, tools empty", {"tools": []})):
        response = api.post(
            "/api/v1/runs/",
            {"name": name, "base_model": "tiny", "start": False, **common, **extra},
            format="json",
        )
        assert response.status_code == 201, response.json()
        assert set(response.json()["tools"]) == expected

    runs = Run.objects.filter(owner=owner)
    assert {run.name: set(run.tools.values_list("pk", flat=True)) for run in runs} == {
        "by form": expected,
        "api, tools omitted": expected,
        "api, tools empty": expected,
    }


def test_a_launch_still_refuses_datasets_whose_tools_are_not_registered(setup):
    setup["tools"]["convert"].delete()
    api = APIClient()
    api.force_authenticate(setup["owner"])
    response = api.post(
        "/api/v1/runs/",
        {
            "name": "missing tool",
            "base_model": "tiny",
            "train_dataset": setup["train"].pk,
            "eval_dataset": setup["eval"].pk,
            "grader": setup["grader"].pk,
            "start": False,
        },
        format="json",
    )
    assert response.status_code == 400
    assert "convert" in response.json()["tools"][0]
    assert not Run.objects.exists()


def train_queue_messages() -> list:
    """Drains the `train` queue of this test session's broker (its keys are namespaced)."""
    taken = []
    with celery_app.connection_for_read() as connection:
        queue = connection.SimpleQueue(queues.TRAIN, no_ack=True)
        try:
            while True:
                taken.append(queue.get(block=True, timeout=0.2))
        except queue.Empty:
            pass
        finally:
            queue.close()
    return taken


def with_adapter(run: Run) -> None:
    adapter = run_output_dir(run.pk) / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")


def test_the_merged_model_build_is_enqueued_on_commit_from_the_page_and_the_api(
    django_capture_on_commit_callbacks,
):
    run = RunFactory(status="succeeded")
    with_adapter(run)
    train_queue_messages()
    client = Client()
    client.force_login(run.owner)
    api = APIClient()
    api.force_authenticate(run.owner)

    with django_capture_on_commit_callbacks(execute=False) as page_callbacks:
        response = client.post(f"/runs/{run.pk}/merged/")
    assert response.status_code == 302
    with django_capture_on_commit_callbacks(execute=False) as api_callbacks:
        response = api.post(f"/api/v1/runs/{run.pk}/merged/")
    assert response.status_code == 202 and "worker" in response.json()["detail"]
    assert train_queue_messages() == []  # nothing leaves before the transaction commits

    for callback in [*page_callbacks, *api_callbacks]:
        callback()
    sent = train_queue_messages()
    assert [(m.headers["task"], m.decode()[0]) for m in sent] == [
        ("experiments.tasks.build_merged_model", [run.pk]),
        ("experiments.tasks.build_merged_model", [run.pk]),
    ]


def test_without_an_adapter_neither_the_page_nor_the_api_enqueues_a_build(django_capture_on_commit_callbacks):
    run = RunFactory(status="running")
    client = Client()
    client.force_login(run.owner)
    api = APIClient()
    api.force_authenticate(run.owner)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        page = client.post(f"/runs/{run.pk}/merged/", follow=True)
        response = api.post(f"/api/v1/runs/{run.pk}/merged/")
    assert callbacks == []
    assert "no adapter yet" in page.content.decode()
    assert response.status_code == 409 and "no adapter yet" in response.json()["detail"]
    stranger = APIClient()
    stranger.force_authenticate(UserFactory())
    assert stranger.post(f"/api/v1/runs/{run.pk}/merged/").status_code == 404
