"""In Chromium against the real ASGI app (Daphne): the run page's charts load their history, gain
points live over the WebSocket without losing the user's zoom, and fill the gap after the server
was away; the rollout table opens a rollout with its tool calls, and a group side by side."""

from __future__ import annotations

import os
import threading

import pytest

from experiments.models import Trajectory
from experiments.services.runs import log_run
from tests.foundation.realtime_support import session_cookie_for

from .conftest import TrajectoryFactory, write_metrics

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are plain sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def off_the_loop(function, *args, **kwargs):
    """Run `function` in a plain thread, as a worker would write: Playwright's sync API keeps an event
    loop running in the test's thread, where publishing to the channel layer (async_to_sync) refuses."""
    from django.db import connection

    errors = []

    def target():
        try:
            function(*args, **kwargs)
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    if errors:
        raise errors[0]


def logged_in(page, server, user):
    page.context.add_cookies([{"name": "sessionid", "value": session_cookie_for(user), "url": server.url}])
    return page


def reward_points(page) -> int:
    return int(page.get_attribute("#chart-reward", "data-points") or 0)


def seed_rollouts(run, steps):
    for step in steps:
        for group in range(2):
            for sample, reward in enumerate([1.0, 0.0, 0.5, 0.75]):
                calls = max(0, 4 - step // 10 - sample % 2) if step < 25 else 1 + sample % 2
                TrajectoryFactory(
                    run=run,
                    step=step,
                    group_index=group,
                    item_index=group + 2 * step,
                    sample_index=sample,
                    reward=reward,
                    advantage=round((reward - 0.5625) / 0.43, 3),
                    tool_calls=calls,
                    sub_scores={"exact": float(reward == 1.0), "f1": reward},
                )


def curve(key, step):
    import math

    base = 0.25 + 0.5 * (1 - math.exp(-step / 15))
    return {
        "reward": base + 0.03 * math.sin(step),
        "reward_std": 0.2 * math.exp(-step / 40),
        "eval/reward": base - 0.05,
        "eval/pass@1": base - 0.05,
        "eval/pass@4": min(1.0, base + 0.15),
        "tools/calls_mean": 3.5 * math.exp(-step / 20) + 1,
        "tools/calls_p95": 8 * math.exp(-step / 15) + 2,
        "completions/mean_length": 180 - step,
        "kl": 0.002 * step,
        "loss": 0.1 * math.cos(step / 3),
        "entropy": 1.2 - 0.01 * step,
        "timing/rollout_s": 1.4,
        "timing/grading_s": 0.3,
        "timing/update_s": 0.8,
        "step_time": 2.5,
        "grader_errors/excluded": float(step % 7 == 0),
        "grader_errors/timeout": float(step % 11 == 0),
    }[key]


METRIC_KEYS = (
    "reward reward_std tools/calls_mean tools/calls_p95 completions/mean_length kl loss entropy "
    "timing/rollout_s timing/grading_s timing/update_s step_time grader_errors/excluded"
).split()
EVAL_KEYS = ("eval/reward", "eval/pass@1", "eval/pass@4")


def test_run_page_charts_grow_live_keep_zoom_and_fill_gaps(page, daphne, owner, run, screenshot_dir):
    run.status = "running"
    run.save()

    def history():
        write_metrics(run, range(1, 31), keys=METRIC_KEYS, value=curve)
        for step in (0, 10, 20, 30):
            write_metrics(run, [step], keys=EVAL_KEYS, value=curve)
        log_run(run_id=run.pk, level="info", message="step 30: reward 0.61")

    off_the_loop(history)
    seed_rollouts(run, [1, 30])

    logged_in(page, daphne, owner).goto(f"{daphne.url}/runs/{run.pk}/")
    page.wait_for_function("document.getElementById('live-badge').textContent === 'live'", timeout=15000)
    page.wait_for_function(
        "Number(document.getElementById('chart-reward').dataset.points) === 30", timeout=15000
    )
    assert (
        int(page.get_attribute("#chart-eval", "data-points")) == 12
    )  # eval reward, pass@1, pass@4 at 4 steps

    # The user zooms in; new points must not reset the view.
    page.evaluate("Plotly.relayout('chart-reward', {'xaxis.range': [5, 15]})")
    off_the_loop(write_metrics, run, range(31, 41), keys=METRIC_KEYS, value=curve)
    off_the_loop(write_metrics, run, [33], keys=("grader_errors/timeout",), value=curve)  # a key new mid-run
    page.wait_for_function(
        "Number(document.getElementById('chart-reward').dataset.points) === 40", timeout=15000
    )
    assert page.evaluate("document.getElementById('chart-reward').layout.xaxis.range") == [5, 15]
    assert page.inner_text("#progress-step") == "40"
    # A chart scrolled out of view keeps its new points buffered (it does not spend the page's time
    # redrawing), and draws them once the user scrolls to it.
    # (the viewport is 900 px high; charts within 200 px below it count as in view)
    assert page.evaluate("document.getElementById('chart-grader-errors').getBoundingClientRect().top") > 1100
    assert int(page.get_attribute("#chart-grader-errors", "data-points")) == 30
    page.locator("#chart-grader-errors").scroll_into_view_if_needed()
    # 10 more "excluded" points and the first "timeout" one (step 33)
    page.wait_for_function(
        "Number(document.getElementById('chart-grader-errors').dataset.points) === 41", timeout=15000
    )
    assert page.evaluate("document.getElementById('chart-grader-errors').data[0].x.slice(-3)") == [38, 39, 40]
    assert page.evaluate("document.getElementById('chart-grader-errors').data[1].x") == [33]
    page.evaluate("window.scrollTo(0, 0)")
    assert "ETA" in page.inner_text("#progress-eta")
    assert page.evaluate("document.getElementById('chart-grader-errors').data.map(t => t.name)") == [
        "excluded",
        "timeout",
    ]

    # The server goes away; what is written meanwhile arrives after the reconnect (after=<seq>).
    daphne.stop()
    page.wait_for_function("document.getElementById('live-badge').textContent === 'stale'", timeout=15000)
    off_the_loop(write_metrics, run, range(41, 46), keys=METRIC_KEYS, value=curve)
    daphne.start()
    page.wait_for_function("document.getElementById('live-badge').textContent === 'live'", timeout=30000)
    page.wait_for_function(
        "Number(document.getElementById('chart-reward').dataset.points) === 45", timeout=15000
    )
    steps = page.evaluate("document.getElementById('chart-reward').data[2].x")
    assert steps == list(range(1, 46))  # in order, no gap, no duplicate

    # Another x axis: the history reloads in samples seen (2 prompts × 4 rollouts per step).
    page.select_option("#x-axis", "samples")
    page.wait_for_function("document.getElementById('chart-reward').data[2].x[0] === 8", timeout=15000)
    page.select_option("#x-axis", "step")
    page.wait_for_function("document.getElementById('chart-reward').data[2].x[0] === 1", timeout=15000)
    # The key that first appeared live is part of the reloaded history too.
    assert page.evaluate("document.getElementById('chart-grader-errors').data.map(t => t.name)") == [
        "excluded",
        "timeout",
    ]
    # EMA smoothing (debiased: the first point stays where it is), then back to the stored points.
    raw = page.evaluate("document.getElementById('chart-reward').data[2].y")
    page.fill("#smoothing", "0.9")
    page.dispatch_event("#smoothing", "input")
    smoothed = page.evaluate("document.getElementById('chart-reward').data[2].y")
    assert smoothed[0] == pytest.approx(raw[0])
    assert smoothed[-1] != pytest.approx(raw[-1])
    assert max(smoothed) - min(smoothed) < max(raw) - min(raw)
    page.fill("#smoothing", "0")
    page.dispatch_event("#smoothing", "input")
    assert page.evaluate("document.getElementById('chart-reward').data[2].y") == pytest.approx(raw)
    page.evaluate("Plotly.relayout('chart-reward', {'xaxis.autorange': true})")
    page.locator("#smoothing").blur()
    page.wait_for_function(
        "document.getElementById('tool-call-histogram').dataset.steps?.includes('baseline')", timeout=15000
    )
    page.wait_for_timeout(400)
    page.screenshot(path=str(screenshot_dir / "run-page.png"), full_page=True)


def test_rollout_browser_opens_a_rollout_and_its_group(page, daphne, owner, run, screenshot_dir):
    seed_rollouts(run, [1, 2])
    flagged = Trajectory.objects.filter(run=run, step=2).first()
    flagged.flags = [{"rule": "no_tool_calls", "detail": "high reward without a tool call"}]
    flagged.save()
    rich = Trajectory.objects.filter(run=run, step=2, sample_index=0, group_index=1).get()
    rich.tool_calls = 2
    rich.tool_call_names = ["lookup", "grep"]
    rich.tool_errors = 1
    rich.messages = [
        {"role": "system", "content": "You answer questions about the repository. Call tools when needed."},
        {"role": "user", "content": "Which files define the grader registry?"},
        {
            "role": "assistant",
            "content": "I will search for the registry.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "grep", "arguments": '{"pattern": "GRADER_TYPES", "path": "src"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"key": "registry"}'},
                },
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": "src/graders/__init__.py:12: GRADER_TYPES = {...}",
            "latency_ms": 38.2,
        },
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": "The tool did not answer within 30 s.",
            "latency_ms": 30000.0,
            "error_type": "timeout",
            "error": "timeout after 3 tries",
        },
        {"role": "assistant", "content": "src/graders/__init__.py"},
    ]
    rich.final_answer = "src/graders/__init__.py"
    rich.save()

    logged_in(page, daphne, owner).goto(f"{daphne.url}/runs/{run.pk}/rollouts/")
    assert page.locator("#rollout-table tbody tr").count() == 8  # the latest step
    page.screenshot(path=str(screenshot_dir / "rollout-table.png"), full_page=True)
    page.fill("input[name=tool]", "grep")
    page.press("input[name=tool]", "Enter")
    page.wait_for_url("**tool=grep**")
    assert page.locator("#rollout-table tbody tr").count() == 1
    page.click(f"a[href$='/rollouts/{rich.trace_id}/']")
    page.wait_for_selector("#rollout-chat")
    assert page.locator(".tool-call").count() == 2
    assert "GRADER_TYPES" in page.inner_text(".tool-call[data-tool-call=grep]")
    assert "timeout" in page.inner_text(".tool-call[data-tool-call=lookup]")
    page.screenshot(path=str(screenshot_dir / "rollout-view.png"), full_page=True)

    page.click("text=Group 1 side by side")
    page.wait_for_selector("#group-columns")
    assert page.locator(".group-column").count() == 4
    page.click(".group-column:first-child summary")
    page.screenshot(path=str(screenshot_dir / "rollout-group.png"), full_page=True)


def test_a_two_device_run_page_shows_ranks_and_their_chart(page, daphne, owner, run, screenshot_dir):
    from .test_pages import RANK_KEYS, rank_value

    run.config = {**run.config, "devices": 2}
    run.status = "running"
    run.save()
    off_the_loop(write_metrics, run, range(1, 21), keys=RANK_KEYS, value=rank_value)
    logged_in(page, daphne, owner).goto(f"{daphne.url}/runs/{run.pk}/")
    page.wait_for_function(
        "Number(document.getElementById('chart-ranks').dataset.points) === 20 * 5", timeout=15000
    )
    assert page.locator("dl.facts").first.inner_text().count("data parallel") == 1
    assert page.locator(".ranks-table tbody tr").count() == 2
    page.locator("#chart-ranks").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_dir / "run-page-two-devices-chart.png"))
    page.locator(".ranks-table").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_dir / "run-page-two-devices-ranks.png"))
