"""The demo seeded by `up`: example datasets, the demo tools and graders, and a startable demo run."""

import pytest

from experiments.models import Dataset, Environment, Grader, McpServer, Run, RunStatus, Tool
from experiments.services import demo
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_seeding_is_complete_and_idempotent_and_follows_the_demo_server():
    admin = UserFactory(username="admin")
    first = demo.seed_demo(owner=admin, tool_base_url="http://127.0.0.1:8765")
    assert first.train.item_count == 32 and first.eval.item_count == demo.DEMO_EVAL_ITEMS
    assert {tool.name for tool in first.tools} == {"calculator", "lookup"}
    assert Tool.objects.get(owner=admin, name="lookup").url == "http://127.0.0.1:8765/tools/lookup"
    again = demo.seed_demo(
        owner=admin, tool_base_url="http://127.0.0.1:9999", mcp_url="http://127.0.0.1:10000/mcp"
    )
    assert again.train.pk == first.train.pk
    assert Dataset.objects.filter(owner=admin).count() == 6  # shop, file finding, workspace edits
    # The four demo graders and the workspace's state grader (an endpoint on the demo server).
    assert Grader.objects.filter(owner=admin).count() == len(demo.DEMO_GRADERS) + 1 == 5
    workspace = Environment.objects.get(owner=admin, name=demo.DEMO_ENVIRONMENT)
    assert (workspace.start_url, workspace.end_url) == (
        "http://127.0.0.1:9999/env/start",
        "http://127.0.0.1:9999/env/end",
    )
    assert McpServer.objects.get(owner=admin, name=demo.DEMO_MCP_SERVER).url == "http://127.0.0.1:10000/mcp"
    holed = Grader.objects.get(owner=admin, name=demo.DEMO_HOLED_GRADER)
    assert holed.spec["operation"] == "ilike"  # the deliberate hole the watch catches
    assert Tool.objects.get(owner=admin, name="lookup").url == "http://127.0.0.1:9999/tools/lookup"
    assert demo.demo_available(owner=admin)
    assert not demo.demo_available(owner=UserFactory(username="someone-else"))


def test_dashboard_button_starts_a_demo_run_on_the_bundled_model(client, django_capture_on_commit_callbacks):
    admin = UserFactory(username="admin")
    demo.seed_demo(owner=admin, tool_base_url="http://127.0.0.1:8765")
    client.force_login(admin)
    assert b"Start demo run" in client.get("/").content
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        response = client.post("/demo/start/")
    run = Run.objects.get(owner=admin)
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.status == RunStatus.QUEUED and run.base_model == demo.BUNDLED_MODEL
    assert set(run.tools.values_list("name", flat=True)) == {"calculator", "lookup"}
    assert run.config["steps"] == 30
    assert run.watch_config["pause"]["enabled"]
    assert len(enqueued) >= 1  # the train task is sent when the transaction commits
