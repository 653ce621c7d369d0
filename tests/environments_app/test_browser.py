"""In Chromium against the real ASGI app: the Environments page (register, Try it through the demo
environment and its MCP server) and a rollout's environment card; screenshots in docs/screenshots."""

from __future__ import annotations

import os

import pytest

from experiments.demo_servers.app import DemoServer
from experiments.models import Environment, McpServer, Trajectory
from experiments.services.environments import refresh_mcp_tools
from tests.factories import RunFactory, ToolFactory, UserFactory
from tests.foundation.realtime_support import session_cookie_for

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_environments_page_try_it_and_rollout_card(page, daphne, screenshot_dir):
    demo = DemoServer(port=0, mcp_port=0).start()
    try:
        owner = UserFactory(username="env-browser-user")
        page.context.add_cookies(
            [{"name": "sessionid", "value": session_cookie_for(owner), "url": daphne.url}]
        )
        start_url, end_url = demo.environment_urls
        Environment.objects.create(
            owner=owner, name="demo-workspace", start_url=start_url, end_url=end_url, max_live=16
        )
        refresh_mcp_tools(McpServer.objects.create(owner=owner, name="demo-workspace-mcp", url=demo.mcp_url))
        tool = ToolFactory(owner=owner, name="workspace_read_file", url=demo.tool_url("workspace_read_file"))

        page.goto(f"{daphne.url}/environments/")
        page.select_option("select[name=tool]", str(tool.pk))
        page.fill("#environments input[name=arguments]", '{"path": "src/config.py"}')
        page.click("#environments button:has-text('Try it')")
        page.wait_for_selector("#try-result")
        result = page.inner_text("#try-result")
        assert "delivered" in result and "DEBUG = True" in result and "src/app.py" in result
        page.screenshot(path=str(screenshot_dir / "environments-try.png"), full_page=True)

        run = RunFactory(owner=owner)
        Trajectory.objects.create(
            run=run,
            trace_id="trace_browser_env",
            step=1,
            split="train",
            item_index=0,
            group_index=0,
            sample_index=0,
            messages=[
                {
                    "role": "system",
                    "content": "Edit the workspace.\n\nEnvironment:\nYour workspace holds: src/app.py",
                },
                {"role": "user", "content": "Turn debugging off."},
                {"role": "assistant", "content": "Done."},
            ],
            final_answer="Done.",
            reward=1.0,
            score=1.0,
            finish_reason="answer",
            environment={
                "started_at": 1_780_000_000.0,
                "start_ms": 512.4,
                "context": "Your workspace holds: src/app.py",
                "error": None,
                "ended_at": 1_780_000_003.0,
                "end_ms": 201.0,
                "end_error": "",
            },
        )
        page.goto(f"{daphne.url}/runs/{run.pk}/rollouts/trace_browser_env/")
        card = page.inner_text("#rollout-environment")
        assert "Context appended to the system prompt" in card and "512 ms" in card
        page.screenshot(path=str(screenshot_dir / "rollout-environment.png"), full_page=True)
    finally:
        demo.stop()
