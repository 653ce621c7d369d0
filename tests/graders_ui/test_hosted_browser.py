"""In Debian's Chromium: paste the hosted docs' label_model JSON with no judge configured and see it
saved as needing one; import a job's tool list on the Tools page; see the python grader form list
the sandbox's packages. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import json
import os
import re

import pytest

from experiments.models import Grader, Tool
from tests.factories import UserFactory
from tests.graders_ui.test_hosted_graders import LABEL_MODEL, SCORE_MODEL

pytestmark = [pytest.mark.browser, pytest.mark.slow]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def login(page, live_server):
    UserFactory(username="hosted-user")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "hosted-user")
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def test_pasted_judge_graders_without_a_judge_and_a_tool_list_import(
    page, live_server, transactional_db, settings, screenshot_dir
):
    settings.RFT_JUDGE_BASE_URL = None
    login(page, live_server)

    page.goto(f"{live_server.url}/graders/new/?mode=json")
    page.locator("textarea[name=spec]").fill(json.dumps(LABEL_MODEL, indent=2))
    page.get_by_role("button", name="Create grader").click()
    page.wait_for_url(re.compile(r".*/graders/\d+/$"))
    banner = page.locator("#grader-needs")
    banner.wait_for()
    assert "needs a judge endpoint" in banner.inner_text()
    page.screenshot(path=str(screenshot_dir / "grader-needs-judge.png"), full_page=True)
    assert Grader.objects.get(name="First label grader").spec == LABEL_MODEL

    page.goto(f"{live_server.url}/graders/new/?mode=json")
    page.locator("textarea[name=spec]").fill(json.dumps(SCORE_MODEL, indent=2))
    page.get_by_role("button", name="Create grader").click()
    page.wait_for_url(re.compile(r".*/graders/\d+/$"))
    page.goto(f"{live_server.url}/graders/")
    assert page.locator("text=needs a judge endpoint").count() == 2
    page.screenshot(path=str(screenshot_dir / "grader-list-needs.png"), full_page=True)

    page.goto(f"{live_server.url}/graders/new/")
    page.locator("label", has_text="Python").first.click()
    help_text = page.locator("text=Importable in the sandbox").first
    help_text.wait_for()
    assert "scipy" in help_text.inner_text()
    page.screenshot(path=str(screenshot_dir / "grader-python-packages.png"), full_page=True)

    page.goto(f"{live_server.url}/tools/")
    page.locator("#tool-list-import summary").click()
    tools = [
        {
            "name": "grep",
            "server_url": "https://tools.example.com/grep",
            "headers": {"Authorization": "Bearer x"},
        },
        {"name": "read_file", "server_url": "https://tools.example.com/read"},
    ]
    page.locator("#tool-list-text").fill(json.dumps(tools, indent=2))
    page.get_by_role("button", name="Import tools").click()
    page.locator("text=Imported 2 tools: grep, read_file.").wait_for()
    page.screenshot(path=str(screenshot_dir / "tools-import-list.png"), full_page=True)
    assert sorted(Tool.objects.values_list("name", flat=True)) == ["grep", "read_file"]

    page.locator("#tool-list-import summary").click()
    page.locator("#tool-list-text").fill('[{"name": "grep"}]')
    page.get_by_role("button", name="Import tools").click()
    page.locator("#tool-list-errors").wait_for()
    assert "server_url" in page.locator("#tool-list-errors").inner_text()
    page.screenshot(path=str(screenshot_dir / "tools-import-list-errors.png"), full_page=True)


def test_run_page_shows_a_failed_merged_build(page, live_server, transactional_db, screenshot_dir):
    from experiments.services import artifacts
    from experiments.services.training import run_output_dir
    from tests.factories import RunFactory

    login(page, live_server)
    from django.contrib.auth import get_user_model

    run = RunFactory(owner=get_user_model().objects.get(username="hosted-user"), status="succeeded")
    adapter = run_output_dir(run.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    artifacts._write_merged_status(run.pk, "failed", "OSError: /models/base is not a model directory")
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.locator("#merged-failed").wait_for()
    assert "not a model directory" in page.locator("#merged-failed").inner_text()
    page.locator("#merged-failed").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_dir / "run-merged-failed.png"))
