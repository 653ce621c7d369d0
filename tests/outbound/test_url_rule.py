"""One URL rule for every outbound URL, at registration and at call time.

Each kind of URL the app stores or calls — a tool's endpoint (form, API create and update), an
endpoint grader's URL and a model judge's base URL (form, pasted JSON, API), a run file's tool (for
`python -m trainer`) — is refused for the same reasons with the same message, and the client refuses
the same URLs when asked to call them. A single-label host ("tool-server", a docker service) passes
everywhere (Django's URLField refused it, and took ftp://).
"""

from __future__ import annotations

import json

import pytest

from experiments.models import Grader, Tool
from tests.factories import ToolFactory, UserFactory
from trainer.outbound.client import InvalidURLError, OutboundClient
from trainer.outbound.policy import OutboundPolicy
from trainer.standalone import tool_endpoint

HTMX = {"HTTP_HX_REQUEST": "true"}
PARAMETERS = {"type": "object", "properties": {"q": {"type": "string"}}}

BAD_URLS = [
    ("ftp://tools.example.com/x", "only http:// and https:// urls can be called"),
    ("file:///etc/passwd", "only http:// and https:// urls can be called"),
    ("javascript:alert(1)", "only http:// and https:// urls can be called"),
    ("tools.example.com/x", "only http:// and https:// urls can be called"),
    ("http://user:hunter2@tools.example.com/x", "credentials in the url are not allowed"),
    ("http:///x", "the url has no host"),
    ("https://tools.example.com:99999/x", "the port must be between 1 and 65535"),
    ("http://tools example.com/x", "the host is not a valid host name or ip address"),
    ("https://tools.example.com/" + "a" * 2000, "the url is longer than 2000 characters"),
]
GOOD_URL = "http://tool-server:8080/grade"


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


def tool_form(url: str) -> dict:
    return {
        "name": "search",
        "description": "Searches.",
        "parameters": json.dumps(PARAMETERS),
        "url": url,
        "header_name": [],
        "header_value": [],
        "signing_secret": "",
        "timeout_s": "30",
        "max_response_bytes": "1000000",
    }


def endpoint_spec(url: str, name: str) -> dict:
    return {"type": "endpoint", "name": name, "url": url}


def judge_spec(base_url: str, name: str) -> dict:
    return {
        "type": "score_model",
        "name": name,
        "model": "m",
        "base_url": base_url,
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    }


def registration_errors(client, url: str) -> dict[str, str]:
    """What each registration path answers for `url` (lower-cased), by path."""
    answers: dict[str, str] = {}
    answers["tool form"] = client.post("/tools/new/", tool_form(url), **HTMX).content.decode()
    created = client.post(
        "/api/v1/tools/",
        {"name": "search_api", "parameters": PARAMETERS, "url": url},
        content_type="application/json",
    )
    answers["tool API create"] = f"{created.status_code} {created.content.decode()}"
    tool = ToolFactory(owner=client.session_user, url="https://tools.example.com/ok")
    updated = client.patch(f"/api/v1/tools/{tool.pk}/", {"url": url}, content_type="application/json")
    answers["tool API update"] = f"{updated.status_code} {updated.content.decode()}"
    answers["endpoint grader form"] = client.post(
        "/graders/new/",
        {
            "mode": "form",
            "name": "remote_form",
            "type": "endpoint",
            "endpoint-url": url,
            "endpoint-timeout_s": "20",
            "endpoint-header_name": [],
            "endpoint-header_value": [],
            "endpoint-signing_secret": "",
        },
        **HTMX,
    ).content.decode()
    answers["endpoint grader JSON"] = client.post(
        "/graders/new/", {"mode": "json", "spec": json.dumps(endpoint_spec(url, "remote_json"))}, **HTMX
    ).content.decode()
    answers["judge form"] = client.post(
        "/graders/new/",
        {
            "mode": "form",
            "name": "judge_form",
            "type": "score_model",
            "score_model-model": "m",
            "score_model-base_url": url,
            "score_model-api_key": "",
            "score_model-input": json.dumps(judge_spec(url, "judge_form")["input"]),
            "score_model-range_low": "0",
            "score_model-range_high": "1",
        },
        **HTMX,
    ).content.decode()
    for label, spec in (
        ("endpoint grader API", endpoint_spec(url, "remote_api")),
        ("judge API", judge_spec(url, "judge_api")),
    ):
        response = client.post("/api/v1/graders/", {"spec": spec}, content_type="application/json")
        answers[label] = f"{response.status_code} {response.content.decode()}"
    return {label: answer.lower().replace("&#x27;", "'") for label, answer in answers.items()}


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_every_kind_of_url_is_refused_at_registration_for_the_same_reason(client, alice, url, message):
    client.force_login(alice)
    client.session_user = alice
    answers = registration_errors(client, url)
    assert {label: message in answer for label, answer in answers.items()} == dict.fromkeys(answers, True)
    for label in ("tool API create", "tool API update", "endpoint grader API", "judge API"):
        assert answers[label].startswith("400 "), (label, answers[label][:200])
    assert list(Tool.objects.values_list("url", flat=True)) == ["https://tools.example.com/ok"]
    assert not Grader.objects.exists()
    # A password in a URL is not echoed in any error (forms re-show the typed value in its field).
    api_answers = [answer for label, answer in answers.items() if "api" in label.lower()]
    assert "hunter2" not in " ".join(api_answers)


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
async def test_the_client_refuses_the_same_urls_when_calling(url, message):
    async with OutboundClient(policy=OutboundPolicy(allow_loopback=True)) as client:
        with pytest.raises(InvalidURLError) as info:
            await client.request("POST", url, content=b"{}")
    assert info.value.message.lower() == message or info.value.message.lower().startswith(message)
    assert info.value.error_type == "blocked"


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_run_files_refuse_the_same_urls(url, message):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError) as info:
        tool_endpoint({"name": "t", "url": url}, where="tools[0]")
    assert message in str(info.value).lower()


def test_a_single_label_host_is_accepted_everywhere(client, alice):
    client.force_login(alice)
    client.session_user = alice
    answers = registration_errors(client, GOOD_URL)
    assert answers["tool API create"].startswith("201 ")
    assert answers["tool API update"].startswith("200 ")
    assert answers["endpoint grader API"].startswith("201 ")
    assert answers["judge API"].startswith("201 ")
    assert Tool.objects.filter(url=GOOD_URL).count() == 3  # form, API create, API update
    # Form and pasted JSON each saved one endpoint grader and one judge besides the API's.
    assert Grader.objects.filter(spec__url=GOOD_URL).count() == 3
    assert Grader.objects.filter(spec__base_url=GOOD_URL).count() == 2
    assert tool_endpoint({"name": "t", "url": GOOD_URL}, where="tools[0]").url == GOOD_URL


def test_outbound_urls_in_settings_obey_the_rule(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    from experiments.checks import check_outbound_url_settings

    settings.RFT_JUDGE_BASE_URL = "https://judge.internal:8443/v1"
    assert check_outbound_url_settings() == []
    settings.RFT_JUDGE_BASE_URL = "ftp://judge.example.com/v1"
    [error] = check_outbound_url_settings()
    assert error.id == "experiments.E001"
    assert error.msg == (
        "RFT_JUDGE_BASE_URL is not a usable outbound URL: only http:// and https:// URLs can be called."
    )
    with pytest.raises(SystemCheckError, match="RFT_JUDGE_BASE_URL"):
        call_command("check")
