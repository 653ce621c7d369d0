"""The Environments page, the run form's environment picker and the rollout view's environment card."""

from __future__ import annotations

import pytest
from django.test import Client

from experiments.demo_servers.app import DemoServer
from experiments.models import Environment, McpServer, Trajectory
from tests.factories import RunFactory, ToolFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def demo():
    server = DemoServer(port=0, mcp_port=0).start()
    yield server
    server.stop()


@pytest.fixture
def owner():
    return UserFactory(username="env-page-user")


@pytest.fixture
def client(owner):
    client = Client()
    client.force_login(owner)
    return client


def test_register_and_try_an_environment_and_an_mcp_server(client, owner, demo):
    start_url, end_url = demo.environment_urls
    response = client.post(
        "/environments/new/",
        {
            "env-name": "workspace",
            "env-start_url": start_url,
            "env-end_url": end_url,
            "env-start_timeout_s": "5",
            "env-end_timeout_s": "5",
            "env-max_live": "8",
            "env-header_lines": "Authorization: Bearer env-secret-123456",
        },
    )
    assert response.status_code == 302
    environment = Environment.objects.get(owner=owner, name="workspace")
    assert environment.headers == {"Authorization": "Bearer env-secret-123456"}
    response = client.post(
        "/environments/mcp/new/",
        {
            "mcp-name": "ws-mcp",
            "mcp-url": demo.mcp_url,
            "mcp-timeout_s": "10",
            "mcp-max_response_bytes": "100000",
        },
    )
    assert response.status_code == 302
    server = McpServer.objects.get(owner=owner, name="ws-mcp")
    assert len(server.tools) == 3
    page = client.get("/environments/").content.decode()
    assert "env-secret-123456" not in page
    assert "workspace_write_file" in page and start_url in page

    tool = ToolFactory(owner=owner, name="workspace_list_files", url=demo.tool_url("workspace_list_files"))
    tried = client.post(f"/environments/{environment.pk}/try/", {"tool": tool.pk, "arguments": "{}"})
    html = tried.content.decode()
    assert tried.status_code == 200 and 'id="try-result"' in html
    assert "src/app.py" in html and "delivered" in html

    tried = client.post(
        f"/environments/mcp/{server.pk}/try/", {"tool": "workspace_list_files", "arguments": "{}"}
    )
    assert "no workspace for this rollout" in tried.content.decode()

    bad = client.post("/environments/new/", {"env-name": "", "env-start_url": "not a url"})
    assert bad.status_code == 400 and "errorlist" in bad.content.decode()

    stranger = Client()
    stranger.force_login(UserFactory(username="not-the-owner"))
    assert stranger.post(f"/environments/{environment.pk}/try/", {}).status_code == 404
    assert "workspace" not in stranger.get("/environments/").content.decode().split("<main", 1)[-1]


def test_run_form_offers_environments_and_mcp_tools(client, owner, demo):
    Environment.objects.create(
        owner=owner, name="sandbox-env", start_url="http://127.0.0.1:9/s", end_url="http://127.0.0.1:9/e"
    )
    McpServer.objects.create(
        owner=owner,
        name="srv",
        url=demo.mcp_url,
        tools=[{"name": "workspace_read_file", "description": "", "input_schema": {}}],
    )
    html = client.get("/runs/new/").content.decode()
    assert "sandbox-env" in html and "workspace_read_file (srv)" in html


def test_rollout_view_shows_the_environment(client, owner):
    run = RunFactory(owner=owner)
    Trajectory.objects.create(
        run=run,
        trace_id="trace_env_view",
        step=1,
        split="train",
        item_index=0,
        group_index=0,
        sample_index=0,
        messages=[{"role": "system", "content": "Environment:\nsandbox at /srv/42"}],
        finish_reason="env_error",
        environment={
            "started_at": 1_780_000_000.0,
            "start_ms": 512.0,
            "context": "",
            "error": {"phase": "start", "type": "http_5xx", "message": "no sandbox available"},
            "ended_at": 1_780_000_001.0,
            "end_ms": 201.0,
            "end_error": "",
        },
    )
    html = client.get(f"/runs/{run.pk}/rollouts/trace_env_view/").content.decode()
    assert 'id="rollout-environment"' in html
    assert "Start failed: excluded from the update" in html and "no sandbox available" in html
