"""Agent-RFT tool definitions as the hosted job lists them, and flat Responses-shape tools in datasets.

- `{"name", "server_url", "headers"}` creates a tool through the API;
- a job's whole tool list (a JSON array) imports through the API and the tools page, all or none;
- per-item tools in the flat Responses shape are accepted at dataset upload and stored in the Chat
  Completions shape the rest of the app (and the trainer) reads.
"""

from __future__ import annotations

import json

import orjson
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from experiments.dataset_format import LineError, ParsedItem, parse_line
from experiments.models import DatasetItem, Tool
from experiments.services.api_tokens import create_token

pytestmark = [pytest.mark.django_db]

JOB_TOOLS = [
    {
        "name": "grep",
        "server_url": "https://tools.example.com/grep",
        "headers": {"Authorization": "Bearer sk-GREP-1234"},
    },
    {"name": "read_file", "server_url": "https://tools.example.com/read", "headers": {}},
    {
        "name": "submit",
        "server_url": "https://tools.example.com/submit",
        "description": "Submit the answer",
        "parameters": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        },
    },
]
FLAT_TOOL = {
    "type": "function",
    "name": "grep",
    "description": "Search the repository",
    "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]},
    "strict": True,
}


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def api(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user=alice, name='test').key}")
    return client


def test_a_tool_with_server_url_is_created(api, alice):
    created = api.post("/api/v1/tools/", JOB_TOOLS[0], format="json")
    assert created.status_code == 201, created.content
    tool = Tool.objects.get(owner=alice, name="grep")
    assert tool.url == "https://tools.example.com/grep"
    assert tool.headers == {"Authorization": "Bearer sk-GREP-1234"}
    assert "sk-GREP" not in created.content.decode()  # header values stay write-only
    assert "server_url" not in created.json()


def test_the_job_tool_list_imports_through_the_api(api, alice):
    response = api.post("/api/v1/tools/import-list/", JOB_TOOLS, format="json")
    assert response.status_code == 201, response.content
    assert [tool["name"] for tool in response.json()] == ["grep", "read_file", "submit"]
    submit = Tool.objects.get(owner=alice, name="submit")
    assert submit.url == "https://tools.example.com/submit" and submit.description == "Submit the answer"
    assert submit.parameters["required"] == ["answer"]
    assert Tool.objects.get(owner=alice, name="read_file").parameters == {"type": "object", "properties": {}}
    # Also as {"tools": [...]}; a second import of the same names is refused, naming them.
    again = api.post("/api/v1/tools/import-list/", {"tools": JOB_TOOLS[:1]}, format="json")
    assert again.status_code == 400
    assert "You already have tools named grep" in json.dumps(again.json())


def test_a_bad_entry_imports_nothing_and_is_named_by_its_index(api, alice):
    bad = [JOB_TOOLS[0], {"name": "broken", "headers": {"X": 1}}, {"server_url": "https://x.example.com/"}]
    response = api.post("/api/v1/tools/import-list/", bad, format="json")
    assert response.status_code == 400
    problems = response.json()["tools"]
    assert any(p.startswith('[1] (broken): "server_url" is required') for p in problems), problems
    assert any(p.startswith('[1] (broken): "headers" must be') for p in problems), problems
    assert any(p.startswith('[2]: "name" is required') for p in problems), problems
    assert not Tool.objects.filter(owner=alice).exists()


def test_the_job_tool_list_imports_on_the_tools_page(client, alice):
    client.force_login(alice)
    page = client.get("/tools/").content.decode()
    assert "Import a job&#x27;s tool list" in page or "Import a job's tool list" in page
    refused = client.post("/tools/import-list/", {"tools": "[{"})
    assert refused.status_code == 422 and "errorlist" in refused.content.decode()
    done = client.post("/tools/import-list/", {"tools": json.dumps(JOB_TOOLS)}, follow=True)
    html = done.content.decode()
    assert "Imported 3 tools: grep, read_file, submit." in html
    assert sorted(Tool.objects.filter(owner=alice).values_list("name", flat=True)) == [
        "grep",
        "read_file",
        "submit",
    ]


def test_flat_responses_tools_are_accepted_and_normalised():
    line = orjson.dumps({"messages": [{"role": "user", "content": "find TODOs"}], "tools": [FLAT_TOOL]})
    parsed = parse_line(line, 1)
    assert isinstance(parsed, ParsedItem), parsed
    expected = {
        "type": "function",
        "function": {key: FLAT_TOOL[key] for key in ("name", "description", "parameters", "strict")},
    }
    assert parsed.data["tools"] == [expected]
    assert orjson.loads(parsed.raw)["tools"] == [expected]  # what is stored
    # The Chat Completions shape is stored unchanged, byte for byte.
    chat = orjson.dumps({"messages": [{"role": "user", "content": "x"}], "tools": [expected]})
    assert parse_line(chat, 1).raw == chat
    broken = orjson.dumps({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})
    error = parse_line(broken, 3)
    assert isinstance(error, LineError) and "flat" not in error.reason and "tools[0]" in error.reason


def test_dataset_upload_with_flat_tools(api, alice):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}], "tools": [FLAT_TOOL], "answer": str(i)}
        for i in range(3)
    ]
    data = b"\n".join(orjson.dumps(row) for row in rows)
    response = api.post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("agent.jsonl", data)}, format="multipart"
    )
    assert response.status_code == 201, response.content
    items = DatasetItem.objects.filter(dataset_id=response.json()["dataset"]["id"]).order_by("index")
    assert [item.data["tools"][0]["function"]["name"] for item in items] == ["grep"] * 3
    assert all(item.has_tools for item in items)
