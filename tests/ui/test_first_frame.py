"""The charts in view are on screen before Plotly is (static/js/first_frame.js), and Plotly's drawing
replaces them.

In Chromium, Plotly's request is held back while each chart page loads: every chart in the window
must show its data as a still SVG (the same points the series API answers), with no console error;
then Plotly is let through and must draw every chart, leaving no first frame behind. If Plotly
never comes, the charts stay as still frames instead of breaking the page."""

from __future__ import annotations

import os

import pytest

from tests.foundation.realtime_support import session_cookie_for

from .seed import seed_site

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PLOTLY = "**/vendor/plotly-basic.min.js"
IN_VIEW = """(selector) => [...document.querySelectorAll('.chart')]
  .filter(box => { const r = box.getBoundingClientRect(); return box.offsetParent && r.bottom > 0 && r.top < innerHeight; })
  .map(box => ({id: box.id, drawn: !!box.querySelector(selector)}))"""
# Some chart boxes are made by the page's script (the comparison's): none in view yet is not "all drawn".
ALL_DRAWN = f"""(selector) => {{ const charts = ({IN_VIEW})(selector);
  return charts.length > 0 && charts.every(c => c.drawn); }}"""


def _open_with_plotly_held(browser, daphne, user, path):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": session_cookie_for(user), "url": daphne.url}])
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    held = []
    page.route(PLOTLY, lambda route: held.append(route))
    page.goto(daphne.url + path, wait_until="commit")  # DOMContentLoaded waits for Plotly (deferred)
    return context, page, errors, held


@pytest.mark.parametrize("kind", ["run", "readiness", "compare"])
def test_charts_in_view_show_their_data_before_plotly_and_plotly_replaces_them(
    kind, daphne, browser, screenshot_dir
):
    user, paths = seed_site()
    context, page, errors, held = _open_with_plotly_held(browser, daphne, user, paths[kind])
    page.wait_for_function(ALL_DRAWN, arg="svg.first-frame", timeout=15000)
    assert held, "Plotly was requested"
    charts = page.evaluate(IN_VIEW, "svg.first-frame")
    assert len(charts) >= 3, charts
    assert page.evaluate("typeof window.Plotly") == "undefined"
    # Real data, not an empty frame: lines with points, or bars.
    marks = page.evaluate(
        """() => [...document.querySelectorAll('svg.first-frame')].map(svg =>
             [...svg.querySelectorAll('polyline')].reduce((n, l) => n + l.getAttribute('points').split(' ').length, 0)
             + svg.querySelectorAll('rect').length - 1)"""
    )
    assert sum(marks) > 0 and max(marks) >= 4, marks
    page.screenshot(path=str(screenshot_dir / f"first-frame-{kind}.png"))

    for route in held:
        route.continue_()
    page.unroute(PLOTLY)
    page.wait_for_function(ALL_DRAWN, arg=".main-svg", timeout=30000)
    assert page.evaluate("document.querySelectorAll('svg.first-frame').length") == 0
    assert errors == []
    context.close()


def test_the_run_page_first_frame_draws_the_points_the_api_answers(daphne, browser):
    user, paths = seed_site()
    context, page, errors, held = _open_with_plotly_held(browser, daphne, user, paths["run"])
    page.wait_for_function("document.querySelector('#chart-eval svg.first-frame')", timeout=15000)
    run_id = paths["run"].strip("/").split("/")[-1]
    series = page.evaluate(
        """async (run) => (await (await fetch(`/api/v1/runs/${run}/series/?x=step&keys=eval/reward`,
             {headers: {Accept: 'application/json'}})).json()).series['eval/reward']""",
        run_id,
    )
    line = page.evaluate(
        "[...document.querySelectorAll('#chart-eval svg.first-frame polyline')].map(l => l.getAttribute('points').split(' ').length)"
    )
    assert len(series["y"]) >= 2
    assert len(series["y"]) in line, (series, line)
    context.close()


def test_without_plotly_the_charts_stay_as_still_frames(daphne, browser):
    user, paths = seed_site()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": session_cookie_for(user), "url": daphne.url}])
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.route(PLOTLY, lambda route: route.abort())
    page.goto(daphne.url + paths["run"], wait_until="load")
    page.wait_for_function(ALL_DRAWN, arg="svg.first-frame", timeout=15000)
    # The page's later requests too (the tool-call histogram): their answers must not reach Plotly.
    page.wait_for_load_state("networkidle")
    assert page_errors == []
    context.close()
