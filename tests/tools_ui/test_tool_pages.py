"""The tool pages: create/edit with errors in place (htmx), import, "Try it" against real servers,
delete protection; header values never leave the server."""

import json
import logging

import pytest
from django.db import connection

from experiments.models import Tool
from tests.factories import RunFactory, ToolFactory
from trainer.outbound import verify_signature

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
CALCULATOR_PARAMETERS = {
    "type": "object",
    "properties": {"expression": {"type": "string"}},
    "required": ["expression"],
}


def tool_form(**overrides):
    data = {
        "name": "calculator",
        "description": "Evaluates arithmetic.",
        "parameters": json.dumps(CALCULATOR_PARAMETERS),
        "url": "https://tools.example.com/calc",
        "header_name": [],
        "header_value": [],
        "signing_secret": "",
        "timeout_s": "30",
        "max_response_bytes": "1000000",
    }
    data.update(overrides)
    return data


def test_create_with_htmx_redirects_to_the_tool_and_errors_render_in_place(client, alice):
    client.force_login(alice)
    page = client.get("/tools/new/")
    assert page.status_code == 200 and b"data-json-editor" in page.content

    bad = client.post(
        "/tools/new/",
        tool_form(name="bad name", parameters='{"type": "object", "properties": {"x": {"type": "strin"}}}'),
        **HTMX,
    )
    assert bad.status_code == 200
    html = bad.content.decode()
    assert html.lstrip().startswith('<section class="card" id="tool-form">')  # the partial, not the page
    assert "function name" in html
    assert not Tool.objects.exists()

    bad_json = client.post("/tools/new/", tool_form(parameters='{"type": "object",'), **HTMX)
    assert "Not valid JSON" in bad_json.content.decode() and "line 1" in bad_json.content.decode()

    created = client.post(
        "/tools/new/",
        tool_form(header_name=["Authorization"], header_value=["Bearer page-secret-0001"]),
        **HTMX,
    )
    tool = Tool.objects.get(owner=alice, name="calculator")
    assert created.status_code == 204 and created["HX-Redirect"] == f"/tools/{tool.pk}/"
    assert tool.headers == {"Authorization": "Bearer page-secret-0001"}
    edit = client.get(f"/tools/{tool.pk}/").content.decode()
    assert "Bearer page-secret-0001" not in edit
    assert "••••0001" in edit  # the masked tail is shown as the placeholder


def test_edit_keeps_a_header_whose_value_is_left_blank(client, alice):
    tool = ToolFactory(owner=alice, name="calculator", headers={"Authorization": "Bearer keep-me-123456"})
    client.force_login(alice)
    response = client.post(
        f"/tools/{tool.pk}/",
        tool_form(description="Changed.", header_name=["Authorization"], header_value=[""]),
        **HTMX,
    )
    assert response.status_code == 200 and "Saved." in response.content.decode()
    tool.refresh_from_db()
    assert tool.description == "Changed."
    assert tool.headers == {"Authorization": "Bearer keep-me-123456"}


def test_import_fills_the_form_from_an_openai_function_definition(client, alice):
    client.force_login(alice)
    definition = {
        "type": "function",
        "function": {
            "name": "grep",
            "description": "Search.",
            "parameters": {
                "type": "object",
                "properties": {"pattern": {"type": "string"}},
                "required": ["pattern"],
            },
        },
    }
    response = client.post("/tools/import/", {"definition": json.dumps(definition)}, **HTMX)
    assert response["HX-Retarget"] == "#tool-form"
    html = response.content.decode()
    assert 'value="grep"' in html and "&quot;pattern&quot;" in html and "Search." in html
    broken = client.post("/tools/import/", {"definition": '{"name": '}, **HTMX)
    assert "HX-Retarget" not in broken and "Not valid JSON" in broken.content.decode()


def test_the_live_schema_check_reports_problems(client, alice):
    client.force_login(alice)
    ok = client.post("/tools/validate-parameters/", {"parameters": json.dumps(CALCULATOR_PARAMETERS)})
    assert "valid JSON Schema" in ok.content.decode()
    bad = client.post("/tools/validate-parameters/", {"parameters": '{"type": "object", "required": "x"}'})
    assert "parameters.required: must be an array" in bad.content.decode()


def test_try_it_calls_the_demo_tool_server_and_shows_what_the_model_reads(client, alice, demo_server):
    tool = ToolFactory(
        owner=alice,
        name="calculator",
        url=demo_server.tool_url("calculator"),
        parameters=CALCULATOR_PARAMETERS,
    )
    client.force_login(alice)
    response = client.post(
        f"/tools/{tool.pk}/try/", {"arguments": '{"expression": "3 * 4.99 + 2 * 5.49"}', "item": ""}, **HTMX
    )
    html = response.content.decode()
    assert 'data-testid="try-output">25.95</pre>' in html
    assert 'data-testid="try-status">200<' in html
    # An unknown product: the 4xx body is what the model reads.
    lookup = ToolFactory(owner=alice, name="lookup", url=demo_server.tool_url("lookup"))
    html = client.post(
        f"/tools/{lookup.pk}/try/", {"arguments": '{"key": "SKU-9999"}'}, **HTMX
    ).content.decode()
    assert "Error (HTTP 404)" in html and "http_4xx" in html
    # Sample arguments that break the schema are still sent, with a warning.
    html = client.post(f"/tools/{tool.pk}/try/", {"arguments": '{"expr": "1+1"}'}, **HTMX).content.decode()
    assert "&#x27;expression&#x27; is a required property" in html


def test_try_it_signs_like_a_rollout_and_a_wrong_secret_is_refused_by_the_receiver(
    client, alice, signed_demo_server
):
    client.force_login(alice)
    good = ToolFactory(
        owner=alice,
        name="calculator",
        url=signed_demo_server.tool_url("calculator"),
        signing_secret="whsec_demo_signing_secret_0042",
    )
    wrong = ToolFactory(
        owner=alice,
        name="calc_wrong",
        url=signed_demo_server.tool_url("calculator"),
        signing_secret="whsec_not_the_right_one_9999",
    )
    html = client.post(
        f"/tools/{good.pk}/try/", {"arguments": '{"expression": "2^10"}'}, **HTMX
    ).content.decode()
    assert 'data-testid="try-output">1024</pre>' in html
    html = client.post(
        f"/tools/{wrong.pk}/try/", {"arguments": '{"expression": "2^10"}'}, **HTMX
    ).content.decode()
    assert 'data-testid="try-status">401<' in html
    assert "whsec_not_the_right_one_9999" not in html and "whsec_demo_signing_secret_0042" not in html


def test_delete_is_refused_while_a_run_uses_the_tool(client, alice):
    tool = ToolFactory(owner=alice, name="grep")
    RunFactory(owner=alice, name="nightly").tools.add(tool)
    client.force_login(alice)
    refused = client.post(f"/tools/{tool.pk}/delete/", **HTMX)
    assert "used by 1 run" in refused.content.decode()
    assert Tool.objects.filter(pk=tool.pk).exists()
    tool.runs.clear()
    done = client.post(f"/tools/{tool.pk}/delete/", **HTMX)
    assert done["HX-Redirect"] == "/tools/" and not Tool.objects.filter(pk=tool.pk).exists()


def test_other_users_tools_are_not_found(client, alice, bob):
    tool = ToolFactory(owner=bob, name="bobs")
    client.force_login(alice)
    for method, url in [
        ("get", f"/tools/{tool.pk}/"),
        ("post", f"/tools/{tool.pk}/try/"),
        ("post", f"/tools/{tool.pk}/delete/"),
    ]:
        assert getattr(client, method)(url).status_code == 404
    assert Tool.objects.filter(pk=tool.pk).exists()


def test_header_values_reach_the_tool_but_no_page_api_response_log_or_row(
    client, alice, recording_server, caplog
):
    """The acceptance line "Secrets": a header value that is a unique marker is sent to the tool and
    appears nowhere else (pages, API, logs at DEBUG, the raw database row)."""
    marker = "Bearer MARKER-7c1e0d93-secret-header-value"
    signing = "whsec_MARKER_signing_secret_5f2a"
    caplog.set_level(logging.DEBUG)
    client.force_login(alice)
    client.post(
        "/tools/new/",
        tool_form(
            name="echo",
            url=recording_server.url,
            header_name=["Authorization"],
            header_value=[marker],
            signing_secret=signing,
        ),
        **HTMX,
    )
    tool = Tool.objects.get(name="echo")
    pages = [
        client.get("/tools/"),
        client.get(f"/tools/{tool.pk}/"),
        client.post(
            f"/tools/{tool.pk}/try/", {"arguments": '{"key": "x"}', "item": '{"answer": "42"}'}, **HTMX
        ),
        client.post(f"/tools/{tool.pk}/try/", {"arguments": '{"key": "x"}'}),
        client.get(f"/api/v1/tools/{tool.pk}/"),
        client.get("/api/v1/tools/"),
        client.post(
            f"/api/v1/tools/{tool.pk}/try/", {"arguments": {"key": "x"}}, content_type="application/json"
        ),
    ]
    for response in pages:
        assert response.status_code == 200, response.content[:300]
        text = response.content.decode()
        assert "MARKER" not in text, response.request["PATH_INFO"]
    assert "MARKER" not in caplog.text

    # It really went out, with the wire format's rollout id and a signature the receiver verifies.
    sent = recording_server.requests[0]
    assert sent["headers"]["authorization"] == marker
    assert sent["headers"]["x-rft-rollout-id"] == sent["body"]["trace_id"]
    assert sent["body"]["item"] == {"answer": "42"}
    assert sent["body"]["name"] == "echo" and json.loads(sent["body"]["arguments"]) == {"key": "x"}
    assert verify_signature(secret=signing, body=sent["raw"], header=sent["headers"]["x-rft-signature"])
    assert len({request["body"]["trace_id"] for request in recording_server.requests}) == 3  # fresh per try

    with connection.cursor() as cursor:
        cursor.execute("SELECT headers, signing_secret FROM experiments_tool WHERE id = %s", [tool.pk])
        raw_headers, raw_secret = cursor.fetchone()
    assert raw_headers.startswith("gAAAA") and raw_secret.startswith("gAAAA")
    assert "MARKER" not in raw_headers and "MARKER" not in raw_secret


def test_try_it_obeys_the_outbound_policy_from_settings(client, alice, recording_server, settings):
    """With production's policy (no loopback) the same tool is refused before anything is sent."""
    settings.RFT_OUTBOUND_ALLOW_LOOPBACK = False
    tool = ToolFactory(owner=alice, name="echo", url=recording_server.url)
    client.force_login(alice)
    html = client.post(f"/tools/{tool.pk}/try/", {"arguments": '{"key": "x"}'}, **HTMX).content.decode()
    assert "blocked" in html and "not allowed by the server" in html
    assert recording_server.requests == []
    settings.RFT_OUTBOUND_ALLOWLIST = ["127.0.0.0/8"]  # an administrator allows it
    html = client.post(f"/tools/{tool.pk}/try/", {"arguments": '{"key": "x"}'}, **HTMX).content.decode()
    assert 'data-testid="try-status">200<' in html and len(recording_server.requests) == 1
