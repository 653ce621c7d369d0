"""In Chromium: pick three runs on the runs list, compare them, choose the baseline, toggle
"differences only", switch the x axis, zoom (the server is asked again), filter regressed items and
open one item's rollouts side by side. Screenshots go to docs/screenshots/compare-*.png."""

from __future__ import annotations

import os

import pytest

from experiments.selectors.compare import RUN_COLORS
from tests.foundation.realtime_support import session_cookie_for

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are plain sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def chart_xs(page, key: str) -> list:
    """The x values of each run's (raw) trace in the chart of `key`."""
    return page.evaluate(
        """(key) => {
            const cell = [...document.querySelectorAll('#compare-charts .chart-cell')].find((c) => c.dataset.key === key);
            const el = cell.querySelector('.chart');
            return el.data.filter((t) => t.name.endsWith(' raw')).map((t) => t.x);
        }""",
        key,
    )


def test_compare_three_runs_from_the_runs_list(page, live_server, compared, screenshot_dir):
    a, b, c = compared["A"], compared["B"], compared["C"]
    page.context.add_cookies(
        [{"name": "sessionid", "value": session_cookie_for(a.owner), "url": live_server.url}]
    )
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # Without runs in the URL the comparison offers the runs to pick.
    page.goto(f"{live_server.url}/compare/")
    assert page.locator('#compare-form button[type="submit"]').inner_text() == "Compare selected"
    page.screenshot(path=str(screenshot_dir / "compare-picker.png"))

    # Select three runs on the runs list.
    page.goto(f"{live_server.url}/runs/")
    assert page.is_disabled("#compare-selected")
    for run in (a, b, c):
        page.check(f'input[name="run"][value="{run.pk}"]')
    assert page.inner_text("#compare-selected") == "Compare selected (3)"
    page.screenshot(path=str(screenshot_dir / "compare-runs-list.png"))
    page.click("#compare-selected")
    page.wait_for_url("**/compare/?runs=*")
    listed = [int(x) for x in page.url.split("runs=")[1].split("&")[0].replace("%2C", ",").split(",")]
    assert sorted(listed) == sorted([a.pk, b.pk, c.pk])

    # Choose run A as the baseline: a shareable URL with baseline=A.
    page.select_option("#baseline-select", str(a.pk))
    page.wait_for_url(f"**baseline={a.pk}*")
    page.wait_for_selector('#compare-charts[data-ready="1"]')
    page.wait_for_function(
        "() => [...document.querySelectorAll('#compare-charts .chart')].every((el) => Number(el.dataset.points) > 0)"
    )
    # Stable colours: each run's chip, its curves and its summary column share its colour.
    colors = page.evaluate(
        "() => [...document.querySelectorAll('.run-chip')].map((chip) => chip.style.getPropertyValue('--run-color').trim())"
    )
    assert colors == list(RUN_COLORS[:3])
    reward_colors = page.evaluate(
        """() => {
            const el = [...document.querySelectorAll('#compare-charts .chart-cell')].find((c) => c.dataset.key === 'reward').querySelector('.chart');
            return el.data.filter((t) => t.showlegend).map((t) => t.line.color);
        }"""
    )
    assert reward_colors == list(RUN_COLORS[:3])
    # The comparison's charts smooth with the run page's one implementation.
    assert page.evaluate("() => RftSmoothing.smoothSeries([1, 2, 3], 0.5)") == pytest.approx(
        [1, 5 / 3, 2.125 / 0.875]
    )
    page.screenshot(path=str(screenshot_dir / "compare-overview.png"), full_page=True)

    # Differences only (on by default), then every field.
    visible_rows = "() => [...document.querySelectorAll('#config-diff tbody tr[data-field]')].filter((tr) => tr.offsetParent !== null).map((tr) => tr.dataset.field)"
    assert sorted(page.evaluate(visible_rows)) == ["group_size", "learning_rate", "tool_call_penalty"]
    page.uncheck("#differences-only")
    shown = page.evaluate(visible_rows)
    assert len(shown) > 40 and "lora_r" in shown and "grader" in shown
    assert "config=all" in page.url
    page.locator("#config-diff").screenshot(path=str(screenshot_dir / "compare-config-all.png"))
    page.check("#differences-only")
    assert len(page.evaluate(visible_rows)) == 3

    # Switch the x axis to samples seen: step × rollouts per step (4 × 8 = 32; C has groups of 16).
    page.select_option("#x-axis", "samples")
    page.wait_for_function("document.getElementById('compare-charts').dataset.xAxis === 'samples'")
    by_run = dict(zip(listed, chart_xs(page, "reward"), strict=True))
    assert by_run[a.pk][-1] == 20 * 32 and by_run[c.pk][-1] == 20 * 64
    assert "x=samples" in page.url
    page.locator("#compare-charts").screenshot(path=str(screenshot_dir / "compare-curves-samples.png"))

    # The optional min/max band: two filled traces per run under each chart's lines.
    count_traces = "() => document.querySelector('#compare-charts .chart').data.length"
    plain = page.evaluate(count_traces)
    page.check("#minmax-band")
    assert page.evaluate(count_traces) == plain + 2 * 3
    assert "band=1" in page.url
    page.uncheck("#minmax-band")

    # Zoom into a range: the chart asks the server for those steps only.
    with page.expect_response(lambda r: "/api/v1/compare/series/" in r.url and "step_min=" in r.url) as zoom:
        page.evaluate(
            """() => {
                const el = [...document.querySelectorAll('#compare-charts .chart-cell')].find((c) => c.dataset.key === 'loss').querySelector('.chart');
                Plotly.relayout(el, {'xaxis.range': [5 * 32, 10 * 32]});
            }"""
        )
    assert zoom.value.ok
    page.wait_for_function(
        "() => [...document.querySelectorAll('#compare-charts .chart-cell')].find((c) => c.dataset.key === 'loss').querySelector('.chart').dataset.range !== ''"
    )

    # Filter regressed items (C against the baseline A: item 2 fell from 1.0 to 0.0).
    with page.expect_response(lambda r: "/compare/items/" in r.url and f"against={c.pk}" in r.url):
        page.select_option("#items-against", str(c.pk))
    page.wait_for_function(
        f"document.querySelector('[data-items-query]').dataset.itemsQuery.includes('against={c.pk}')"
    )
    page.click('.segmented a[data-status="regressed"]')
    page.wait_for_function("document.querySelector('#items-table').dataset.status === 'regressed'")
    items = page.eval_on_selector_all(
        "#items-table tr.item-row", "rows => rows.map((r) => Number(r.dataset.item))"
    )
    assert items == [2]
    assert "status=regressed" in page.url
    page.locator("#items-card").screenshot(path=str(screenshot_dir / "compare-items-regressed.png"))

    # Open the item: the base model's and each run's rollouts side by side, with their tool calls.
    page.click('#items-table tr.item-row[data-item="2"]')
    page.wait_for_selector("#item-detail-2")
    labels = page.eval_on_selector_all(
        "#item-detail .column-head strong", "heads => heads.map((h) => h.textContent)"
    )
    assert labels[0] == "Base model (step 0)" and sorted(labels[1:]) == ["run-A", "run-B", "run-C"]
    assert page.locator("#item-detail .tool-call").count() > 0
    assert "answer 2 from run-C at 20" in page.inner_text("#item-detail")
    page.locator("#items-card").screenshot(path=str(screenshot_dir / "compare-item-side-by-side.png"))
    assert errors == []
