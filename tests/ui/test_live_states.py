"""The cancel notice follows the run live (Chromium, Daphne, the real channel layer): "Cancel
requested" shows after the confirmed click and goes when the run has stopped; the final notice is
a plain notice, not a red error, and the action bar offers Clone when nothing can be resumed."""

from __future__ import annotations

import os

import pytest

from experiments.models import Run, RunStatus
from experiments.selectors import run_state
from experiments.services.runs import transition_run
from tests.foundation.realtime_support import session_cookie_for
from tests.runs_ui.test_browser import off_the_loop
from tests.watch.support import build_flagged_run

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def running_run():
    from tests.factories import UserFactory

    user = UserFactory(username="canceller")
    like = build_flagged_run(user, steps=1)
    run = Run.objects.create(
        owner=user,
        name="to cancel",
        base_model=like.base_model,
        train_dataset=like.train_dataset,
        grader=like.grader,
        status=RunStatus.RUNNING,
        lease_owner="worker-test",
        attempt=1,
        total_steps=10,
    )
    return user, run


def test_the_cancel_notice_is_replaced_by_the_final_state(running_run, daphne, browser, screenshot_dir):
    user, run = running_run
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": session_cookie_for(user), "url": daphne.url}])
    page = context.new_page()
    page.goto(f"{daphne.url}/runs/{run.pk}/")
    page.wait_for_function("document.getElementById('live-badge').textContent === 'live'")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.click("#cancel-run")
    assert page.is_visible(".messages .msg-run-pending")
    page.wait_for_function("document.getElementById('live-badge').textContent === 'live'")

    off_the_loop(
        transition_run,
        run_id=run.pk,
        status=RunStatus.CANCELLED,
        error=run_state.cancelled_message(run.pk),
        lease_owner="worker-test",
    )
    page.wait_for_function("document.getElementById('run-status').textContent.trim() === 'Cancelled'")
    page.wait_for_selector(".messages .msg-run-pending", state="detached")
    assert page.get_attribute("#run-error", "class") == "notice-box"
    assert "nothing to resume" in page.inner_text("#run-error")
    page.locator("#nothing-to-resume").wait_for()
    assert page.locator("#resume-run").count() == 0 and page.is_visible("#clone-run")
    page.screenshot(path=str(screenshot_dir / "ui" / "run-cancelled-live.png"))
    context.close()
