"""Every grader's score is checked: finite and within the grader's range, else a grader error (counted,
excluded from the update, its value shown in the rollout view), never a reward (issue 13, item 4)."""

from __future__ import annotations

import json
import math

import pytest

from tests.http_test_server import Reply, ScriptedServer
from trainer.graders import GraderContext, build_grader, make_sample, run_grader, sandbox_status
from trainer.outbound.policy import OutboundPolicy

LOOPBACK = GraderContext(policy=OutboundPolicy(allow_loopback=True), max_retries=0)
SANDBOX = pytest.mark.skipif(not sandbox_status().available, reason=sandbox_status().reason)


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def grade(spec, *, output_text="answer", item=None):
    return run_grader(
        spec, make_sample(output_text=output_text), item or {"answer": "answer"}, context=LOOPBACK
    )


def only_error(result) -> dict:
    assert result.score is None, f"expected a grader error, got the reward {result.score}"
    [error] = result.errors
    return error


BUILTIN_SPECS = {
    "string_check": {
        "type": "string_check",
        "name": "g",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    },
    "text_similarity": {
        "type": "text_similarity",
        "name": "g",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
    },
    "set_match": {
        "type": "set_match",
        "name": "g",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
    },
}


@pytest.mark.parametrize("kind", sorted(BUILTIN_SPECS))
def test_builtin_graders_score_within_0_and_1(kind):
    grader = build_grader(BUILTIN_SPECS[kind], context=LOOPBACK)
    assert grader.score_range() == (0.0, 1.0)
    for output in ("answer", "something else entirely", ""):
        result = grade(BUILTIN_SPECS[kind], output_text=output)
        assert result.errors == [] and 0.0 <= result.score <= 1.0


def endpoint_answering(server: ScriptedServer, body: bytes, **spec):
    server.routes["/grade"] = lambda request: Reply(body=body)
    return {"type": "endpoint", "name": "remote", "url": server.url("/grade"), **spec}


@pytest.mark.parametrize(
    ("body", "error_type", "shown"),
    [
        (b'{"score": 1e308}', "out_of_range", "1e+308"),
        (b'{"score": 1.5}', "out_of_range", "1.5"),
        (b'{"score": -0.1}', "out_of_range", "-0.1"),
        (b'{"score": NaN}', "invalid_score", "nan"),
        (b'{"score": Infinity}', "invalid_score", "inf"),
        (b'{"score": "0.5"}', "invalid_score", "'0.5'"),
        (b'{"score": true}', "invalid_score", "True"),
    ],
)
def test_endpoint_scores_outside_0_1_are_grader_errors(server, body, error_type, shown):
    error = only_error(grade(endpoint_answering(server, body)))
    assert error["type"] == error_type
    assert error["grader"] == "remote"
    assert shown in error["message"]


def test_an_endpoint_grader_may_declare_its_range(server):
    spec = endpoint_answering(server, b'{"score": 70}', range=[0, 100])
    assert build_grader(spec, context=LOOPBACK).score_range() == (0.0, 100.0)
    assert grade(spec).score == 70.0
    server.routes["/grade"] = lambda request: Reply(body=b'{"score": 100.5}')
    error = only_error(grade(spec))
    assert error["message"] == "the score 100.5 is outside the grader's range [0, 100]"


def test_a_bad_declared_range_is_refused_with_the_spec():
    from trainer.graders import GraderSpecError

    with pytest.raises(GraderSpecError) as refused:
        build_grader({"type": "endpoint", "name": "e", "url": "http://example.com/", "range": [1, 0]})
    assert "range: must be [low, high] with low < high" in str(refused.value)


def judge(server: ScriptedServer, reply: str, **spec):
    body = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
    ).encode()
    server.routes["/v1/chat/completions"] = lambda request: Reply(body=body)
    return {
        "type": "score_model",
        "name": "judge",
        "model": "m",
        "base_url": server.url("/v1"),
        "api_key": "sk-test",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        **spec,
    }


def test_score_model_scores_are_checked_against_its_range(server):
    assert grade(judge(server, "Score: 7", range=[1, 10])).score == 7.0
    error = only_error(grade(judge(server, "Score: 11", range=[1, 10])))
    assert (error["type"], error["message"]) == (
        "out_of_range",
        "the score 11.0 is outside the grader's range [1, 10]",
    )
    error = only_error(grade(judge(server, "1e308", range=[0, 1])))
    assert error["type"] == "out_of_range" and "1e+308" in error["message"]


@SANDBOX
@pytest.mark.parametrize(
    ("returned", "error_type"),
    [
        ("1e308", "out_of_range"),
        ("2", "out_of_range"),
        ("-1", "out_of_range"),
        ("float('nan')", "invalid_score"),
    ],
)
def test_python_scores_outside_0_1_are_grader_errors(returned, error_type):
    spec = {"type": "python", "name": "py", "source": f"def grade(sample, item):\n    return {returned}\n"}
    error = only_error(grade(spec))
    assert error["type"] == error_type, error


@SANDBOX
def test_a_python_grader_may_declare_its_range():
    spec = {
        "type": "python",
        "name": "py",
        "source": "def grade(sample, item):\n    return 7\n",
        "range": [0, 10],
    }
    assert grade(spec).score == 7.0


def test_a_multi_graders_sub_scores_are_checked(server):
    spec = {
        "type": "multi",
        "name": "outer",
        "graders": {
            "remote": endpoint_answering(server, b'{"score": 1e308}'),
            "exact": BUILTIN_SPECS["string_check"],
        },
        "calculate_output": "remote + exact",
    }
    result = grade(spec)
    assert result.score is None
    assert [(error["grader"], error["type"]) for error in result.errors] == [("remote", "out_of_range")]
    assert not any(math.isinf(value) or value > 1 for value in result.sub_scores.values())


@pytest.mark.django_db
def test_an_out_of_range_score_is_stored_as_an_error_and_shown_in_the_rollout_view(server, client):
    """The rollout keeps no reward (the trainer leaves such rollouts out of the update and counts them
    under grader_errors/<type>), and the rollout view shows the grader's value."""
    from experiments.models import Trajectory
    from tests.factories import RunFactory

    result = grade(endpoint_answering(server, b'{"score": 1e308}'))
    run = RunFactory(status="running")
    Trajectory.objects.create(
        trace_id="trace_out_of_range",
        run=run,
        step=1,
        split="train",
        item_index=0,
        group_index=0,
        sample_index=0,
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer"}],
        final_answer="answer",
        reward=result.score,
        score=result.score,
        sub_scores=result.sub_scores,
        grader_errors=result.errors,
    )
    client.force_login(run.owner)
    page = client.get(f"/runs/{run.pk}/rollouts/trace_out_of_range/").content.decode()
    assert "out_of_range" in page
    assert "the score 1e+308 is outside the grader&#x27;s range [0, 1]" in page
