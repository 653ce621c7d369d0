"""The playground in Chromium: base model and checkpoint side by side, streamed live; Stop."""

from __future__ import annotations

import os

import pytest

from experiments.models import DatasetItem, PlaygroundSession, PlaygroundStatus

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


def test_checkpoint_and_base_side_by_side_and_stop(
    page, daphne, celery_worker_factory, playground_run, screenshot_dir
):
    worker = celery_worker_factory(queues="default", name="playground-browser")
    owner = playground_run.owner
    item = DatasetItem.objects.filter(dataset=playground_run.eval_dataset).order_by("index").first()
    try:
        page.goto(f"{daphne.url}/accounts/login/")
        page.fill("input[name=username]", owner.username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/accounts/login/" not in url)

        page.goto(f"{daphne.url}/runs/{playground_run.pk}/")
        page.click("#checkpoints summary") if not page.is_visible("#checkpoint-table") else None
        with page.expect_navigation():
            page.click("#checkpoint-table tr[data-step='10'] .playground-link")
        assert page.input_value("#playground-step") == "10"
        page.select_option("#playground-item", str(item.pk))
        page.screenshot(path=str(screenshot_dir / "playground-form.png"), full_page=True)
        with page.expect_navigation():
            page.click("#playground-start")
        page.wait_for_function("document.body.dataset.playgroundStatus === 'succeeded'", timeout=90000)
        answer = item.data["answer"]
        for side in ("adapter", "base"):
            column = page.locator(f"#side-{side}")
            assert int(column.get_attribute("data-tokens")) > 3
            assert (
                column.locator(".pg-tool[data-tool-call=peek] .pg-tool-output")
                .inner_text()
                .startswith(answer)
            )
            assert column.get_attribute("data-score") == "1"
            assert column.get_attribute("data-finished") == "answer"
        # Side by side: the two columns share a row.
        adapter_box = page.locator("#side-adapter").bounding_box()
        base_box = page.locator("#side-base").bounding_box()
        assert (
            abs(adapter_box["y"] - base_box["y"]) < 2
            and base_box["x"] > adapter_box["x"] + adapter_box["width"] / 2
        )
        page.screenshot(path=str(screenshot_dir / "playground-side-by-side.png"), full_page=True)
        # A reload shows the finished session from its stored result.
        page.reload()
        assert page.locator("#side-base .pg-tool").count() >= 1
        assert page.locator("#side-adapter").get_attribute("data-score") == "1"

        # Stop: pressed as soon as the session page is up.
        page.goto(f"{daphne.url}/playground/?run={playground_run.pk}")
        page.fill("#playground-prompt", "What is the secret colour?")
        with page.expect_navigation():
            page.click("#playground-start")
        page.click("#playground-stop")
        page.wait_for_function("document.body.dataset.playgroundStatus === 'stopped'", timeout=60000)
        assert page.locator("#playground-stop").is_hidden()
        session = PlaygroundSession.objects.order_by("-pk").first()
        assert session.status == PlaygroundStatus.STOPPED and session.stop_requested
        page.screenshot(path=str(screenshot_dir / "playground-stopped.png"), full_page=True)
    except Exception:
        print(worker.log()[-6000:])
        raise
