"""Readiness and audit pages and API: what a user sees, and only their own."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from experiments.models import GraderAudit, ReadinessReport
from experiments.services.audit import execute_audit
from tests.factories import GraderFactory, UserFactory
from tests.watch.support import build_flagged_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def flagged():
    owner = UserFactory(username="watcher")
    run = build_flagged_run(owner)
    return owner, run


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_baseline_report_page_shows_the_verdict_curve_and_items(flagged):
    owner, run = flagged
    report = ReadinessReport.objects.get(run=run)
    page = client_for(owner).get(f"/readiness/{report.pk}/").content.decode()
    assert "Best-of-4" in page and 'id="per-item"' in page and 'id="readiness-verdict"' in page
    assert "v1" in page and run.name in page
    listing = client_for(owner).get("/readiness/").content.decode()
    assert f"/readiness/{report.pk}/" in listing and 'id="readiness-form"' in listing
    assert client_for(UserFactory()).get(f"/readiness/{report.pk}/").status_code == 404


def test_the_run_page_shows_the_flag_counter_rules_and_chart(flagged):
    owner, run = flagged
    page = client_for(owner).get(f"/runs/{run.pk}/").content.decode()
    assert 'id="watch-flagged">10<' in page  # 1 + 2 + 3 + 4 hedging rollouts
    assert 'data-rule="hedged_answer"' in page and "chart-watch" in page
    assert 'id="paused-banner"' in page and "paused-banner hidden" in page
    # both trends of the hedging run are active at its last step, and say what they mean
    assert (
        'data-trend="reward_up_flagged_up" data-state="fired">▲ reward_up_flagged_up</span> Train reward rises while the flagged share rises.'
        in page
    )
    assert (
        'data-trend="reward_up_eval_down" data-state="fired">▲ reward_up_eval_down</span> Train reward rises while eval reward falls.'
        in page
    )
    assert 'class="trend quiet" title="frac_reward_zero_std' in page


def test_a_paused_run_shows_the_rule_that_fired_and_can_be_resumed_or_cancelled():
    owner = UserFactory(username="paused-owner")
    run = build_flagged_run(
        owner,
        watch_config={"pause": {"enabled": True, "rule": "hedged_answer", "threshold": 0.25, "window": 2}},
    )
    assert run.status == "paused"
    page = client_for(owner).get(f"/runs/{run.pk}/").content.decode()
    banner = page[page.index('id="paused-banner"') : page.index("</div>", page.index('id="paused-detail"'))]
    assert "hidden" not in page[page.index('class="paused-banner') : page.index('id="paused-banner"')]
    assert "rule hedged_answer" in banner and "at step 3" in banner
    assert 'id="resume-run"' in page and 'id="cancel-run"' in page


def test_audit_pages_and_api(flagged):
    owner, run = flagged
    second = GraderFactory(owner=owner, name="exact")
    client = client_for(owner)
    response = client.post(f"/runs/{run.pk}/audits/", {"grader": second.pk, "sample_size": 3})
    audit = GraderAudit.objects.get(run=run)
    assert response.status_code == 302 and response["Location"] == f"/audits/{audit.pk}/"
    execute_audit(audit_id=audit.pk)  # the task, run here rather than on a worker
    page = client.get(f"/audits/{audit.pk}/").content.decode()
    assert "3 of 3" in page and "disagree" in page
    api = APIClient()
    api.force_authenticate(owner)
    body = api.get(f"/api/v1/audits/{audit.pk}/").json()
    assert body["results"]["summary"]["flagged"]["disagree"] == 3
    assert api.get("/api/v1/readiness/").json()["count"] == 1
    stranger = APIClient()
    stranger.force_authenticate(UserFactory())
    assert stranger.get(f"/api/v1/audits/{audit.pk}/").status_code == 404
    refused = stranger.post("/api/v1/audits/", {"run": run.pk, "grader": second.pk}, format="json")
    assert refused.status_code == 400
