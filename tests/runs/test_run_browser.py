"""The product's main loop in Chromium: log in, create a run with the form, watch its reward chart grow
live while a real Celery worker trains it, open a rollout and read its tool calls, cancel a second run.

Everything is real: Daphne (HTTP + WebSocket), a Celery `train` worker process, PostgreSQL/Redis, an
HTTP tool server speaking the agent-RFT wire format, and a tiny model warm-started on the toy task
(trainer/toy.py) so that it makes well-formed `peek` calls within seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings

from experiments.models import Checkpoint, Run, RunStatus, Trajectory
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, ToolFactory, UserFactory
from trainer.toy import TOY_TOOL_NAME, TOY_TOOLS, swatch, toy_items, toy_tool_output

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are plain sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


@pytest.fixture(scope="session")
def toy_model_dir() -> Path:
    """The tiny model warm-started on the toy task (cached: built once per data directory)."""
    from trainer.toy import warm_start_toy_model

    models = Path(settings.DATA_DIR) / "models"
    return warm_start_toy_model(models / "toy-warm", base_dir=models / "tiny")


@pytest.fixture
def peek_server():
    """A real HTTP tool server for `peek`: POST {"item": ...} -> {"output": <the item's colour swatch>}."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, text = toy_tool_output(name=self.path.strip("/"), item=body.get("item", {}))
            encoded = json.dumps({"output": text}).encode() if status < 400 else text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status < 400 else "text/plain")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # a whole step's calls arrive at once
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def toy_setup(peek_server):
    """A user with toy train/eval datasets, the `peek` tool on the server above, an exact-match grader."""
    owner = UserFactory(username="browser-trainer")
    datasets = {}
    for name, split, count, seed in (("colours-train", "train", 16, 1), ("colours-eval", "eval", 2, 2)):
        dataset = DatasetFactory(owner=owner, name=name, split=split, item_count=count)
        for index, item in enumerate(toy_items(count=count, seed=seed)):
            DatasetItemFactory(dataset=dataset, index=index, data=item, message_count=2)
        datasets[split] = dataset
    schema = TOY_TOOLS[0]["function"]
    tool = ToolFactory(
        owner=owner,
        name=TOY_TOOL_NAME,
        description=schema["description"],
        parameters=schema["parameters"],
        url=f"{peek_server}/{TOY_TOOL_NAME}",
    )
    grader = GraderFactory(
        owner=owner,
        name="exact colour",
        type="string_check",
        spec={
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "ilike",
        },
    )
    return {"owner": owner, **datasets, "tool": tool, "grader": grader}


HYPERPARAMETERS = {
    "prompts_per_step": "2",
    "group_size": "4",
    "max_turns": "2",
    "max_new_tokens_per_turn": "24",
    "max_tokens_per_rollout": "96",
    "learning_rate": "0.002",
    "micro_batch_size": "8",
    "eval_interval": "100",
    "eval_samples_per_item": "2",
    "checkpoint_interval": "2",
    "seed": "3",
}


def log_in(page, server, user) -> None:
    page.goto(f"{server.url}/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def create_run_with_form(page, server, setup, model_dir: Path, *, name: str, steps: int) -> int:
    page.goto(f"{server.url}/runs/new/")
    page.fill("#id_name", name)
    page.select_option("#id_base_model_choice", "custom")
    page.fill("#id_base_model_custom", str(model_dir))
    page.select_option("#id_train_dataset", label=setup["train"].name)
    page.select_option("#id_eval_dataset", label=setup["eval"].name)
    page.check(f"input[name=tools][value='{setup['tool'].pk}']")
    page.select_option("#id_grader", label=setup["grader"].name)
    folded = page.locator("#run-form details:not([open]) > summary")
    while folded.count():  # the hyperparameter groups after the first start folded
        folded.first.click()
    page.fill("#id_steps", str(steps))
    for field, value in HYPERPARAMETERS.items():
        page.fill(f"#id_{field}", value)
    page.click("#run-form button[type=submit]")
    page.wait_for_url("**/runs/*/", timeout=15000)
    return int(page.url.rstrip("/").rsplit("/", 1)[-1])


def reward_points(page) -> int:
    return page.evaluate("Number(document.getElementById('chart-reward').dataset.points || 0)")


def status_badge(page) -> str:
    return page.inner_text("#run-status").strip().lower()


def test_create_watch_inspect_and_cancel_runs_in_the_browser(
    page, daphne, celery_worker_factory, toy_setup, toy_model_dir, screenshot_dir
):
    started = time.monotonic()
    worker = celery_worker_factory(queues="train", name="gpu")
    owner = toy_setup["owner"]
    try:
        log_in(page, daphne, owner)
        assert owner.username in page.inner_text(".userbox")

        # 1. A run created with the form trains; its reward chart gains points over the WebSocket.
        run_id = create_run_with_form(page, daphne, toy_setup, toy_model_dir, name="colours", steps=6)
        run = Run.objects.get(pk=run_id)
        assert run.owner == owner and run.base_model == str(toy_model_dir)
        assert run.config["steps"] == 6 and run.config["group_size"] == 4
        assert [tool.name for tool in run.tools.all()] == [TOY_TOOL_NAME]
        assert run.eval_dataset == toy_setup["eval"] and run.grader == toy_setup["grader"]

        page.wait_for_function("document.getElementById('live-badge').textContent === 'live'", timeout=15000)
        seen_at_load = reward_points(page)
        assert seen_at_load < 6, "the run finished before its page was open: nothing to see live"
        page.wait_for_function(
            f"Number(document.getElementById('chart-reward').dataset.points) >= {seen_at_load + 2}",
            timeout=90000,
        )
        live_points, drawn = page.evaluate(
            "(c => [Number(c.dataset.points), Math.max(...c.data.map(t => t.x.length))])"
            "(document.getElementById('chart-reward'))"
        )
        assert live_points >= seen_at_load + 2
        assert drawn == live_points  # the plotted trace holds the points, not just the counter
        shot_while_training = status_badge(page) == "running"
        if shot_while_training:
            page.screenshot(path=str(screenshot_dir / "run-live.png"), full_page=True)
        page.wait_for_function(
            "document.getElementById('run-status').textContent.trim() === 'Succeeded'", timeout=120000
        )
        if not shot_while_training:  # a fast machine finished first: the page still shows the curves
            page.screenshot(path=str(screenshot_dir / "run-live.png"), full_page=True)
        page.wait_for_function("Number(document.getElementById('chart-reward').dataset.points) === 6")
        steps = page.evaluate("document.getElementById('chart-reward').data.at(-1).x")
        assert steps == [1, 2, 3, 4, 5, 6]  # in order, no gap, no duplicate

        # 2. The rollout browser: rollouts that used the tool; one opens with its call and result.
        used_tool = Trajectory.objects.filter(
            run_id=run_id, split="train", tool_call_names__contains=[TOY_TOOL_NAME]
        )
        assert used_tool.exists(), "the warm-started model made no well-formed peek call in 6 steps"
        page.click("text=Browse rollouts")
        page.wait_for_selector("#rollout-filters")
        step = page.locator("#rollout-filters input[name=step]")
        assert step.input_value() == str(Run.objects.get(pk=run_id).current_step)  # the latest step
        step.fill("")  # all steps
        with page.expect_navigation():
            step.press("Enter")
        page.fill("#rollout-filters input[name=tool]", TOY_TOOL_NAME)
        page.click("#rollout-filters button[type=submit]")
        page.wait_for_url(f"**tool={TOY_TOOL_NAME}**")
        rows = page.locator("#rollout-table tbody tr")
        assert 1 <= rows.count() <= used_tool.count()
        first_link = rows.first.locator("a[href*='/rollouts/trace_']").first
        trace_id = first_link.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
        first_link.click()
        page.wait_for_selector("#rollout-chat")
        rollout = Trajectory.objects.select_related("item").get(trace_id=trace_id)
        assert TOY_TOOL_NAME in rollout.tool_call_names
        call = page.locator(f".tool-call[data-tool-call={TOY_TOOL_NAME}]").first
        assert call.locator(".label").all_text_contents() == ["Arguments", "Result"]
        stored_call = next(
            tool_call["function"]
            for message in rollout.messages
            for tool_call in message.get("tool_calls") or []
            if tool_call["function"]["name"] == TOY_TOOL_NAME
        )
        shown_arguments, shown_result = (text.strip() for text in call.locator("pre").all_inner_texts())
        assert shown_arguments == stored_call["arguments"].strip()
        # The result shown is what the tool server answered for this rollout's item.
        assert shown_result == swatch(rollout.item.data["answer"])
        page.screenshot(path=str(screenshot_dir / "rollout-tool-calls.png"), full_page=True)

        # 3. A second run, cancelled from its page while it trains, ends as cancelled.
        second_id = create_run_with_form(
            page, daphne, toy_setup, toy_model_dir, name="colours long", steps=500
        )
        page.wait_for_function(
            "document.getElementById('run-status').textContent.trim() === 'Running'", timeout=60000
        )
        page.once("dialog", lambda dialog: dialog.accept())  # Cancel asks once
        with page.expect_navigation():
            page.click("#cancel-run")
        assert page.url.endswith(f"/runs/{second_id}/")
        page.wait_for_function(
            "document.getElementById('run-status').textContent.trim() === 'Cancelled'", timeout=60000
        )
        second = Run.objects.get(pk=second_id)
        assert second.status == RunStatus.CANCELLED
        assert second.current_step < 500
        # The action bar follows without a reload: nothing left to cancel; Resume offered when a
        # checkpoint was saved before the cancel, else Clone with "nothing to resume".
        if Checkpoint.objects.filter(run_id=second_id).exists():
            page.locator("#resume-run").wait_for(timeout=15000)
        else:
            page.locator("#nothing-to-resume").wait_for(timeout=15000)
        assert page.locator("#cancel-run").count() == 0
        page.reload()
        assert status_badge(page) == "cancelled"
        assert page.locator("#cancel-run").count() == 0  # nothing left to cancel
    except Exception:
        print(worker.log()[-8000:])
        raise
    print(f"\nbrowser run test took {time.monotonic() - started:.1f} s")
