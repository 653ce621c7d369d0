"""The main flow with the keyboard only (Tab, Shift+Tab, Enter, Space, arrows) in Chromium: the
phone menu, an upload, a new run, a rollout and its neighbours, a cancel that asks once. And the
grader page's item dropdown, whose long prompts once made the page 1,500 px wide."""

from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from experiments.models import Dataset, Run, RunStatus
from tests.foundation.realtime_support import session_cookie_for

from .seed import seed_site

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def site():
    return seed_site("keys")


def logged_in_page(browser, daphne, user, viewport):
    context = browser.new_context(viewport=viewport)
    context.add_cookies([{"name": "sessionid", "value": session_cookie_for(user), "url": daphne.url}])
    return context, context.new_page()


def tab_to(page, selector: str, *, limit: int = 80, backwards: bool = False) -> None:
    """Press Tab until `selector` has the focus (fails if it never gets it)."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    raise AssertionError(f"{selector} never got the keyboard focus")


def choose_with_arrows(page, selector: str, label: str) -> None:
    tab_to(page, selector)
    for _ in range(30):
        if page.evaluate(
            "(s) => { const e = document.querySelector(s); return e.options[e.selectedIndex].text; }",
            selector,
        ).startswith(label):
            return
        page.keyboard.press("ArrowDown")
    raise AssertionError(f"no option {label!r} in {selector}")


def test_the_main_flow_works_with_the_keyboard_alone(site, daphne, browser, tmp_path):
    user, pages = site
    # The phone menu opens and closes from the keyboard.
    context, page = logged_in_page(browser, daphne, user, {"width": 390, "height": 844})
    page.goto(daphne.url + "/")
    assert not page.is_visible("#mainnav")
    tab_to(page, "#menu-toggle")
    page.keyboard.press("Enter")
    assert page.is_visible("#mainnav") and page.get_attribute("#menu-toggle", "aria-expanded") == "true"
    tab_to(page, "#mainnav a[href='/runs/']")
    page.keyboard.press("Escape")
    assert not page.is_visible("#mainnav")
    context.close()

    context, page = logged_in_page(browser, daphne, user, {"width": 1280, "height": 800})
    # 1. Upload a dataset.
    upload = tmp_path / "keys.jsonl"
    upload.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "answer": str(i)}) + "\n"
            for i in range(5)
        )
    )
    page.goto(daphne.url + "/datasets/upload/")
    for attempt in range(3):
        tab_to(page, "input[type=file]")
        try:
            with page.expect_file_chooser(timeout=10000) as chooser:
                page.keyboard.press("Space")
            break
        except PlaywrightTimeoutError:
            # Chromium under a loaded machine (the whole suite) once let a Space pass without opening
            # the chooser: press it again; three misses still fail the test.
            if attempt == 2:
                raise
    chooser.value.set_files(str(upload))
    tab_to(page, "input[name=name]")
    page.keyboard.press("Control+A")
    page.keyboard.type("typed with keys")
    tab_to(page, "#upload-button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/datasets/\d+/$"), timeout=30000)
    assert Dataset.objects.get(owner=user, name="typed with keys").item_count == 5

    # 2. Create a run: fields, selects with arrows, a tool ticked with Space, submit with Enter.
    page.goto(daphne.url + "/runs/new/")
    tab_to(page, "#id_name")
    page.keyboard.type("keyboard run")
    assert not page.is_visible("#id_base_model_custom")  # only for "Another model…"
    choose_with_arrows(page, "#id_train_dataset", "typed with keys")
    choose_with_arrows(page, "#id_grader", "answer-contains")
    tab_to(page, "#id_steps")
    page.keyboard.type("3")
    tab_to(page, "#id_tools input[type=checkbox]", backwards=True)
    page.keyboard.press("Space")
    assert page.is_checked("#id_tools input[type=checkbox]")
    tab_to(page, "#run-form button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/runs/\d+/$"), timeout=30000)
    run = Run.objects.get(owner=user, name="keyboard run")
    assert run.config.get("steps") == 3 and run.tools.count() == 1

    # 3. Cancel asks once: Escape-like dismissal keeps the run, accepting cancels it.
    page.once("dialog", lambda dialog: dialog.dismiss())
    tab_to(page, "#cancel-run")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED
    page.once("dialog", lambda dialog: dialog.accept())
    tab_to(page, "#cancel-run")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED

    # 4. Open a rollout from the table, then its neighbour.
    page.goto(daphne.url + pages["rollouts"])
    tab_to(page, "#rollout-table td.trace a")
    first = page.evaluate("document.activeElement.textContent")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert first.rstrip("…") in page.inner_text("#trace-id")
    tab_to(page, "#next-rollout")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.is_visible("#previous-rollout") and page.is_visible("#tools-offered")
    context.close()


def test_the_grader_item_dropdown_keeps_the_page_within_the_window(site, daphne, browser):
    user, pages = site
    context, page = logged_in_page(browser, daphne, user, {"width": 1280, "height": 800})
    page.goto(daphne.url + pages["grader-edit"])
    page.select_option("select[name=dataset]", label="capitals (24)")
    page.wait_for_function("document.querySelector('select[name=dataset_item]').options.length > 2")
    sizes = page.evaluate(
        "({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth})"
    )
    assert sizes["scroll"] <= sizes["client"], sizes
    context.close()
