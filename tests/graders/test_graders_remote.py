"""Endpoint graders and model judges against real local HTTP servers."""

import json

import pytest

from tests.http_test_server import Reply
from trainer.graders import GraderContext, build_grader, make_sample, run_grader
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.signing import verify_signature

DEV = GraderContext(policy=OutboundPolicy(allow_loopback=True), retry_backoff_s=0.01, max_retries=2)
TRAJECTORY = [
    {"role": "user", "content": "What do 3 SKU-1001 cost?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"key": "SKU-1001"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"price_usd": 4.99}'},
    {"role": "assistant", "content": "14.97 USD"},
]
API_KEY = "sk-judge-secret-abcdef123456"


def trajectory_sample():
    return make_sample(
        output_text="14.97 USD",
        output_tools=TRAJECTORY[1]["tool_calls"],
        messages=TRAJECTORY,
        trace_id="trace_remote",
    )


def test_endpoint_grader_against_the_demo_server(demo_server):
    spec = {
        "type": "endpoint",
        "name": "remote",
        "url": demo_server.grade_url,
        "headers": {},
        "signing_secret": "whsec_grade",
    }
    result = run_grader(spec, trajectory_sample(), {"answer": "14.97"}, context=DEV)
    assert result.score == 1.0 and result.sub_scores == {"remote": 1.0} and result.errors == []
    assert result.latency_ms > 0
    unsigned = run_grader(
        {**spec, "signing_secret": None}, trajectory_sample(), {"answer": "14.97"}, context=DEV
    )
    assert unsigned.score is None and unsigned.errors[0]["type"] == "http_4xx"


def test_endpoint_receives_the_full_trajectory(scripted_server):
    scripted_server.routes["/grade"] = lambda request: Reply(body=b'{"score": 0.75}')
    spec = {
        "type": "endpoint",
        "name": "remote",
        "url": scripted_server.url("/grade"),
        "headers": {"Authorization": "Bearer grader-token-0001"},
        "signing_secret": "whsec_s",
    }
    item = {"answer": "14.97", "messages": TRAJECTORY[:1]}
    result = run_grader(spec, trajectory_sample(), item, context=DEV, trace_id="trace_remote")
    assert result.score == 0.75
    [request] = scripted_server.requests
    body = json.loads(request.body)
    assert body["trace_id"] == "trace_remote"
    assert body["item"] == item
    assert body["sample"]["messages"] == TRAJECTORY
    assert body["sample"]["output_tools"][0]["function"]["name"] == "lookup"
    assert body["sample"]["output_text"] == "14.97 USD"
    assert request.headers["x-rft-rollout-id"] == "trace_remote"
    assert request.headers["authorization"] == "Bearer grader-token-0001"
    assert verify_signature(secret="whsec_s", body=request.body, header=request.headers["x-rft-signature"])


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (Reply(body=b'{"score": "high"}'), "invalid_score"),
        (Reply(body=b'{"score": NaN}'), "invalid_score"),
        (Reply(body=b'{"result": 1}'), "invalid_response"),
        (Reply(body=b"not json", content_type="text/plain"), "invalid_response"),
        (Reply(status=422, body=b'{"error": "bad sample"}'), "http_4xx"),
        (Reply(status=500, body=b"boom"), "http_5xx"),
    ],
)
def test_endpoint_failures_are_grader_errors(scripted_server, reply, error_type):
    scripted_server.routes["/grade"] = lambda request: reply
    spec = {
        "type": "endpoint",
        "name": "remote",
        "url": scripted_server.url("/grade"),
        "headers": {"X-Key": "grader-secret-key-99"},
    }
    result = run_grader(spec, trajectory_sample(), {}, context=DEV)
    assert result.score is None
    assert result.errors[0]["type"] == error_type
    assert "grader-secret-key-99" not in json.dumps(result.errors)
    if error_type == "http_5xx":
        assert len(scripted_server.requests) == 1 + DEV.max_retries


def test_endpoint_to_a_private_address_is_blocked_in_production(scripted_server):
    scripted_server.routes["/grade"] = lambda request: Reply(body=b'{"score": 1}')
    spec = {"type": "endpoint", "name": "remote", "url": scripted_server.url("/grade")}
    result = run_grader(spec, trajectory_sample(), {}, context=GraderContext())
    assert result.score is None and result.errors[0]["type"] == "blocked"
    assert scripted_server.requests == []


def judge_replying(content, *, status=200):
    def handler(request):
        return Reply(
            status=status,
            body=json.dumps(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
            ).encode(),
        )

    return handler


def judge_spec(server, **overrides):
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": "judge-small",
        "input": [
            {"role": "developer", "content": "Grade the answer from 0 to 1."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Q: {{item.question}}\nA: {{sample.output_text}}"}
                ],
            },
        ],
        "range": [0, 1],
        "sampling_params": {"temperature": 0},
        "base_url": server.url("/v1"),
        "api_key": API_KEY,
    }
    return {**spec, **overrides}


def test_score_model_sends_an_openai_chat_request(scripted_server):
    scripted_server.routes["/v1/chat/completions"] = judge_replying('{"score": 0.8}')
    result = run_grader(
        judge_spec(scripted_server), trajectory_sample(), {"question": "Price of 3?"}, context=DEV
    )
    assert result.score == pytest.approx(0.8) and result.sub_scores == {"judge": pytest.approx(0.8)}
    [request] = scripted_server.requests
    body = json.loads(request.body)
    assert body == {
        "temperature": 0,
        "model": "judge-small",
        "messages": [
            {"role": "system", "content": "Grade the answer from 0 to 1."},
            {"role": "user", "content": "Q: Price of 3?\nA: 14.97 USD"},
        ],
    }
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("0.6", 0.6),
        ("Score: 0.35\nThe answer misses the unit.", 0.35),
        ('```json\n{"result": 1}\n```', 1.0),
        # Outside the judge's range [0, 1]: a grader error, never clipped into a reward (issue 13).
        ("I'd rate it 7 out of 10", None),
        ("-2", None),
    ],
)
def test_score_model_parses_and_checks_the_range(scripted_server, content, expected):
    scripted_server.routes["/v1/chat/completions"] = judge_replying(content)
    result = run_grader(judge_spec(scripted_server), trajectory_sample(), {"question": "q"}, context=DEV)
    if expected is None:
        assert result.score is None
        assert [error["type"] for error in result.errors] == ["out_of_range"]
        assert "outside the grader's range [0, 1]" in result.errors[0]["message"]
    else:
        assert result.score == pytest.approx(expected)


def test_score_model_range_and_default_endpoint(scripted_server):
    scripted_server.routes["/v1/chat/completions"] = judge_replying("Rating: 7")
    context = GraderContext(
        policy=OutboundPolicy(allow_loopback=True),
        judge_base_url=scripted_server.url("/v1"),
        judge_api_key=API_KEY,
    )
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": "m",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "range": [1, 10],
    }
    result = run_grader(spec, trajectory_sample(), {}, context=context)
    assert result.score == 7.0
    assert scripted_server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in repr(context) and API_KEY not in repr(build_grader(spec, context=context))


@pytest.mark.parametrize(
    ("handler", "error_type"),
    [
        (judge_replying("I cannot grade this."), "invalid_response"),
        (lambda request: Reply(body=b'{"choices": []}'), "invalid_response"),
        (judge_replying("nope", status=401), "http_4xx"),
    ],
)
def test_score_model_failures_are_grader_errors(scripted_server, handler, error_type):
    scripted_server.routes["/v1/chat/completions"] = handler
    result = run_grader(judge_spec(scripted_server), trajectory_sample(), {"question": "q"}, context=DEV)
    assert result.score is None and result.errors[0]["type"] == error_type
    assert API_KEY not in json.dumps(result.errors)


def test_multi_over_remote_and_local_graders(scripted_server, demo_server):
    scripted_server.routes["/v1/chat/completions"] = judge_replying("0.5")
    spec = {
        "type": "multi",
        "name": "total",
        "graders": {
            "judge": judge_spec(scripted_server),
            "remote": {"type": "endpoint", "url": demo_server.grade_url, "signing_secret": "whsec_grade"},
            "used_lookup": {
                "type": "string_check",
                "input": "{{sample.output_tools[0].function.name}}",
                "reference": "lookup",
                "operation": "eq",
            },
        },
        "calculate_output": "0.5 * judge + 0.25 * remote + 0.25 * used_lookup",
    }
    result = run_grader(spec, trajectory_sample(), {"question": "q", "answer": "14.97"}, context=DEV)
    assert result.errors == []
    assert result.sub_scores == {"judge": 0.5, "remote": 1.0, "used_lookup": 1.0}
    assert result.score == pytest.approx(0.75)
