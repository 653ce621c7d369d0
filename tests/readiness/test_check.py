"""The "Check readiness" path: a stored report sampled by the base model (tiny, local) over the
demo tool server, graded, summarised, comparable across grader versions."""

from __future__ import annotations

import pytest
from django.conf import settings

from experiments.models import ReadinessStatus
from experiments.selectors.readiness import comparable_reports
from experiments.services import graders as grader_services
from experiments.services.readiness import ReadinessError, create_readiness_report, execute_readiness

pytestmark = pytest.mark.django_db


def test_the_task_is_routed_to_the_train_queue():
    assert settings.CELERY_TASK_ROUTES["experiments.tasks.compute_readiness"] == {"queue": "train"}


@pytest.mark.slow
def test_a_readiness_check_samples_k_rollouts_per_item_and_stores_the_report(run_setup, tiny_model_dir):
    setup = run_setup
    report = create_readiness_report(
        owner=setup["owner"],
        base_model=str(tiny_model_dir),
        dataset=setup["train"],
        tools=[setup["tool"]],
        grader=setup["grader"],
        k=3,
        max_items=2,
        config={"max_turns": 2, "max_new_tokens_per_turn": 12, "max_tokens_per_rollout": 48},
        start=False,
    )
    assert report.status == ReadinessStatus.QUEUED
    assert execute_readiness(report_id=report.pk) == ReadinessStatus.SUCCEEDED
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
