"""In Chromium against the real ASGI app (Daphne): a run that is still training keeps growing on the
comparison's overlaid curves, over its WebSocket, while the finished run stays as it was."""

from __future__ import annotations

import os

import pytest

from tests.foundation.realtime_support import session_cookie_for
from tests.runs_ui.conftest import write_metrics
from tests.runs_ui.test_browser import off_the_loop

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are plain sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


REWARD_TRACES = """() => {
    const cell = [...document.querySelectorAll('#compare-charts .chart-cell')].find((c) => c.dataset.key === 'reward');
    return cell.querySelector('.chart').data.filter((t) => t.name.endsWith(' raw')).map((t) => t.x.length);
}"""


def test_a_running_run_keeps_growing_on_the_overlaid_curves(page, daphne, compared, screenshot_dir):
    a, b = compared["A"], compared["B"]
    b.status = "running"
    b.finished_at = None
    b.save()
    page.context.add_cookies([{"name": "sessionid", "value": session_cookie_for(a.owner), "url": daphne.url}])
    page.goto(f"{daphne.url}/compare/?runs={a.pk},{b.pk}")
    page.wait_for_selector('#compare-charts[data-ready="1"]')
    page.wait_for_selector(f'[data-live-run="{b.pk}"]:not([hidden])', timeout=15000)
    assert page.evaluate(REWARD_TRACES) == [21, 21]

    off_the_loop(write_metrics, b, [21, 22, 23], keys=("reward", "loss"), value=lambda key, step: 5.0)
    page.wait_for_function(f"({REWARD_TRACES})()[1] === 24", timeout=15000)
    assert page.evaluate(REWARD_TRACES) == [21, 24]  # only the running run grew
    last_x = page.evaluate(
        """() => {
            const cell = [...document.querySelectorAll('#compare-charts .chart-cell')].find((c) => c.dataset.key === 'reward');
            const raw = cell.querySelector('.chart').data.filter((t) => t.name.endsWith(' raw'))[1];
            return [raw.x[raw.x.length - 1], raw.y[raw.y.length - 1]];
        }"""
    )
    assert last_x == [23, 5.0]
    page.locator("#compare-charts").screenshot(path=str(screenshot_dir / "compare-live.png"))
