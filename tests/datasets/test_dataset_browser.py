"""The upload page in Debian's Chromium: choose a file, watch it upload, see the dataset page; then drop a
broken file and see the error table."""

import os
import re

import pytest
from dataset_files import GREP_TOOL, item, jsonl

from experiments.models import Dataset
from experiments.selectors.datasets import dataset_items
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Playwright's sync API keeps an event loop running in this thread; the ORM calls made by the test
# and the live server's set-up are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def login(page, live_server):
    UserFactory(username="browser-user")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "browser-user")
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def demo_rows(count: int) -> list:
    rows = []
    for index in range(count):
        extra = {"tools": [GREP_TOOL]} if index % 3 == 0 else {}
        row = item(index, reference_files=["src/shop/pricing.py", f"src/shop/module_{index % 5}.py"], **extra)
        if index % 4 == 0:
            row["messages"][1:1] = [
                {"role": "user", "content": "Start with the checkout."},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"c{index}",
                            "type": "function",
                            "function": {"name": "grep", "arguments": '{"pattern": "compute_total"}'},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": f"c{index}",
                    "content": "src/shop/checkout.py:6: return compute_total(cart) * (1 + TAX_RATE)",
                },
            ]
        rows.append(row)
    return rows


def test_upload_preview_then_broken_file_error_table(
    page, live_server, transactional_db, tmp_path, screenshot_dir
):
    login(page, live_server)
    good = tmp_path / "shop-files.jsonl"
    good.write_bytes(jsonl(demo_rows(120)))

    page.goto(f"{live_server.url}/datasets/upload/")
    page.set_input_files("input[name=file]", str(good))
    assert page.inner_text("#drop-title") == "shop-files.jsonl"
    page.fill("input[name=name]", "Shop file finding")
    page.check("input[name=carve_eval]")
    page.fill("input[name=eval_fraction]", "0.25")
    page.screenshot(path=str(screenshot_dir / "datasets-upload.png"), full_page=True)
    # A slow link (16 KB/s up) so that the progress bar is seen moving.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 16 * 1024},
    )
    page.click("#upload-button")
    page.wait_for_function("document.getElementById('progress-bar').value > 20")
    assert re.fullmatch(r"[\d.]+ KB of 4[56].\d KB \(\d+ %\)", page.inner_text("#progress-numbers"))
    page.screenshot(
        path=str(screenshot_dir / "datasets-upload-progress.png"),
        clip={"x": 0, "y": 0, "width": 1400, "height": 560},
    )
    page.wait_for_url(re.compile(r".*/datasets/\d+/$"))
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )

    train = Dataset.objects.get(name="Shop file finding")
    assert page.url.endswith(f"/datasets/{train.pk}/")
    assert page.inner_text("#item-count") == "90"
    assert "Eval split “Shop file finding (eval)”: 30 items." in page.inner_text(".messages")
    page.wait_for_selector("#chart-messages .main-svg")  # Plotly drew the histogram
    page.wait_for_selector("#chart-chars .main-svg")
    first_item = page.locator(".ds-item").first
    assert "Question 0: which files compute totals?" in first_item.inner_text()
    assert first_item.locator(".ds-msg-call").inner_text().startswith("→ grep(")
    assert page.locator(".ds-item").count() == 20
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.screenshot(path=str(screenshot_dir / "datasets-detail.png"))

    page.click("text=Next →")  # htmx swaps in the next page of items
    page.wait_for_selector("#item-20")
    page.fill("input[name=q]", "module_4")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("text=Items containing “module_4”")
    expected = [
        row for row in dataset_items(dataset_id=train.pk) if "src/shop/module_4.py" in row["reference_files"]
    ]
    assert 0 < len(expected) < 24  # 24 of the 120 lines mention module_4; some went to the eval split
    assert page.locator(".ds-item").count() == len(expected)
    page.locator("#items").scroll_into_view_if_needed()
    page.evaluate("document.getElementById('items').scrollIntoView()")
    page.screenshot(path=str(screenshot_dir / "datasets-items-search.png"))

    page.goto(f"{live_server.url}/datasets/{train.pk}/")
    page.check("input[name=tools]")  # submits the filter form through htmx
    page.wait_for_selector("text=Items that carry their own tools")
    with_tools = [row for row in dataset_items(dataset_id=train.pk) if "tools" in row]
    assert page.locator(".ds-item").count() == min(20, len(with_tools))
    assert page.locator(".ds-item code.ds-tool").count() == page.locator(".ds-item").count()

    # A broken file, dropped onto the drop zone.
    broken = (
        jsonl(
            [
                item(0),
                b'{"messages": [{"role": "user", "content": "unterminated}',
                item(2),
                b"[1, 2]",
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                {
                    "messages": [{"role": "user", "content": "q"}],
                    "tools": [
                        {
                            "type": "function",
                            "function": {
                                "name": "grep",
                                "parameters": {"type": "object", "properties": {"p": {"type": "text"}}},
                            },
                        }
                    ],
                },
            ]
        )
        + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    )
    page.goto(f"{live_server.url}/datasets/upload/")
    page.evaluate(
        """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "broken.jsonl", {type: "application/jsonl"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        list(broken),
    )
    assert page.inner_text("#drop-title") == "broken.jsonl"
    page.click("#upload-button")
    page.wait_for_selector("table.ds-errors")
    rows = page.locator("table.ds-errors tbody tr")
    assert rows.count() == 5
    lines = [rows.nth(i).locator("td").first.inner_text() for i in range(5)]
    assert lines == ["2", "4", "5", "6", "7"]
    assert "not valid UTF-8" in rows.nth(4).inner_text()
    assert "5 invalid lines: nothing was imported." in page.inner_text("#errors")
    page.screenshot(path=str(screenshot_dir / "datasets-errors.png"), full_page=True)

    # The same good file again is caught as a duplicate, in place on the upload page.
    page.goto(f"{live_server.url}/datasets/upload/")
    page.set_input_files("input[name=file]", str(good))
    page.click("#upload-button")
    page.wait_for_selector("text=This file was already uploaded")
    assert page.locator("text=Open the existing dataset").get_attribute("href") == f"/datasets/{train.pk}/"

    page.goto(f"{live_server.url}/datasets/")
    names = page.locator("table.ds-table tbody tr td:first-child a").all_inner_texts()
    assert sorted(names) == ["Shop file finding", "Shop file finding (eval)", "broken"]
    page.screenshot(
        path=str(screenshot_dir / "datasets-list.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 420}
    )
