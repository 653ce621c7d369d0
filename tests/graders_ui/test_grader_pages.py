"""The grader pages and API: per-type forms and pasted JSON with errors in place, "Run grader" with
a dataset item, delete protection, and secrets that never leave the server."""

import json
import logging
import re

import pytest
from django.db import connection

from experiments.models import Grader
from experiments.services import graders as grader_services
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, RunFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def errors_in(html: str) -> list[str]:
    return re.findall(r"<li>(.*?)</li>", html)


def test_create_from_the_string_check_form_and_errors_sit_next_to_the_field(client, alice):
    client.force_login(alice)
    form = {
        "mode": "form",
        "name": "exact",
        "type": "string_check",
        "string_check-input": "{{sample.output_text}}",
        "string_check-reference": "{{item.answer",
        "string_check-operation": "eq",
    }
    html = client.post("/graders/new/", form, **HTMX).content.decode()
    assert html.lstrip().startswith('<section class="card" id="grader-form"')
    assert errors_in(html) == ["unbalanced {{ }}"]  # only the chosen type's form is checked
    assert not Grader.objects.exists()
    form["string_check-reference"] = "{{item.answer}}"
    created = client.post("/graders/new/", form, **HTMX)
    grader = Grader.objects.get(owner=alice)
    assert created["HX-Redirect"] == f"/graders/{grader.pk}/"
    assert grader.spec == STRING_CHECK


def test_create_from_the_endpoint_form_keeps_header_values_write_only(client, alice):
    client.force_login(alice)
    form = {
        "mode": "form",
        "name": "remote",
        "type": "endpoint",
        "endpoint-url": "https://grader.example.com/grade",
        "endpoint-timeout_s": "20",
        "endpoint-header_name": ["X-Key"],
        "endpoint-header_value": ["FORM-HEADER-VALUE-0099"],
        "endpoint-signing_secret": "",
    }
    assert client.post("/graders/new/", form, **HTMX).status_code == 204
    grader = Grader.objects.get(name="remote")
    assert grader.spec == {
        "type": "endpoint",
        "name": "remote",
        "url": "https://grader.example.com/grade",
        "headers": {"X-Key": ""},
        "timeout_s": 20.0,
    }
    page = client.get(f"/graders/{grader.pk}/").content.decode()
    assert "FORM-HEADER-VALUE-0099" not in page and "••••0099" in page
    # Saving the form again with the value left blank keeps it.
    form["endpoint-header_value"] = [""]
    form["endpoint-timeout_s"] = "25"
    html = client.post(f"/graders/{grader.pk}/", form, **HTMX).content.decode()
    assert "Saved (version 2)" in html
    grader.refresh_from_db()
    assert grader_services.grading_spec(grader)["headers"] == {"X-Key": "FORM-HEADER-VALUE-0099"}


def test_pasted_json_errors_name_the_field(client, alice):
    client.force_login(alice)
    bad = {
        "type": "multi",
        "name": "total",
        "graders": {"a": {**STRING_CHECK, "operation": "same"}},
        "calculate_output": "a",
    }
    html = client.post("/graders/new/", {"mode": "json", "spec": json.dumps(bad)}, **HTMX).content.decode()
    assert "graders.a.operation: must be one of eq, ne, like, ilike, not &#x27;same&#x27;" in html
    html = client.post(
        "/graders/new/", {"mode": "json", "spec": '{"type": "string_check",'}, **HTMX
    ).content.decode()
    assert "Not valid JSON" in html
    live = client.post(
        "/graders/validate/", {"spec": json.dumps({**STRING_CHECK, "refrence": "x"})}
    ).content.decode()
    assert "refrence: unknown field for a string_check grader" in live
    assert (
        "✓ A valid string_check grader &#x27;exact&#x27;"
        in client.post("/graders/validate/", {"spec": json.dumps(STRING_CHECK)}).content.decode()
    )


def test_run_grader_panel_with_an_item_picked_from_a_dataset(client, alice, bob, demo_server):
    dataset = DatasetFactory(owner=alice, name="qa", item_count=2)
    DatasetItemFactory(
        dataset=dataset,
        index=0,
        data={"messages": [{"role": "user", "content": "What is 6*7?"}], "answer": "42"},
    )
    item = DatasetItemFactory(
        dataset=dataset,
        index=1,
        data={"messages": [{"role": "user", "content": "Capital of France?"}], "answer": "Paris"},
    )
    bobs = DatasetItemFactory(
        dataset=DatasetFactory(owner=bob, item_count=1), index=0, data={"messages": [], "answer": "bob-only"}
    )
    spec = {
        "type": "multi",
        "name": "total",
        "graders": {
            "exact": {**STRING_CHECK, "operation": "ilike"},
            "remote": {"type": "endpoint", "url": demo_server.grade_url},
        },
        "calculate_output": "0.5 * exact + 0.5 * remote",
    }
    grader = grader_services.create_grader(owner=alice, spec=spec)
    client.force_login(alice)

    page = client.get(f"/graders/{grader.pk}/").content.decode()
    assert f'<option value="{dataset.pk}">qa (2)</option>' in page
    options = client.get("/graders/items/", {"dataset": dataset.pk}).content.decode()
    assert "#1 Capital of France?" in options
    assert "bob-only" not in client.get("/graders/item/", {"dataset_item": bobs.pk}).content.decode()
    field = client.get("/graders/item/", {"dataset_item": item.pk}).content.decode()
    assert "&quot;answer&quot;: &quot;Paris&quot;" in field

    html = client.post(
        f"/graders/{grader.pk}/run/",
        {"output_text": "It is paris.", "output_tools": "", "item": json.dumps(item.data)},
        **HTMX,
    ).content.decode()
    assert 'data-testid="grade-score">1.0000<' in html
    assert ">exact<" in html and ">remote<" in html


def test_run_grader_shows_errors_by_type(client, alice):
    spec = {
        "type": "multi",
        "name": "total",
        "graders": {"exact": STRING_CHECK, "down": {"type": "endpoint", "url": "http://127.0.0.1:9/grade"}},
        "calculate_output": "exact * down",
    }
    grader = grader_services.create_grader(owner=alice, spec=spec)
    client.force_login(alice)
    html = client.post(
        f"/graders/{grader.pk}/run/", {"output_text": "x", "item": "{}"}, **HTMX
    ).content.decode()
    assert 'data-testid="grade-score">no score<' in html
    assert "exact" in html and "template" in html  # item.answer is missing: a template error
    assert "connection" in html


def test_delete_refused_while_a_run_uses_the_grader(client, alice):
    grader = GraderFactory(owner=alice)
    RunFactory(owner=alice, grader=grader, name="nightly")
    client.force_login(alice)
    assert "scores 1 run" in client.post(f"/graders/{grader.pk}/delete/", **HTMX).content.decode()
    api = client.delete(f"/api/v1/graders/{grader.pk}/")
    assert api.status_code == 409 and "nightly" in api.json()["detail"]
    assert Grader.objects.filter(pk=grader.pk).exists()


def test_api_crud_validate_and_run(client, alice, bob):
    client.force_login(alice)
    assert client.post(
        "/api/v1/graders/validate/",
        {"spec": {**STRING_CHECK, "operation": "x"}},
        content_type="application/json",
    ).json() == {
        "valid": False,
        "type": None,
        "name": None,
        "errors": {"operation": ["must be one of eq, ne, like, ilike, not 'x'"]},
    }
    created = client.post("/api/v1/graders/", {"spec": STRING_CHECK}, content_type="application/json")
    assert created.status_code == 201, created.content
    grader_id = created.json()["id"]
    assert created.json()["name"] == "exact" and created.json()["version"] == 1
    refused = client.post(
        "/api/v1/graders/",
        {"spec": {**STRING_CHECK, "name": "other", "input": 3}},
        content_type="application/json",
    )
    assert refused.status_code == 400 and refused.json() == {"spec": ["input: must be a string, not int"]}
    patched = client.patch(
        f"/api/v1/graders/{grader_id}/",
        {"spec": {**STRING_CHECK, "operation": "ilike"}},
        content_type="application/json",
    )
    assert patched.json()["version"] == 2
    run = client.post(
        f"/api/v1/graders/{grader_id}/run/",
        {"output_text": "PARIS", "item": {"answer": "paris"}},
        content_type="application/json",
    ).json()
    assert (
        run["score"] == 1.0
        and run["sub_scores"] == {"exact": 1.0}
        and run["errors"] == []
        and run["latency_ms"] >= 0
    )
    client.force_login(bob)
    assert (
        client.post(
            f"/api/v1/graders/{grader_id}/run/", {"output_text": "x"}, content_type="application/json"
        ).status_code
        == 404
    )


def test_grader_secrets_reach_the_endpoint_and_judge_but_no_page_api_response_log_or_row(
    client, alice, grade_recorder, caplog
):
    """Acceptance "Secrets" for graders: header values and API keys are sent where they belong and
    appear nowhere else, even when the remote server echoes them back."""
    caplog.set_level(logging.DEBUG)
    spec = {
        "type": "multi",
        "name": "total",
        "calculate_output": "0.5 * remote + 0.5 * judge",
        "graders": {
            "remote": {
                "type": "endpoint",
                "url": f"{grade_recorder.base}/grade",
                "headers": {"Authorization": "Bearer MARKER-endpoint-3f9a7c"},
            },
            "judge": {
                "type": "score_model",
                "model": "judge",
                "base_url": f"{grade_recorder.base}/v1",
                "api_key": "MARKER-judge-key-81b2e4",
                "input": [{"role": "user", "content": "Answer: {{sample.output_text}}"}],
            },
        },
    }
    client.force_login(alice)
    created = client.post("/api/v1/graders/", {"spec": spec}, content_type="application/json")
    assert created.status_code == 201
    grader_id = created.json()["id"]
    responses = [
        created,
        client.get("/api/v1/graders/"),
        client.get(f"/api/v1/graders/{grader_id}/"),
        client.get("/graders/"),
        client.get(f"/graders/{grader_id}/"),
        client.get(f"/graders/{grader_id}/?mode=json"),
        client.post(f"/graders/{grader_id}/run/", {"output_text": "hello", "item": "{}"}, **HTMX),
        client.post(
            f"/api/v1/graders/{grader_id}/run/", {"output_text": "hello"}, content_type="application/json"
        ),
        client.post("/api/v1/graders/validate/", {"spec": spec}, content_type="application/json"),
    ]
    for response in responses:
        assert response.status_code in (200, 201)
        assert "MARKER" not in response.content.decode()
    assert "MARKER" not in caplog.text
    run = responses[-2].json()
    assert run["score"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.8)
    assert {(r["path"], r["headers"]["authorization"]) for r in grade_recorder.requests} == {
        ("/grade", "Bearer MARKER-endpoint-3f9a7c"),
        ("/v1/chat/completions", "Bearer MARKER-judge-key-81b2e4"),
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT spec::text, secrets FROM experiments_grader WHERE id = %s", [grader_id])
        raw_spec, raw_secrets = cursor.fetchone()
    assert "MARKER" not in raw_spec and "MARKER" not in raw_secrets and raw_secrets.startswith("gAAAA")


def test_saving_an_unchanged_form_keeps_the_spec_and_its_version(client, alice):
    """Defaults are not written into the spec, and fields the form does not edit are kept."""
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": "m",
        "base_url": "https://judge.example.com/v1",
        "api_key": "sk-judge-key-123456789",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "pass_threshold": 0.5,
    }
    grader = grader_services.create_grader(owner=alice, spec=spec)
    client.force_login(alice)
    form = {
        "mode": "form",
        "name": "judge",
        "type": "score_model",
        "score_model-model": "m",
        "score_model-base_url": "https://judge.example.com/v1",
        "score_model-api_key": "",
        "score_model-input": json.dumps(spec["input"]),
        "score_model-range_low": "0",
        "score_model-range_high": "1",
    }
    html = client.post(f"/graders/{grader.pk}/", form, **HTMX).content.decode()
    assert "Saved (version 1)" in html
    grader.refresh_from_db()
    assert grader_services.grading_spec(grader) == spec
    form["score_model-range_high"] = "10"
    client.post(f"/graders/{grader.pk}/", form, **HTMX)
    grader.refresh_from_db()
    assert (grader.version, grader.spec["range"], grader.spec["pass_threshold"]) == (2, [0.0, 10.0], 0.5)


def test_run_grader_obeys_the_outbound_policy_from_settings(client, alice, grade_recorder, settings):
    settings.RFT_OUTBOUND_ALLOW_LOOPBACK = False
    grader = grader_services.create_grader(
        owner=alice, spec={"type": "endpoint", "name": "remote", "url": f"{grade_recorder.base}/grade"}
    )
    client.force_login(alice)
    run = client.post(
        f"/api/v1/graders/{grader.pk}/run/", {"output_text": "x"}, content_type="application/json"
    ).json()
    assert run["score"] is None and run["errors_by_type"] == {"blocked": 1}
    assert grade_recorder.requests == []


def test_a_failed_submission_never_sends_a_typed_secret_back(client, alice):
    client.force_login(alice)
    spec = {
        "type": "endpoint",
        "name": "remote",
        "url": "https://grader.example.com/grade",
        "headers": {"Authorization": "Bearer TYPED-SECRET-5566778899"},
        "timeout_s": -1,
    }
    htmx = client.post("/graders/new/", {"mode": "json", "spec": json.dumps(spec)}, **HTMX)
    assert htmx["HX-Retarget"] == "#spec-check"  # only the messages are swapped in
    assert "timeout_s: must be a number of seconds" in htmx.content.decode()
    plain = client.post("/graders/new/", {"mode": "json", "spec": json.dumps(spec)})
    multi = client.post(
        "/graders/new/",
        {
            "mode": "form",
            "name": "total",
            "type": "multi",
            "multi-calculate_output": "a + b",
            "multi-graders": json.dumps({"a": spec}),
        },
        **HTMX,
    )
    for response in (htmx, plain, multi):
        assert "TYPED-SECRET" not in response.content.decode()
    assert "••••8899" in plain.content.decode() and "••••8899" in multi.content.decode()
    # Sending the masked text back does not silently drop the secret: it asks for it.
    masked = {**spec, "timeout_s": 5, "headers": {"Authorization": "••••8899"}}
    with pytest.raises(grader_services.GraderValidationError) as error:
        grader_services.create_grader(owner=alice, spec=masked)
    assert error.value.by_path == {"headers": ["Authorization: enter the header value"]}
    with pytest.raises(grader_services.GraderValidationError) as error:
        grader_services.create_grader(owner=alice, spec={**masked, "headers": {}, "signing_secret": "••••"})
    assert error.value.by_path == {"signing_secret": ["enter the value"]}
