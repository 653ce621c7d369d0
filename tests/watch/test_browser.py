"""In Chromium against the real ASGI app: a readiness report with its verdict and charts, a run whose
rollouts game a holed grader (flag counter, watch chart, flagged rollouts), a paused run's banner and
a grader audit. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import os

import pytest

from experiments.models import ReadinessReport
from experiments.services.audit import create_audit, execute_audit
from experiments.services.readiness import readiness_statistics
from tests.factories import DatasetFactory, GraderFactory, UserFactory
from tests.foundation.realtime_support import session_cookie_for

from .support import build_flagged_run

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def watched(redis_url):
    """Built before the browser starts: recording publishes to the channel layer, which refuses to
    run inside Playwright's event loop."""
    owner = UserFactory(username="watcher")
    run = build_flagged_run(owner, steps=6)
    paused = build_flagged_run(
        owner,
        steps=6,
        watch_config={"pause": {"enabled": True, "rule": "any", "threshold": 0.4, "window": 2}},
    )
    exact = GraderFactory(owner=owner, name="answer-exact")
    audit = create_audit(owner=owner, run=run, grader=exact, sample_size=4, start=False)
    execute_audit(audit_id=audit.pk)
    strict, partial = versioned_reports(owner)
    return {
        "owner": owner,
        "run": run,
        "paused": paused,
        "audit": audit,
        "strict": strict,
        "partial": partial,
    }


def versioned_reports(owner):
    """One grader before and after partial credit: all-or-nothing leaves most items without signal."""
    dataset = DatasetFactory(owner=owner, name="repo-tasks-eval", split="eval", item_count=10, status="ready")
    grader = GraderFactory(owner=owner, name="files-f1")
    reports = []
    for version, rewards in (
        (
            1,
            {i: [0, 0, 0, 0] for i in range(6)}
            | {6: [1, 1, 1, 1], 7: [0, 1, 0, 0], 8: [0, 0, 1, 1], 9: [0, 0, 0, 0]},
        ),
        (
            2,
            {i: [0.2, 0.5, 0.0, 0.4] for i in range(6)}
            | {6: [1, 1, 1, 1], 7: [0.5, 1, 0.5, 0], 8: [0, 0.5, 1, 1], 9: [0, 0, 0, 0]},
        ),
    ):
        rollouts = [
            {
                "item_index": i,
                "reward": r,
                "tool_calls": 1 + (i + n) % 3,
                "tool_call_names": ["grep"],
                "grader_errors": [],
            }
            for i, values in rewards.items()
            for n, r in enumerate(values)
        ]
        reports.append(
            ReadinessReport.objects.create(
                owner=owner,
                name=f"repo-tasks-eval · files-f1 v{version} · k=4",
                base_model="Qwen/Qwen2.5-0.5B-Instruct",
                dataset=dataset,
                grader=grader,
                grader_version=version,
                k=4,
                status="succeeded",
                results=readiness_statistics(rollouts),
            )
        )
    return reports


def logged_in(page, server, user):
    page.context.add_cookies([{"name": "sessionid", "value": session_cookie_for(user), "url": server.url}])
    return page


def test_readiness_report_and_a_run_with_flags(watched, page, daphne, screenshot_dir):
    owner, run = watched["owner"], watched["run"]
    report = ReadinessReport.objects.get(run=run)
    logged_in(page, daphne, owner).goto(f"{daphne.url}/readiness/{report.pk}/")
    page.wait_for_selector("#chart-best-of-k .scatterlayer .trace")
    page.wait_for_selector("#chart-zero-variance .barlayer .trace")
    verdict = page.inner_text("#readiness-verdict")
    assert "Best-of-4" in verdict
    assert page.inner_text("#stat-mean") == "0.500"
    assert page.locator("#per-item tbody tr").count() == 2
    assert (
        page.locator("#comparable-reports tbody tr").count() == 2
    )  # both runs' baselines: same data + model
    page.screenshot(path=str(screenshot_dir / "readiness-report.png"), full_page=True)

    page.goto(f"{daphne.url}/readiness/{watched['strict'].pk}/")
    page.wait_for_selector("#chart-best-of-k .scatterlayer .trace")
    assert "Not ready" in page.inner_text("#readiness-verdict")
    assert "70% of items always score 0" in page.inner_text("#readiness-verdict")
    versions = page.locator("#comparable-reports tbody tr")
    assert versions.count() == 2
    assert "v2" in versions.nth(0).inner_text() and "ready" in versions.nth(0).inner_text()
    assert "v1" in versions.nth(1).inner_text() and "not ready" in versions.nth(1).inner_text()
    page.screenshot(path=str(screenshot_dir / "readiness-not-ready.png"), full_page=True)

    # A report still waiting for a worker: the page follows it and shows the results by itself.
    pending = ReadinessReport.objects.create(
        owner=owner,
        name="repo-tasks-eval · files-f1 v2 · k=4 (again)",
        base_model=watched["strict"].base_model,
        dataset=watched["strict"].dataset,
        grader=watched["strict"].grader,
        grader_version=2,
        k=4,
    )
    page.goto(f"{daphne.url}/readiness/{pending.pk}/")
    assert "Waiting for a worker" in page.inner_text("#report-pending")
    ReadinessReport.objects.filter(pk=pending.pk).update(
        status="succeeded", results=watched["partial"].results
    )
    page.wait_for_selector("#readiness-verdict", timeout=20000)
    assert page.locator("#report-pending").count() == 0
    assert page.inner_text("#stat-mean") == f"{watched['partial'].results['mean_reward']:.3f}"

    page.goto(f"{daphne.url}/readiness/")
    assert page.locator("#readiness-reports tbody tr").count() == 5
    page.screenshot(path=str(screenshot_dir / "readiness-list.png"), full_page=True)

    page.goto(f"{daphne.url}/runs/{run.pk}/")
    page.wait_for_selector("#chart-watch .scatterlayer .trace")
    flagged = int(page.inner_text("#watch-flagged"))
    assert flagged == sum(range(1, 7))  # one more hedging rollout each step
    assert page.locator('#watch-panel tr[data-rule="hedged_answer"] td.count').inner_text() == str(flagged)
    assert not page.is_visible("#paused-banner")
    page.wait_for_selector("#tool-call-histogram .barlayer .trace")
    page.screenshot(path=str(screenshot_dir / "run-flags.png"), full_page=True)

    page.click("#watch-flagged-link")
    page.wait_for_url("**/rollouts/?flagged=yes")
    table = page.inner_text("body")
    # the table opens at the latest step: its 6 hedging rollouts, each naming its rules
    assert table.count("hedged_answer") == 6 and table.count("no_tool_calls") == 6

    page.goto(f"{daphne.url}/runs/{watched['paused'].pk}/")
    banner = page.inner_text("#paused-banner")
    assert "Paused for review" in banner and "at step" in banner and "pause threshold 40%" in banner
    assert page.is_visible("#resume-run") and page.is_visible("#cancel-run")
    page.screenshot(path=str(screenshot_dir / "run-paused.png"))

    page.goto(f"{daphne.url}/audits/{watched['audit'].pk}/")
    assert page.inner_text("#audit-flagged") == "4 of 4" and page.inner_text("#audit-unflagged") == "0 of 4"
    page.screenshot(path=str(screenshot_dir / "readiness-audit.png"), full_page=True)
