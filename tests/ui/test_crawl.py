"""Every page kind in Chromium at phone (390x844) and desktop (1280x800) width, served by Daphne:
no page wider than the window, no console error, no 4xx/5xx request, no serious or critical axe-core
violation. A screenshot of each page at each width is kept under docs/screenshots/ui/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.foundation.realtime_support import session_cookie_for

from .seed import seed_site

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WIDTHS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
BLOCKING_IMPACTS = {"serious", "critical"}


@pytest.fixture
def site():
    return seed_site()


def _settle(page) -> None:
    """Wait until the page's own requests are done and the charts have drawn."""
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(150)


def _overflow(page) -> dict:
    return page.evaluate(
        """() => {
          const root = document.documentElement;
          const wide = [...document.querySelectorAll('body *')]
            .filter(el => el.getBoundingClientRect().right > root.clientWidth + 1)
            .filter(el => !el.closest('.table-scroll, .scroll-x, pre, .js-plotly-plot'))
            .slice(0, 5).map(el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                              (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : ''));
          return {scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, widest: wide};
        }"""
    )


def test_every_page_fits_and_is_clean_at_phone_and_desktop_width(site, daphne, browser, screenshot_dir):
    user, pages = site
    cookie = session_cookie_for(user)
    axe = Axe()
    out = screenshot_dir / "ui"
    out.mkdir(exist_ok=True)
    problems: list[str] = []
    for width_name, viewport in WIDTHS.items():
        context = browser.new_context(viewport=viewport)
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": daphne.url}])
        page = context.new_page()
        console_errors: list[str] = []
        failed: list[str] = []
        page.on("console", lambda msg, sink=console_errors: msg.type == "error" and sink.append(msg.text))
        page.on("pageerror", lambda error, sink=console_errors: sink.append(str(error)))
        page.on(
            "response",
            lambda response, sink=failed: (
                response.status >= 400 and sink.append(f"{response.status} {response.url}")
            ),
        )
        for name, path in pages.items():
            console_errors.clear()
            failed.clear()
            response = page.goto(daphne.url + path)
            assert response is not None and response.status == 200, f"{name}: {response and response.status}"
            _settle(page)
            where = f"{name} @ {width_name}"
            size = _overflow(page)
            if size["scrollWidth"] > size["clientWidth"]:
                problems.append(
                    f"{where}: {size['scrollWidth']} px wide in {size['clientWidth']} px: {size['widest']}"
                )
            if console_errors:
                problems.append(f"{where}: console errors {console_errors}")
            if failed:
                problems.append(f"{where}: failed requests {failed}")
            results = axe.run(page)
            for violation in results.response["violations"]:
                if violation["impact"] in BLOCKING_IMPACTS:
                    targets = [node["target"] for node in violation["nodes"][:3]]
                    problems.append(f"{where}: axe {violation['id']} ({violation['impact']}) at {targets}")
            page.screenshot(path=str(out / f"{name}-{width_name}.png"), full_page=True)
        context.close()
    if os.environ.get("UI_CRAWL_REPORT"):  # the whole list, for working through it
        Path(os.environ["UI_CRAWL_REPORT"]).write_text("\n".join(problems))
    assert not problems, "\n".join(problems)
