"""Per-user rate limits on expensive actions (counted in the real Redis) and the cap on queued + running
runs (issue 13, item 3)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from experiments.models import Run, RunStatus
from experiments.services import run_launch
from experiments.services.rate_limits import RateLimited, check_rate
from tests.factories import (
    DatasetFactory,
    DatasetItemFactory,
    GraderFactory,
    RunFactory,
    ToolFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def tight_limits(settings):
    settings.RFT_RATE_LIMITS = {
        "tool_try": "2/minute",
        "grader_run": "2/minute",
        "readiness": "2/hour",
        "audit": "2/hour",
        "run_launch": "2/hour",
    }


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def assert_limited(response, what: str):
    assert response.status_code == 429, response.content
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 3600
    assert f"Too many {what}" in response.json()["detail"]


def ready_dataset(owner):
    dataset = DatasetFactory(owner=owner, status="ready", item_count=1)
    DatasetItemFactory(dataset=dataset, index=0)
    return dataset


def test_grader_runs_are_limited_per_user(tight_limits):
    alice, bob = UserFactory(), UserFactory()
    grader = GraderFactory(owner=alice)
    body = {"output_text": "42", "item": {"answer": "42"}}
    api = api_for(alice)
    for _ in range(2):
        assert api.post(f"/api/v1/graders/{grader.pk}/run/", body, format="json").status_code == 200
    limited = api.post(f"/api/v1/graders/{grader.pk}/run/", body, format="json")
    assert_limited(limited, "grader runs (Run grader)")
    assert "the limit is 2 per minute" in limited.json()["detail"]
    # Another user's count is their own.
    bobs = GraderFactory(owner=bob)
    assert api_for(bob).post(f"/api/v1/graders/{bobs.pk}/run/", body, format="json").status_code == 200


def test_tool_tries_are_limited_on_the_api_and_in_the_page_panel(tight_limits, client):
    owner = UserFactory()
    tool = ToolFactory(owner=owner, url="http://127.0.0.1:9/nothing-listens-here")
    api = api_for(owner)
    for _ in range(2):
        tried = api.post(f"/api/v1/tools/{tool.pk}/try/", {"arguments": {"key": "a"}}, format="json")
        assert tried.status_code == 200
        assert tried.json()["ok"] is False  # nothing listens: an answer all the same, and it counted
    assert_limited(
        api.post(f"/api/v1/tools/{tool.pk}/try/", {"arguments": {"key": "a"}}, format="json"),
        "tool tries (Try it)",
    )
    client.force_login(owner)
    panel = client.post(
        f"/tools/{tool.pk}/try/", {"arguments": '{"key": "a"}', "item": "{}"}, HTTP_HX_REQUEST="true"
    )
    assert panel.status_code == 429
    assert int(panel["Retry-After"]) > 0
    assert b'role="alert"' in panel.content and b"Too many tool tries" in panel.content


def test_readiness_checks_and_audits_are_limited(tight_limits):
    owner = UserFactory()
    dataset = ready_dataset(owner)
    grader = GraderFactory(owner=owner)
    api = api_for(owner)
    body = {"base_model": "tiny-local", "dataset": dataset.pk, "grader": grader.pk, "k": 2}
    for _ in range(2):
        assert api.post("/api/v1/readiness/", body, format="json").status_code == 201
    assert_limited(api.post("/api/v1/readiness/", body, format="json"), "readiness checks")

    run = RunFactory(owner=owner, status=RunStatus.SUCCEEDED)
    audit = {"run": run.pk, "grader": grader.pk, "sample_size": 2}
    for _ in range(2):
        assert api.post("/api/v1/audits/", audit, format="json").status_code == 201
    assert_limited(api.post("/api/v1/audits/", audit, format="json"), "grader audits")


def launch(owner, dataset, grader, name="run"):
    return run_launch.create_run(
        owner=owner,
        name=name,
        base_model="tiny-local",
        train_dataset=dataset,
        eval_dataset=None,
        tools=[],
        grader=grader,
        config={},
        start=False,
    )


def test_run_launches_are_limited(tight_limits):
    owner = UserFactory()
    dataset, grader = ready_dataset(owner), GraderFactory(owner=owner)
    for index in range(2):
        launch(owner, dataset, grader, name=f"r{index}")
    with pytest.raises(RateLimited) as refused:
        launch(owner, dataset, grader, name="third")
    assert "Too many run launches: the limit is 2 per hour" in str(refused.value)
    assert refused.value.retry_after > 0
    assert Run.objects.filter(owner=owner).count() == 2


def test_a_rate_limit_hit_counts_nothing_more(settings):
    settings.RFT_RATE_LIMITS = {"audit": "1/minute"}
    user = UserFactory()
    check_rate(user=user, action="audit")
    for _ in range(3):
        with pytest.raises(RateLimited):
            check_rate(user=user, action="audit")


def test_queued_plus_running_runs_are_capped_per_user(settings):
    settings.RFT_MAX_ACTIVE_RUNS_PER_USER = 2
    owner = UserFactory()
    dataset, grader = ready_dataset(owner), GraderFactory(owner=owner)
    RunFactory(owner=owner, status=RunStatus.RUNNING)
    queued = launch(owner, dataset, grader, name="queued")
    # Finished and paused runs do not count.
    RunFactory(owner=owner, status=RunStatus.SUCCEEDED)
    cancelled = RunFactory(owner=owner, status=RunStatus.CANCELLED, attempt=1, max_attempts=3)

    with pytest.raises(run_launch.RunValidationError) as refused:
        launch(owner, dataset, grader, name="one too many")
    message = refused.value.errors["non_field_errors"][0]
    assert "You already have 2 runs queued or running" in message and "cancel one" in message

    # The API says the same, as a 400 on the launch.
    response = api_for(owner).post(
        "/api/v1/runs/",
        {
            "name": "api",
            "base_model": "tiny-local",
            "train_dataset": dataset.pk,
            "grader": grader.pk,
            "config": {},
            "start": False,
        },
        format="json",
    )
    assert response.status_code == 400
    assert "You already have 2 runs queued or running" in response.json()["non_field_errors"][0]

    # Resume is a launch too: refused while at the cap (409 on the API).
    resumed = api_for(owner).post(f"/api/v1/runs/{cancelled.pk}/resume/")
    assert resumed.status_code == 409
    assert "You already have 2 runs queued or running" in resumed.json()["detail"]

    # Another user is not affected; and once a run ends there is room again.
    other = UserFactory()
    launch(other, ready_dataset(other), GraderFactory(owner=other), name="theirs")
    run_launch.cancel_run(run_id=queued.pk)
    assert launch(owner, dataset, grader, name="now it fits").status == RunStatus.QUEUED
