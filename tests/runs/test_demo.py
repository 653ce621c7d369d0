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
    # shop, file finding, workspace edits (train/eval each) + the quick demo's train/eval
    assert Dataset.objects.filter(owner=admin).count() == 8
    # The four demo graders, the workspace's state grader (an endpoint on the demo server) and the
    # quick demo's exact-colour grader.
    assert Grader.objects.filter(owner=admin).count() == len(demo.DEMO_GRADERS) + 2 == 6
    workspace = Environment.objects.get(owner=admin, name=demo.DEMO_ENVIRONMENT)
    assert (workspace.start_url, workspace.end_url) == (
        "http://127.0.0.1:9999/env/start",
        "http://127.0.0.1:9999/env/end",
    )
    assert McpServer.objects.get(owner=admin, name=demo.DEMO_MCP_SERVER).url == "http://127.0.0.1:10000/mcp"
    holed = Grader.objects.get(owner=admin, name=demo.DEMO_HOLED_GRADER)
    assert holed.spec["operation"] == "ilike"  # the deliberate hole the watch catches
    assert Tool.objects.get(owner=admin, name="lookup").url == "http://127.0.0.1:9999/tools/lookup"
    assert demo.demo_available(owner=admin) and demo.quick_demo_available(owner=admin)
    assert not demo.demo_available(owner=UserFactory(username="someone-else"))
    assert not demo.quick_demo_available(owner=UserFactory(username="another-one"))
    assert Tool.objects.get(owner=admin, name="peek").url == "http://127.0.0.1:9999/tools/peek"


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


def test_quick_demo_button_starts_the_warm_started_toy_model_on_the_peek_task(
    client, django_capture_on_commit_callbacks
):
    admin = UserFactory(username="admin")
    demo.seed_demo(owner=admin, tool_base_url="http://127.0.0.1:8765")
    client.force_login(admin)
    assert b'id="start-quick-demo"' in client.get("/").content
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        response = client.post("/demo/quick/")
    run = Run.objects.get(owner=admin)
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.base_model == demo.BUNDLED_TOY_MODEL and run.name == "Quick demo 1"
    assert list(run.tools.values_list("name", flat=True)) == ["peek"]
    assert run.grader.spec["operation"] == "eq" and run.config["steps"] == 40
    assert run.eval_dataset.item_count == demo.QUICK_EVAL_ITEMS
    assert len(enqueued) >= 1
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="model-note"' in page and "peek" in page  # what the model is, why it learns fast
    # The SmolLM2 demo run says what makes its base model call the tools (a worked example in the
    # prompts); other runs get no note.
    smollm2_page = client.get(f"/runs/{demo.start_demo_run(owner=admin).pk}/").content.decode()
    assert 'id="model-note"' in smollm2_page and "worked example" in smollm2_page
    assert "About this quick demo" not in smollm2_page
    other = Run.objects.create(
        owner=admin,
        name="mine",
        base_model=demo.BUNDLED_MODEL,
        train_dataset=run.train_dataset,
        grader=run.grader,
        config={},
    )
    assert 'id="model-note"' not in client.get(f"/runs/{other.pk}/").content.decode()


def test_the_dashboard_says_the_measured_time_per_step_before_a_demo_starts(client):
    from django.utils import timezone

    from experiments.models import MetricPoint

    admin = UserFactory(username="admin")
    demo.seed_demo(owner=admin, tool_base_url="http://127.0.0.1:8765")
    client.force_login(admin)
    page = client.get("/").content.decode()
    assert "not measured on this machine yet" in page and "not run on this machine yet" in page
    earlier = demo.start_demo_run(owner=admin)
    for step, seconds in enumerate([30.0, 32.0, 90.0], start=1):
        MetricPoint.objects.create(
            run=earlier, seq=step, step=step, key="step_time", value=seconds, wall_time=timezone.now()
        )
    page = client.get("/").content.decode()
    # The median of the measured steps (32 s), times the demo's 30 steps: 16 minutes.
    assert "about 32 s per step on this machine (median of your last 3 steps), so about 16 minutes" in page
