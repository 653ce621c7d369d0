"""In Debian's Chromium: create a tool with the form, try it against the demo tool server (started as
`python -m experiments.demo_servers`) and see the output; create a grader by pasting grader JSON and
run it. Screenshots go to docs/screenshots/."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.models import Grader, Tool
from tests.factories import DatasetFactory, DatasetItemFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Playwright's sync API keeps an event loop running in this thread; the ORM calls made by the test
# and the live server's set-up are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
HEADER_VALUE = "Bearer BROWSER-MARKER-9d41c7e2"


@pytest.fixture
def demo_process():
    """The demo tool/grader server as the `up` command runs it: its own process on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.demo_servers", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the demo server did not start") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def login(page, live_server):
    UserFactory(username="browser-user")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "browser-user")
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def test_tool_form_try_it_then_grader_from_pasted_json_and_run(
    page, live_server, transactional_db, demo_process, screenshot_dir
):
    login(page, live_server)

    # --- a tool, with the form --------------------------------------------------------------------------------
    page.goto(f"{live_server.url}/tools/new/")
    page.fill("input[name=name]", "calculator")
    page.fill("input[name=url]", f"{demo_process}/tools/calculator")
    page.fill("textarea[name=description]", "Evaluates an arithmetic expression and returns the number.")
    parameters = page.locator("textarea[name=parameters]")
    # A broken schema: the live check under the editor says what is wrong, where.
    parameters.fill(
        '{"type": "object", "properties": {"expression": {"type": "text"}}, "required": ["expression"]}'
    )
    page.locator(".schema-check").get_by_text("'text' is not a JSON Schema type").wait_for()
    page.locator(".json-field", has=parameters).get_by_role("button", name="Format").click()
    page.locator("input[name=header_name]").first.fill("Authorization")
    page.locator("input[name=header_value]").first.fill(HEADER_VALUE)
    page.screenshot(path=str(screenshot_dir / "tools-create.png"), full_page=True)
    with page.expect_response(lambda response: response.url.endswith("/tools/new/")):
        page.get_by_role("button", name="Create tool").click()
    # The server refuses it, in place; the header value is not sent back, so it asks for it again.
    page.locator("input[name=header_value][placeholder='re-enter the value']").wait_for()
    page.locator(".schema-check .errorlist").get_by_text("is not a JSON Schema type").wait_for()
    assert not Tool.objects.exists()

    parameters.fill(
        '{"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. 2 * (3 + 4)"}}, "required": ["expression"]}'
    )
    page.locator(".schema-check").get_by_text("valid JSON Schema").wait_for()
    page.locator("input[name=header_value]").first.fill(HEADER_VALUE)
    page.get_by_role("button", name="Create tool").click()
    page.wait_for_url(re.compile(r".*/tools/\d+/$"))
    tool = Tool.objects.get(name="calculator")
    assert tool.headers == {"Authorization": HEADER_VALUE}

    # --- "Try it" against the demo tool server -------------------------------------------------------------------
    page.locator("#tool-try textarea[name=arguments]").fill('{"expression": "3 * 4.99 + 2 * 5.49"}')
    page.locator("#tool-try textarea[name=item]").fill(
        '{"messages": [{"role": "user", "content": "Total for 3 blue and 2 red widgets?"}], "answer": "25.95"}'
    )
    page.get_by_role("button", name="Send").click()
    output = page.locator("[data-testid=try-output]")
    output.wait_for()
    assert output.inner_text() == "25.95"
    assert page.locator("[data-testid=try-status]").inner_text() == "200"
    page.get_by_text("The request that was sent").click()
    page.screenshot(path=str(screenshot_dir / "tools-try.png"), full_page=True)
    assert "BROWSER-MARKER" not in page.content()
    # A 4xx: its body is what the model reads, shown as the tool's error.
    page.locator("#tool-try textarea[name=arguments]").fill('{"expression": "2 * (3 +"}')
    page.get_by_role("button", name="Send").click()
    page.locator("[data-testid=try-status]", has_text="400").wait_for()
    assert page.locator("[data-testid=try-output]").inner_text().startswith("Error (HTTP 400)")
    page.screenshot(path=str(screenshot_dir / "tools-try-error.png"), full_page=True)

    page.goto(f"{live_server.url}/tools/")
    page.screenshot(path=str(screenshot_dir / "tools-list.png"), full_page=True)
    assert "BROWSER-MARKER" not in page.content()

    # --- a grader, by pasting grader JSON ----------------------------------------------------------------------------
    dataset = DatasetFactory(owner=tool.owner, name="widget-totals", item_count=1)
    DatasetItemFactory(
        dataset=dataset,
        index=0,
        data={
            "messages": [{"role": "user", "content": "Total for 3 blue and 2 red widgets?"}],
            "answer": "25.95",
        },
    )
    page.goto(f"{live_server.url}/graders/new/?mode=json")
    spec = page.locator("textarea[name=spec]")
    bad = {
        "type": "multi",
        "name": "total",
        "calculate_output": "0.5 * exact + 0.5 * remote",
        "graders": {
            "exact": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "contains",
            },
            "remote": {"type": "endpoint", "url": f"{demo_process}/grade"},
        },
    }
    spec.fill(json.dumps(bad))
    page.locator("[data-testid=spec-check]").get_by_text(
        "graders.exact.operation: must be one of eq, ne, like, ilike"
    ).wait_for()
    page.locator(".json-field", has=spec).get_by_role("button", name="Format").click()
    page.screenshot(path=str(screenshot_dir / "graders-paste-json.png"), full_page=True)
    bad["graders"]["exact"]["operation"] = "like"
    spec.fill(json.dumps(bad, indent=2))
    page.locator("[data-testid=spec-check]").get_by_text("A valid multi grader").wait_for()
    page.locator("form[data-pane=json]").get_by_role("button", name="Create grader").click()
    page.wait_for_url(re.compile(r".*/graders/\d+/$"))
    assert Grader.objects.get(name="total").version == 1

    # --- "Run grader", with the item picked from a dataset -------------------------------------------------------------
    page.fill("#grader-run textarea[name=output_text]", "The total is 25.95 USD.")
    page.select_option("#grader-run select[name=dataset]", label="widget-totals (1)")
    page.locator("#grader-run select[name=dataset_item] option", has_text="#0 Total for 3 blue").wait_for(
        state="attached"
    )
    page.select_option("#grader-run select[name=dataset_item]", index=1)
    page.locator("#run-item-field textarea", has_text="25.95").wait_for()
    page.get_by_role("button", name="Run grader").click()
    score = page.locator("[data-testid=grade-score]")
    score.wait_for()
    assert score.inner_text() == "1.0000"
    assert page.locator(".subscores").inner_text().split() == ["exact", "1.0000", "remote", "1.0000"]
    # The picker keeps the chosen dataset and item.
    assert (
        page.locator("#grader-run select[name=dataset_item] option:checked")
        .inner_text()
        .startswith("#0 Total")
    )
    page.screenshot(path=str(screenshot_dir / "graders-run.png"), full_page=True)
    page.get_by_role("tab", name="Grader JSON").click()
    page.locator("form[data-pane=json] textarea[name=spec]").wait_for()
    page.screenshot(path=str(screenshot_dir / "graders-edit-json.png"), full_page=True)

    # The per-type form: switching the type shows that type's fields.
    page.goto(f"{live_server.url}/graders/new/")
    page.get_by_label("Set match (F1)").check()
    page.locator("fieldset[data-type=set_match] input[name='set_match-pattern']").wait_for()
    assert page.locator("fieldset[data-type=string_check]").is_hidden()
    page.screenshot(path=str(screenshot_dir / "graders-form.png"), full_page=True)
