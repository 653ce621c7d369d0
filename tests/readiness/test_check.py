"""The "Check readiness" path: a stored report sampled by the base model (tiny, local) over the
demo tool server, graded, summarised, comparable across grader versions."""

from __future__ import annotations

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from experiments.models import ReadinessReport, ReadinessStatus
from experiments.selectors.readiness import comparable_reports
from experiments.services import graders as grader_services
from experiments.services.readiness import ReadinessError, create_readiness_report
from tests.runs.test_reliability import wait_for

pytestmark = pytest.mark.django_db


def test_the_task_is_routed_to_the_train_queue():
    assert settings.CELERY_TASK_ROUTES["experiments.tasks.compute_readiness"] == {"queue": "train"}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_check_readiness_through_the_api_runs_in_a_train_worker_and_stores_the_report(
    run_setup, tiny_model_dir, celery_worker_factory
):
    setup = run_setup
    worker = celery_worker_factory(queues="train", name="gpu")
    api = APIClient()
    api.force_authenticate(setup["owner"])
    response = api.post(
        "/api/v1/readiness/",
        {
            "base_model": str(tiny_model_dir),
            "dataset": setup["train"].pk,
            "tools": [setup["tool"].pk],
            "grader": setup["grader"].pk,
            "k": 3,
            "max_items": 2,
            "config": {"max_turns": 2, "max_new_tokens_per_turn": 12, "max_tokens_per_rollout": 48},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    report = ReadinessReport.objects.get(pk=response.json()["id"])
    wait_for(
        lambda: ReadinessReport.objects.filter(pk=report.pk, status__in=["succeeded", "failed"]).exists(),
        timeout_s=120,
        what="the readiness check",
        logs=[worker.log],
    )
    report.refresh_from_db()
    assert report.status == ReadinessStatus.SUCCEEDED, report.error
    report.refresh_from_db()
    results = report.results
    assert results["rollouts"] == 2 * 3 and results["items"] == 2 and results["k"] == 3
    assert [point["k"] for point in results["best_of_k"]] == [1, 2, 3]
    assert results["verdict"]["level"] in ("ready", "weak", "not_ready") and results["verdict"]["reasons"]
    assert len(results["per_item"]) == 2 and results["grader_errors"]["rate"] == 0.0
    assert report.grader_version == setup["grader"].version

    # the grader changes: a new report is made with the new version and both are listed side by side
    grader_services.update_grader(
        grader=setup["grader"], spec={**setup["grader"].spec, "headers": {"X-Grader-Version": "2"}}
    )
    setup["grader"].refresh_from_db()
    newer = create_readiness_report(
        owner=setup["owner"],
        base_model=str(tiny_model_dir),
        dataset=setup["train"],
        tools=[setup["tool"]],
        grader=setup["grader"],
        k=2,
        max_items=1,
        start=False,
    )
    listed = comparable_reports(report=report, user=setup["owner"])
    assert [r.pk for r in listed] == [newer.pk, report.pk]
    assert [r.grader_version for r in listed] == [setup["grader"].version, report.grader_version]


def test_bad_input_is_refused_with_a_reason(run_setup):
    setup = run_setup
    with pytest.raises(ReadinessError, match="k must be"):
        create_readiness_report(
            owner=setup["owner"],
            base_model="m",
            dataset=setup["train"],
            tools=[],
            grader=setup["grader"],
            k=1,
            start=False,
        )
