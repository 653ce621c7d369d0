"""The quick demo in Chromium, on a fresh database: seed as `up` does, press "Start quick demo" on the
dashboard, and within two minutes the reward chart shows the model learning to call its tool.

Everything is the real app path: Daphne (HTTP + WebSocket), a Celery `train` worker process, the
bundled demo tool server (its `peek` tool over HTTP), the seeded exact-colour grader, the live page.
Only the warm-started model is built beforehand (as `up` does in the background; cached on disk).
"""

from __future__ import annotations

import os
import time

import pytest

from experiments.demo_servers import DemoServer
from experiments.models import ReadinessReport, Run, Trajectory
from experiments.services import demo
from tests.factories import UserFactory

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's
DEADLINE_S = 120


@pytest.fixture(scope="session")
def quick_demo_model():
    from experiments.services.training import toy_model_dir

    return toy_model_dir()


def _series(page, chart: str, trace: str):
    return page.evaluate(
        "([chart, name]) => { const c = document.getElementById(chart);"
        " const t = (c.data || []).find(t => t.name === name); return t ? t.y.slice() : []; }",
        [f"chart-{chart}", trace],
    )


def _mean(values):
    return sum(values) / len(values)


def test_quick_demo_learns_within_two_minutes_in_the_browser(
    page, daphne, celery_worker_factory, quick_demo_model, screenshot_dir
):
    worker = celery_worker_factory(queues="train", name="quick")
    with DemoServer() as tools:
        owner = UserFactory(username="newcomer")
        demo.seed_demo(owner=owner, tool_base_url=tools.url)
        try:
            page.goto(f"{daphne.url}/accounts/login/")
            page.fill("input[name=username]", owner.username)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/accounts/login/" not in url)
            page.screenshot(path=str(screenshot_dir / "quick-demo-dashboard.png"), full_page=True)
            load_at_start = os.getloadavg()
            pressed = time.monotonic()
            with page.expect_navigation():
                page.click("#start-quick-demo")
            assert "/runs/" in page.url
            note = page.inner_text("#model-note")
            assert "tiny" in note and "peek" in note  # what the model is and why it learns fast

            learned_at = None
            while time.monotonic() - pressed < DEADLINE_S:
                rewards = _series(page, "reward", "reward")
                calls = _series(page, "tool-calls", "calls_mean")
                if len(rewards) >= 10 and len(calls) >= 10:
                    first, last = _mean(rewards[:5]), _mean(rewards[-5:])
                    if last >= 0.8 and last > first and _mean(calls[-5:]) > _mean(calls[:5]):
                        learned_at = time.monotonic() - pressed
                        break
                time.sleep(1.0)
            rewards = _series(page, "reward", "reward")
            calls = _series(page, "tool-calls", "calls_mean")
            page.screenshot(path=str(screenshot_dir / "quick-demo-run.png"), full_page=True)
            print(
                f"\nquick demo: {len(rewards)} steps in {time.monotonic() - pressed:.1f} s after the click; "
                f"reward first 5 {_mean(rewards[:5]) if rewards else float('nan'):.3f}, "
                f"last 5 {_mean(rewards[-5:]) if rewards else float('nan'):.3f}; tool calls per rollout "
                f"{_mean(calls[:5]) if calls else float('nan'):.2f} -> "
                f"{_mean(calls[-5:]) if calls else float('nan'):.2f}; "
                f"learned at {learned_at if learned_at is None else round(learned_at, 1)} s; "
                f"load average at the click {load_at_start}, now {os.getloadavg()}"
            )
            assert learned_at is not None, "the reward chart did not show learning within two minutes"

            # The readiness report (from the step-0 eval) and the tool-call histogram show something.
            run = Run.objects.get(owner=owner)
            assert ReadinessReport.objects.filter(run=run).exists()
            page.wait_for_function(
                "document.querySelectorAll('#tool-call-histogram .trace, #tool-call-histogram .bars').length"
                " > 0 || (document.getElementById('tool-call-histogram').data || []).length > 0",
                timeout=20000,
            )
            assert Trajectory.objects.filter(run=run, tool_call_names__contains=["peek"]).exists()
            page.locator("#tool-call-histogram").scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot_dir / "quick-demo-histogram.png"), full_page=True)
        except Exception:
            print(worker.log()[-8000:])
            raise
