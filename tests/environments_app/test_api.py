"""The REST API for MCP servers and environments, against the demo server (HTTP + its MCP server)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from experiments.demo_servers.app import DemoServer
from experiments.models import Environment, McpServer
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, ToolFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "Bearer a-very-secret-token-9876"


@pytest.fixture(scope="module")
def demo():
    server = DemoServer(port=0, mcp_port=0).start()
    yield server
    server.stop()


@pytest.fixture
def owner():
    return UserFactory(username="env-api-user")


@pytest.fixture
def api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def test_register_an_mcp_server_lists_its_tools_and_never_echoes_headers(api, demo):
    response = api.post(
        "/api/v1/mcp-servers/",
        {"name": "workspace", "url": demo.mcp_url, "headers": {"Authorization": SECRET}},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert SECRET not in response.content.decode()
    assert body["headers_masked"] == {"Authorization": "••••9876"}
    assert body["last_error"] == "" and body["tools_refreshed_at"]
    tools = {tool["name"]: tool for tool in body["tools"]}
    assert set(tools) == {"workspace_list_files", "workspace_read_file", "workspace_write_file"}
    assert tools["workspace_write_file"]["input_schema"]["required"] == ["path", "content"]
    refreshed = api.post(f"/api/v1/mcp-servers/{body['id']}/refresh/")
    assert (
        refreshed.status_code == 200 and refreshed.json()["tools_refreshed_at"] >= body["tools_refreshed_at"]
    )


def test_mcp_try_shows_an_is_error_result_as_the_model_reads_it(api, demo, owner):
    server = McpServer.objects.create(owner=owner, name="ws", url=demo.mcp_url)
    response = api.post(
        f"/api/v1/mcp-servers/{server.pk}/try/",
        {"tool": "workspace_list_files", "arguments": {}},
        format="json",
    )
    assert response.status_code == 200
    result = response.json()
    # No environment was started for this trace: the tool says so (isError), the model would read it.
    assert result["ok"] is False and result["error_type"] == "tool_error"
    assert "no workspace for this rollout" in result["output"]
    assert result["trace_id"].startswith("trace_")


def test_a_private_address_is_refused_when_loopback_is_not_allowed(api, demo, settings):
    settings.RFT_OUTBOUND_ALLOW_LOOPBACK = False
    response = api.post("/api/v1/mcp-servers/", {"name": "internal", "url": demo.mcp_url}, format="json")
    assert response.status_code == 201
    assert "refused by the outbound policy" in response.json()["last_error"]
    assert response.json()["tools"] == []


def test_environment_try_runs_start_a_tool_call_and_end_with_one_trace(api, demo, owner):
    start_url, end_url = demo.environment_urls
    created = api.post(
        "/api/v1/environments/",
        {"name": "ws", "start_url": start_url, "end_url": end_url, "signing_secret": "s" * 24, "max_live": 8},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert "s" * 24 not in created.content.decode()
    tool = ToolFactory(owner=owner, name="workspace_read_file", url=demo.tool_url("workspace_read_file"))
    response = api.post(
        f"/api/v1/environments/{created.json()['id']}/try/",
        {"tool": tool.pk, "arguments": {"path": "src/config.py"}},
        format="json",
    )
    assert response.status_code == 200, response.content
    steps = response.json()
    assert steps["start"]["ok"] and "src/config.py" in steps["start"]["context"]
    assert steps["tool"]["ok"] and "DEBUG = True" in steps["tool"]["output"]
    assert steps["end"]["ok"]
    trace = steps["trace_id"]
    events = [e for e in demo.httpd.trees.log if e["trace_id"] == trace]
    assert [e["event"] for e in events] == ["start", "end"]


def test_runs_take_an_environment_and_mcp_tools_and_others_see_nothing(api, demo, owner):
    server = McpServer.objects.create(owner=owner, name="ws", url=demo.mcp_url)
    api.post(f"/api/v1/mcp-servers/{server.pk}/refresh/")
    start_url, end_url = demo.environment_urls
    environment = Environment.objects.create(owner=owner, name="ws", start_url=start_url, end_url=end_url)
    train = DatasetFactory(owner=owner, item_count=1)
    DatasetItemFactory(dataset=train, index=0)
    grader = GraderFactory(owner=owner)
    payload = {
        "name": "with environment",
        "base_model": "bundled:smollm2-135m-instruct",
        "train_dataset": train.pk,
        "grader": grader.pk,
        "environment": environment.pk,
        "mcp_tools": [{"server": server.pk, "name": "workspace_read_file"}],
        "start": False,
    }
    response = api.post("/api/v1/runs/", payload, format="json")
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["environment"] == environment.pk
    assert [tool["name"] for tool in run["mcp_tools"]] == ["workspace_read_file"]
    assert run["mcp_tools"][0]["input_schema"]["properties"]["path"]["type"] == "string"

    bad = api.post(
        "/api/v1/runs/", {**payload, "mcp_tools": [{"server": server.pk, "name": "rm_rf"}]}, format="json"
    )
    assert bad.status_code == 400 and "lists no tool 'rm_rf'" in bad.content.decode()

    stranger = APIClient()
    stranger.force_authenticate(UserFactory(username="someone-else"))
    assert stranger.get(f"/api/v1/mcp-servers/{server.pk}/").status_code == 404
    assert stranger.get(f"/api/v1/environments/{environment.pk}/").status_code == 404
    assert stranger.post(f"/api/v1/environments/{environment.pk}/try/", {}, format="json").status_code == 404
    other_run = stranger.post("/api/v1/runs/", {**payload, "train_dataset": train.pk}, format="json")
    assert other_run.status_code == 400  # not their dataset, grader or environment
