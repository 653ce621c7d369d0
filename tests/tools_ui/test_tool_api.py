"""The tools API: CRUD through the same rules as the pages, write-only secrets, try, import, 409 on delete."""

import pytest
from rest_framework.test import APIClient

from experiments.models import Tool
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

PARAMETERS = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}


@pytest.fixture
def api(alice):
    client = APIClient()
    client.force_authenticate(alice)
    return client


def test_crud_keeps_header_values_write_only_and_blank_keeps_the_stored_value(api, demo_server):
    created = api.post(
        "/api/v1/tools/",
        {
            "name": "calculator",
            "parameters": PARAMETERS,
            "url": demo_server.tool_url("calculator"),
            "headers": {"X-Api-Key": "api-key-value-000123456"},
            "signing_secret": "whsec_api_secret_value_77",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["headers_masked"] == {"X-Api-Key": "••••3456"} and body["signing_secret_masked"] == "••••e_77"
    assert "headers" not in body and "signing_secret" not in body
    tool_id = body["id"]

    patched = api.patch(
        f"/api/v1/tools/{tool_id}/",
        {"headers": {"X-Api-Key": "", "X-Team": "blue-team-secret"}, "timeout_s": 5},
        format="json",
    )
    assert patched.status_code == 200, patched.content
    tool = Tool.objects.get(pk=tool_id)
    assert tool.headers == {"X-Api-Key": "api-key-value-000123456", "X-Team": "blue-team-secret"}
    assert tool.signing_secret == "whsec_api_secret_value_77" and tool.timeout_s == 5

    refused = api.patch(
        f"/api/v1/tools/{tool_id}/",
        {"parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}},
        format="json",
    )
    assert refused.status_code == 400
    assert (
        "parameters.properties.x.type: 'strin' is not a JSON Schema type" in refused.json()["parameters"][0]
    )
    refused = api.post(
        "/api/v1/tools/",
        {"name": "calculator", "parameters": PARAMETERS, "url": "https://x.example.com/"},
        format="json",
    )
    assert refused.status_code == 400 and "already have a tool" in refused.json()["name"][0]

    cleared = api.patch(f"/api/v1/tools/{tool_id}/", {"clear_signing_secret": True}, format="json")
    assert cleared.json()["signing_secret_masked"] == ""


def test_try_through_the_api_reports_what_the_model_reads(api, alice, demo_server):
    tool = Tool.objects.create(
        owner=alice, name="calculator", parameters=PARAMETERS, url=demo_server.tool_url("calculator")
    )
    result = api.post(
        f"/api/v1/tools/{tool.pk}/try/", {"arguments": {"expression": "2 * (3 + 4)"}}, format="json"
    ).json()
    assert (result["ok"], result["status_code"], result["output"], result["error_type"]) == (
        True,
        200,
        "14",
        None,
    )
    assert (
        result["request"]["headers"]["X-RFT-Rollout-Id"]
        == result["trace_id"]
        == result["request"]["body"]["trace_id"]
    )
    assert result["argument_warnings"] == []
    broken = api.post(f"/api/v1/tools/{tool.pk}/try/", {"arguments": '{"expression": '}, format="json").json()
    assert broken["error_type"] == "malformed_call" and not broken["ok"]
    warned = api.post(f"/api/v1/tools/{tool.pk}/try/", {"arguments": {"expr": "1"}}, format="json").json()
    assert warned["argument_warnings"] == ["arguments: 'expression' is a required property"]


def test_import_parses_a_definition_without_saving(api):
    response = api.post(
        "/api/v1/tools/import/",
        {"definition": {"type": "function", "function": {"name": "grep", "parameters": PARAMETERS}}},
        format="json",
    )
    assert response.json() == {"name": "grep", "description": "", "parameters": PARAMETERS}
    assert not Tool.objects.exists()
    assert (
        api.post("/api/v1/tools/import/", {"definition": {"type": "web_search"}}, format="json").status_code
        == 400
    )


def test_delete_answers_409_while_a_run_uses_the_tool(api, alice):
    tool = Tool.objects.create(owner=alice, name="grep", parameters=PARAMETERS, url="https://x.example.com/")
    RunFactory(owner=alice, name="nightly").tools.add(tool)
    response = api.delete(f"/api/v1/tools/{tool.pk}/")
    assert response.status_code == 409 and "nightly" in response.json()["detail"]
    tool.runs.clear()
    assert api.delete(f"/api/v1/tools/{tool.pk}/").status_code == 204
