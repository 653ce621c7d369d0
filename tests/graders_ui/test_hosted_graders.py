"""Grader JSON from the hosted agent-RFT docs, pasted unchanged: through the API, the paste form and
the hosted-shape `graders/run` / `graders/validate`, scored against hand-computed values.

The judge and the embeddings endpoint are a real HTTP server on 127.0.0.1 that speaks the
OpenAI chat-completions and embeddings shapes (no mocks).
"""

from __future__ import annotations

import json
import math

import pytest
from rest_framework.test import APIClient

from experiments.models import DatasetItem, Grader
from experiments.models.dataset import DatasetStatus
from experiments.services.api_tokens import create_token
from experiments.services.run_launch import RunValidationError, create_run
from tests.factories import DatasetFactory
from tests.http_test_server import Reply, ScriptedServer
from trainer.graders import GraderContext, build_grader
from trainer.graders.base import Grader as GraderBase
from trainer.metrics import rollout_metrics
from trainer.rollout import Rollout

pytestmark = [pytest.mark.django_db]

HTMX = {"HTTP_HX_REQUEST": "true"}

# --- the hosted docs' examples, verbatim ---------------------------------------------------------------------

LABEL_MODEL = {
    "name": "First label grader",
    "type": "label_model",
    "model": "gpt-4o-2024-08-06",
    "input": [
        {
            "type": "message",
            "role": "system",
            "content": {
                "type": "input_text",
                "text": "Classify the sentiment of the following statement as one of positive, neutral, or negative",
            },
        },
        {
            "type": "message",
            "role": "user",
            "content": {"type": "input_text", "text": "Statement: {{item.response}}"},
        },
    ],
    "passing_labels": ["positive"],
    "labels": ["positive", "neutral", "negative"],
}

SCORE_MODEL = {
    "type": "score_model",
    "name": "Example score model grader",
    "input": [
        {
            "role": "user",
            "content": (
                "Score how close the reference answer is to the model answer. Score 1.0 if they are the same "
                "and 0.0 if they are different. Return just a floating point score\n\n"
                "Reference answer: {{item.reference_answer}}\n\nModel answer: {{sample.output_text}}"
            ),
        }
    ],
    "model": "o4-mini-2025-04-16",
    "sampling_params": {
        "temperature": 1,
        "top_p": 1,
        "seed": 42,
        "max_completions_tokens": 32768,
        "reasoning_effort": "medium",
    },
    "pass_threshold": 0.5,
}

COSINE = {
    "type": "text_similarity",
    "name": "Example text similarity grader",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "evaluation_metric": "cosine",
    "pass_threshold": 0.5,
}

MULTI_WITHOUT_NAME = {
    "type": "multi",
    "graders": {
        "name": {
            "name": "name_grader",
            "type": "text_similarity",
            "input": "{{sample.output_json.name}}",
            "reference": "{{item.name}}",
            "evaluation_metric": "fuzzy_match",
            "pass_threshold": 0.9,
        },
        "email": {
            "name": "email_grader",
            "type": "string_check",
            "input": "{{sample.output_json.email}}",
            "reference": "{{item.email}}",
            "operation": "eq",
        },
    },
    "calculate_output": "(name + email) / 2",
}

STRING_CHECK = {
    "type": "string_check",
    "name": "Example string check grader",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}

FUZZY = {
    "type": "text_similarity",
    "name": "Example text similarity grader",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "evaluation_metric": "fuzzy_match",
}

# --- a real OpenAI-compatible server ------------------------------------------------------------------------

# Embeddings chosen so that the cosines are easy to compute by hand.
VECTORS = {
    "Paris is the capital of France.": [1.0, 0.0, 0.0],
    "The capital of France is Paris.": [0.6, 0.8, 0.0],
    "Bananas are yellow.": [0.0, 0.0, 1.0],
    "Nothing like it.": [-1.0, 0.0, 0.0],
}
# What the judge answers, by a phrase of the last user message.
JUDGE_ANSWERS = {
    "I love this product": '{"label": "positive"}',
    "It broke on day one": "negative",
    "Model answer: 42": "0.7",
    "Model answer: 41": "0.2",
}


def _judge(request) -> Reply:
    body = json.loads(request.body)
    last = body["messages"][-1]["content"]
    content = next((answer for phrase, answer in JUDGE_ANSWERS.items() if phrase in last), "no idea")
    answer = {
        "choices": [{"message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53},
    }
    return Reply(body=json.dumps(answer).encode())


def _embeddings(request) -> Reply:
    body = json.loads(request.body)
    data = [
        {"object": "embedding", "index": i, "embedding": VECTORS[text]}
        for i, text in enumerate(body["input"])
    ]
    answer = {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": 12, "total_tokens": 12},
    }
    return Reply(body=json.dumps(answer).encode())


@pytest.fixture
def openai_server(settings):
    server = ScriptedServer()
    server.routes["/v1/chat/completions"] = _judge
    server.routes["/v1/embeddings"] = _embeddings
    settings.RFT_JUDGE_BASE_URL = server.url("/v1")
    settings.RFT_EMBEDDINGS_BASE_URL = server.url("/v1")
    yield server
    server.close()


@pytest.fixture
def no_endpoints(settings):
    settings.RFT_JUDGE_BASE_URL = None
    settings.RFT_EMBEDDINGS_BASE_URL = None


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def token_api(alice):
    """An API client authenticated by token only (no session), as a script would be."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user=alice, name='test').key}")
    return client


def _hosted_run(api, grader, model_sample, item, path="/api/v1/graders/run"):
    response = api.post(path, {"grader": grader, "model_sample": model_sample, "item": item}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


# --- hand-computed scores through the hosted-shape run endpoint ----------------------------------------------

# (grader, model sample, item, reward, sub_rewards) — worked out by hand:
HAND_COMPUTED = [
    (STRING_CHECK, "positive", {"label": "positive"}, 1.0, {}),
    (STRING_CHECK, "Positive", {"label": "positive"}, 0.0, {}),  # eq is case-sensitive
    # one deletion turns "John Doe" into "Jon Doe": 1 - 1/15 (Indel distance over 15 characters)
    (FUZZY, "John Doe", {"reference_answer": "Jon Doe"}, 14 / 15, {}),
    # the judge picks "positive", a passing label
    (LABEL_MODEL, "", {"response": "I love this product"}, 1.0, {}),
    # the judge answers "negative" in plain text (ignoring response_format): not a passing label
    (LABEL_MODEL, "", {"response": "It broke on day one"}, 0.0, {}),
    # the judge answers "0.7"
    (SCORE_MODEL, "42", {"reference_answer": "42"}, 0.7, {}),
    # cos([1,0,0], [0.6,0.8,0]) = 0.6 / (1 * 1) = 0.6
    (
        COSINE,
        "Paris is the capital of France.",
        {"reference_answer": "The capital of France is Paris."},
        0.6,
        {},
    ),
    # cos([1,0,0], [-1,0,0]) = -1: the hosted cosine range is [-1, 1]
    (COSINE, "Paris is the capital of France.", {"reference_answer": "Nothing like it."}, -1.0, {}),
    # name: fuzzy ratio of "John Doe" / "Jon Doe" = 1 - 1/15 (one deletion over 15 characters) = 14/15;
    # email: eq -> 1; (14/15 + 1) / 2 = 29/30
    (
        MULTI_WITHOUT_NAME,
        '{"name": "John Doe", "email": "jd@example.com"}',
        {"name": "Jon Doe", "email": "jd@example.com"},
        29 / 30,
        {"name": 14 / 15, "email": 1.0},
    ),
    # label_model inside a multi: positive (1) * exact (1)
    (
        {
            "type": "multi",
            "name": "sentiment and answer",
            "graders": {
                "sentiment": LABEL_MODEL,
                "exact": {
                    "type": "string_check",
                    "name": "exact",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                },
            },
            "calculate_output": "sentiment * exact",
        },
        "yes",
        {"response": "I love this product", "answer": "yes"},
        1.0,
        {"sentiment": 1.0, "exact": 1.0},
    ),
]


@pytest.mark.parametrize(("grader", "model_sample", "item", "reward", "sub_rewards"), HAND_COMPUTED)
def test_hosted_run_scores_the_docs_examples_as_hand_computed(
    token_api, openai_server, grader, model_sample, item, reward, sub_rewards
):
    answer = _hosted_run(token_api, grader, model_sample, item)
    assert set(answer) == {"reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"}
    assert math.isclose(answer["reward"], reward, abs_tol=1e-9), answer
    assert answer["sub_rewards"].keys() == sub_rewards.keys()
    for key, value in sub_rewards.items():
        assert math.isclose(answer["sub_rewards"][key], value, abs_tol=1e-9)
    metadata = answer["metadata"]
    assert metadata["type"] == grader["type"]
    assert not any(value is True for value in metadata["errors"].values()), metadata["errors"]
    assert metadata["execution_time"] > 0


def test_hosted_run_reports_metadata_like_the_hosted_service(token_api, openai_server):
    answer = _hosted_run(token_api, SCORE_MODEL, "42", {"reference_answer": "42"})
    metadata = answer["metadata"]
    assert metadata["name"] == "Example score model grader"
    assert metadata["sampled_model_name"] == "o4-mini-2025-04-16"
    assert metadata["token_usage"] == {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53}
    assert answer["model_grader_token_usage_per_model"] == {"o4-mini-2025-04-16": metadata["token_usage"]}
    assert metadata["passed"] == {"Example score model grader": True}  # 0.7 >= pass_threshold 0.5
    # The judge got chat-completions' spelling of the token cap, and the other sampling parameters.
    sent = json.loads(openai_server.requests[-1].body)
    assert sent["max_completion_tokens"] == 32768 and "max_completions_tokens" not in sent
    assert (sent["temperature"], sent["top_p"], sent["seed"], sent["reasoning_effort"]) == (
        1,
        1,
        42,
        "medium",
    )
    assert sent["model"] == "o4-mini-2025-04-16"
    assert "Reference answer: 42" in sent["messages"][0]["content"]


def test_label_model_asks_for_one_of_the_labels(token_api, openai_server):
    _hosted_run(token_api, LABEL_MODEL, "", {"response": "I love this product"})
    sent = json.loads(openai_server.requests[-1].body)
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][1]["content"] == "Statement: I love this product"
    schema = sent["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["positive", "neutral", "negative"]


def test_hosted_run_flags_errors_in_the_hosted_shape(token_api, no_endpoints):
    answer = _hosted_run(token_api, SCORE_MODEL, "42", {"reference_answer": "42"})
    assert answer["reward"] is None  # no silent 0
    errors = answer["metadata"]["errors"]
    assert errors["model_grader_server_error"] is True
    assert "needs a judge endpoint" in errors["model_grader_server_error_details"]
    python = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1 / 0\n"}
    from trainer.graders import sandbox_status

    if sandbox_status().available:
        errors = _hosted_run(token_api, python, "x", {})["metadata"]["errors"]
        assert errors["python_grader_runtime_error"] is True
        assert "ZeroDivisionError" in errors["python_grader_runtime_error_details"]
    formula = {**MULTI_WITHOUT_NAME, "calculate_output": "name / (email - 1)"}
    answer = _hosted_run(token_api, formula, '{"name": "a", "email": "b"}', {"name": "a", "email": "b"})
    assert answer["reward"] is None and answer["metadata"]["errors"]["formula_parse_error"] is True


def test_hosted_paths_with_the_hosted_prefix_and_without_a_slash(token_api, openai_server):
    grader = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_text}}",
        "reference": "a",
        "operation": "eq",
    }
    for path in ("/api/v1/graders/run", "/api/v1/graders/run/", "/api/v1/fine_tuning/alpha/graders/run"):
        assert _hosted_run(token_api, grader, "a", {}, path=path)["reward"] == 1.0


def test_hosted_validate_echoes_a_valid_grader_and_names_the_field_of_an_invalid_one(token_api):
    valid = token_api.post("/api/v1/graders/validate", {"grader": MULTI_WITHOUT_NAME}, format="json")
    assert valid.status_code == 200 and valid.json() == {"grader": MULTI_WITHOUT_NAME}
    secret = {**SCORE_MODEL, "api_key": "sk-THE-SECRET-1234"}
    echoed = token_api.post("/api/v1/graders/validate", {"grader": secret}, format="json").json()
    assert echoed["grader"]["api_key"].endswith("1234") and "THE-SECRET" not in json.dumps(echoed)
    bad = {**LABEL_MODEL, "passing_labels": ["great"]}
    refused = token_api.post("/api/v1/fine_tuning/alpha/graders/validate", {"grader": bad}, format="json")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "grader.passing_labels"
    assert "not among the labels: great" in error["message"]


def test_hosted_endpoints_need_authentication():
    anonymous = APIClient()
    assert anonymous.post(
        "/api/v1/graders/run", {"grader": {}, "model_sample": ""}, format="json"
    ).status_code in (
        401,
        403,
    )
    assert anonymous.post("/api/v1/graders/validate", {"grader": {}}, format="json").status_code in (401, 403)


# --- the same JSON through the graders API and the paste form ---------------------------------------------


@pytest.mark.parametrize(("grader", "model_sample", "item", "reward", "sub_rewards"), HAND_COMPUTED)
def test_saved_through_the_api_and_run_as_a_rollout_is_scored(
    token_api, openai_server, grader, model_sample, item, reward, sub_rewards
):
    created = token_api.post("/api/v1/graders/", {"spec": grader}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["needs"] == []
    run = token_api.post(
        f"/api/v1/graders/{created.json()['id']}/run/",
        {"output_text": model_sample, "item": item},
        format="json",
    ).json()
    assert math.isclose(run["score"], reward, abs_tol=1e-9), run


def test_pasted_in_the_form_and_scored_in_the_run_panel(client, alice, openai_server):
    client.force_login(alice)
    examples = [
        (LABEL_MODEL, "", {"response": "I love this product"}, "1.0000"),
        (SCORE_MODEL, "41", {"reference_answer": "42"}, "0.2000"),
        (
            COSINE,
            "Paris is the capital of France.",
            {"reference_answer": "The capital of France is Paris."},
            "0.6000",
        ),
        (
            MULTI_WITHOUT_NAME,
            '{"name": "John Doe", "email": "jd@example.com"}',
            {"name": "Jon Doe", "email": "jd@example.com"},
            f"{29 / 30:.4f}",
        ),
    ]
    for spec, output, item, shown in examples:
        saved = client.post("/graders/new/", {"mode": "json", "spec": json.dumps(spec)}, **HTMX)
        assert saved.status_code == 204, saved.content.decode()[:2000]
        grader = Grader.objects.filter(owner=alice).order_by("-pk").first()
        assert grader.type == spec["type"]
        html = client.post(
            f"/graders/{grader.pk}/run/",
            {"output_text": output, "output_tools": "", "item": json.dumps(item)},
            **HTMX,
        ).content.decode()
        assert f'data-testid="grade-score">{shown}<' in html, html[:3000]
    # The multi grader pasted without a name got one from its sub-graders, numbered on a clash.
    assert Grader.objects.filter(owner=alice, name="multi: name, email").exists()
    client.post("/graders/new/", {"mode": "json", "spec": json.dumps(MULTI_WITHOUT_NAME)}, **HTMX)
    assert Grader.objects.filter(owner=alice, name="multi: name, email (2)").exists()


# --- no judge / embeddings endpoint: saved as pasted, shown as needing one, runs refused ----------------------


def test_without_endpoints_graders_are_saved_shown_as_needing_them_and_runs_refused(
    client, alice, no_endpoints
):
    client.force_login(alice)
    for spec in (SCORE_MODEL, LABEL_MODEL, COSINE):
        assert (
            client.post("/graders/new/", {"mode": "json", "spec": json.dumps(spec)}, **HTMX).status_code
            == 204
        )
    judge = Grader.objects.get(owner=alice, name=SCORE_MODEL["name"])
    assert judge.spec == SCORE_MODEL  # as pasted
    page = client.get(f"/graders/{judge.pk}/").content.decode()
    assert 'id="grader-needs"' in page and "needs a judge endpoint" in page
    listing = client.get("/graders/").content.decode()
    assert "needs a judge endpoint" in listing and "needs an embeddings endpoint" in listing
    api = client.get(f"/api/v1/graders/{judge.pk}/").json()
    assert api["needs"] and "needs a judge endpoint" in api["needs"][0]

    dataset = DatasetFactory(owner=alice, status=DatasetStatus.READY, item_count=1)
    DatasetItem.objects.create(
        dataset=dataset,
        index=0,
        line_number=1,
        data={"messages": [{"role": "user", "content": "q"}]},
        message_count=1,
    )
    with pytest.raises(RunValidationError) as refused:
        create_run(
            owner=alice,
            name="r",
            base_model="tiny",
            train_dataset=dataset,
            eval_dataset=None,
            tools=[],
            grader=judge,
            config={},
            start=False,
        )
    assert any("needs a judge endpoint" in message for message in refused.value.errors["grader"])
    # A readiness check scores with the grader too: refused for the same reason.
    from experiments.services.readiness import ReadinessError, create_readiness_report

    with pytest.raises(ReadinessError) as not_ready:
        create_readiness_report(
            owner=alice, base_model="tiny", dataset=dataset, tools=[], grader=judge, start=False
        )
    assert "needs a judge endpoint" in str(not_ready.value)


# --- the trainer side: pass rates and score ranges ---------------------------------------------------------


def test_pass_threshold_becomes_a_pass_rate_metric(openai_server):
    grader = build_grader(MULTI_WITHOUT_NAME)
    samples = [("John Doe", "Jon Doe"), ("Zed", "Jon Doe"), ("Jon Doe", "Jon Doe")]  # 14/15, ~0, 1 vs 0.9
    rollouts = []
    for index, (said, reference) in enumerate(samples):
        from trainer.graders.run import make_sample
        from trainer.outbound.client import run_sync

        sample = make_sample(output_text=json.dumps({"name": said, "email": "e"}))
        result = run_sync(
            lambda s=sample, r=reference: grader.grade(s, {"name": r, "email": "e"}, trace_id="t")
        )
        rollout = Rollout(
            trace_id=f"t{index}",
            split="train",
            item={},
            item_index=index,
            group_index=0,
            sample_index=index,
            tools=[],
            messages=[],
            prompt_ids=[],
            grade=result,
            reward=result.score,
        )
        rollouts.append(rollout)
    metrics = rollout_metrics(rollouts)
    assert math.isclose(metrics["rewards/name/pass_rate"], 2 / 3)
    assert "rewards/email/pass_rate" not in metrics  # no pass_threshold there


def test_each_type_declares_its_score_range():
    context = GraderContext(
        judge_base_url="https://judge.example.com/v1", embeddings_base_url="https://e.example.com/v1"
    )
    assert build_grader(LABEL_MODEL, context=context).score_range() == (0.0, 1.0)
    assert build_grader(COSINE, context=context).score_range() == (-1.0, 1.0)
    assert build_grader({**SCORE_MODEL, "range": [1, 7]}, context=context).score_range() == (1.0, 7.0)
    assert build_grader({**COSINE, "evaluation_metric": "bleu"}).score_range() == (0.0, 1.0)
    assert isinstance(build_grader(MULTI_WITHOUT_NAME), GraderBase)


def test_pages_show_no_template_comment_text(client, alice):
    # A {# #} comment over two lines is not a comment in Django: it would print on every page.
    client.force_login(alice)
    assert "Settle at once" not in client.get("/graders/").content.decode()


def test_hosted_run_is_rate_limited_like_the_run_panel(token_api, settings):
    settings.RFT_RATE_LIMITS = {**settings.RFT_RATE_LIMITS, "grader_run": "2/minute"}
    grader = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_text}}",
        "reference": "a",
        "operation": "eq",
    }
    body = {"grader": grader, "model_sample": "a"}
    assert [token_api.post("/api/v1/graders/run", body, format="json").status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = token_api.post("/api/v1/graders/run", body, format="json")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
