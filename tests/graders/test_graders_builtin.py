"""Built-in graders with known scores, grader JSON validation, templates and the multi formula."""

import json

import pytest

from trainer.graders import GraderContext, GraderSpecError, build_grader, make_sample, run_grader
from trainer.interfaces import Grader

# The grader JSON examples of PRODUCT.md, pasted as they are (the multi example's "{...}" filled in).
PRODUCT_EXAMPLES = """
{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}
{"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
{"type": "python", "name": "f1", "source": "def grade(sample, item) -> float:\\n    ..."}
{"type": "score_model", "name": "judge", "model": "...", "input": [{"role": "user", "content": "..."}], "range": [0, 1]}
{"type": "endpoint", "name": "remote", "url": "https://...", "headers": {}}
"""
JUDGE_CONTEXT = GraderContext(judge_base_url="https://judge.example.com/v1")


def grade(spec, *, output_text="", item=None, output_tools=(), context=None):
    return run_grader(
        spec, make_sample(output_text=output_text, output_tools=output_tools), item or {}, context=context
    )


@pytest.mark.parametrize("line", [line for line in PRODUCT_EXAMPLES.strip().splitlines()])
def test_product_examples_are_accepted_as_is(line):
    grader = build_grader(json.loads(line), context=JUDGE_CONTEXT)
    assert isinstance(grader, Grader)
    assert grader.name == json.loads(line)["name"]


def test_product_examples_score():
    exact, sim = (json.loads(line) for line in PRODUCT_EXAMPLES.strip().splitlines()[:2])
    assert grade(exact, output_text="Paris", item={"answer": "Paris"}).score == 1.0
    assert grade(exact, output_text="paris", item={"answer": "Paris"}).score == 0.0
    result = grade(sim, output_text="kitten", item={"answer": "sitting"})
    assert result.score == pytest.approx(0.6153846, abs=1e-6)
    assert result.sub_scores == {"sim": result.score}
    multi = {
        "type": "multi",
        "name": "total",
        "graders": {"a": exact, "b": sim},
        "calculate_output": "0.7 * a + 0.3 * b",
    }
    result = grade(multi, output_text="Paris", item={"answer": "Paris"})
    assert result.score == pytest.approx(1.0)
    assert result.sub_scores == {"a": 1.0, "b": 1.0}
    result = grade(multi, output_text="Pariss", item={"answer": "Paris"})
    assert result.score == pytest.approx(0.3 * (2 * 5 / 11))


def test_python_example_returning_nothing_is_a_grader_error():
    python_example = json.loads(PRODUCT_EXAMPLES.strip().splitlines()[2])
    result = grade(python_example, output_text="x")
    assert result.score is None
    assert result.errors == [
        {"grader": "f1", "type": "invalid_score", "message": "grade() returned NoneType, not a number"}
    ]


@pytest.mark.parametrize(
    ("operation", "output", "reference", "expected"),
    [
        ("eq", "42", "42", 1.0),
        ("eq", "42 ", "42", 0.0),
        ("ne", "41", "42", 1.0),
        ("ne", "42", "42", 0.0),
        ("like", "the answer is 42.", "42", 1.0),
        ("like", "The Answer", "answer", 0.0),
        ("ilike", "The ANSWER is here", "answer", 1.0),
        ("ilike", "nothing", "answer", 0.0),
    ],
)
def test_string_check(operation, output, reference, expected):
    spec = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_text}}",
        "reference": "{{item.r}}",
        "operation": operation,
    }
    assert grade(spec, output_text=output, item={"r": reference}).score == expected


@pytest.mark.parametrize(
    ("metric", "candidate", "reference", "expected"),
    [
        ("fuzzy_match", "kitten", "sitting", 8 / 13),
        ("rouge_1", "the cat sat", "the cat ran", 2 / 3),
        ("rouge_2", "the cat sat", "the cat ran", 1 / 2),
        ("rouge_3", "the cat sat", "the cat ran", 0.0),
        ("rouge_l", "the cat sat", "the cat ran", 2 / 3),
        ("rouge_5", "a b c d e f", "a b c d e f", 1.0),
        ("gleu", "the cat sat", "the cat ran", 0.5),
        ("bleu", "the quick brown fox jumps", "the quick brown fox jumps", 1.0),
        ("meteor", "the cat sat on the mat", "the cat sat on the mat", 1 - 0.5 * (1 / 6) ** 3),
        ("meteor", "cats", "cat", 0.5),  # matched by the stem stage
        ("f1", "The cat sat.", "a cat sat down", 0.8),
        ("f1", "", "", 1.0),
        ("f1", "dog", "cat", 0.0),
    ],
)
def test_text_similarity_known_scores(metric, candidate, reference, expected):
    spec = {
        "type": "text_similarity",
        "name": "t",
        "input": "{{sample.output_text}}",
        "reference": "{{item.r}}",
        "evaluation_metric": metric,
    }
    result = grade(spec, output_text=candidate, item={"r": reference})
    assert result.errors == []
    assert result.score == pytest.approx(expected, abs=1e-4)


def test_bleu_of_unrelated_text_is_near_zero():
    spec = {
        "type": "text_similarity",
        "name": "t",
        "input": "{{sample.output_text}}",
        "reference": "{{item.r}}",
        "evaluation_metric": "bleu",
    }
    assert grade(spec, output_text="alpha beta gamma delta", item={"r": "one two three four"}).score < 0.05


FILES_ITEM = {"reference_files": ["src/a.py", "src/b.py", "src/c.py"]}


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("precision", 2 / 4), ("recall", 2 / 3), ("f1", 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))],
)
def test_set_match_metrics_on_prose_with_a_pattern(metric, expected):
    spec = {
        "type": "set_match",
        "name": "files",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_files}}",
        "metric": metric,
        "pattern": r"[\w/]+\.py",
    }
    answer = "Edit src/a.py and src/b.py, plus src/d.py and docs/e.py (and src/a.py again)."
    assert grade(spec, output_text=answer, item=FILES_ITEM).score == pytest.approx(expected)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('["src/a.py", "src/b.py", "src/c.py"]', 1.0),
        ("- src/a.py\n- src/b.py\n- `src/c.py`\n", 1.0),
        ("src/a.py, src/x.py", 0.4),
        ("", 0.0),
    ],
)
def test_set_match_reads_lists_from_text(output, expected):
    spec = {
        "type": "set_match",
        "name": "files",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_files}}",
    }
    assert grade(spec, output_text=output, item=FILES_ITEM).score == pytest.approx(expected)


def test_set_match_over_tool_call_arguments_and_case():
    spec = {
        "type": "set_match",
        "name": "tools",
        "input": "{{sample.output_json.files}}",
        "reference": "{{item.reference_files}}",
        "case_sensitive": False,
    }
    output = json.dumps({"files": ["SRC/A.PY", "src/b.py"]})
    assert grade(spec, output_text=output, item=FILES_ITEM).score == pytest.approx(0.8)


def test_templates_reach_output_json_and_tools():
    tools = [
        {"id": "call_1", "type": "function", "function": {"name": "grep", "arguments": '{"pattern": "x"}'}}
    ]
    spec = {
        "type": "multi",
        "name": "m",
        "graders": {
            "used_grep": {
                "type": "string_check",
                "input": "{{sample.output_tools[0].function.name}}",
                "reference": "grep",
                "operation": "eq",
            },
            "json_ok": {
                "type": "string_check",
                "input": "{{ sample.output_json.answer.value }}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            },
        },
        "calculate_output": "used_grep * json_ok",
    }
    result = grade(spec, output_text='{"answer": {"value": 7}}', item={"answer": 7}, output_tools=tools)
    assert result.score == 1.0 and result.sub_scores == {"used_grep": 1.0, "json_ok": 1.0}


def test_a_missing_template_field_is_an_error_not_a_zero():
    spec = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "ne",
    }
    result = grade(spec, output_text="x", item={"other": 1})
    assert result.score is None
    assert result.errors[0]["type"] == "template" and "answer" in result.errors[0]["message"]
    not_json = {
        "type": "string_check",
        "name": "j",
        "input": "{{sample.output_json.a}}",
        "reference": "1",
        "operation": "eq",
    }
    assert grade(not_json, output_text="plain text").errors[0]["type"] == "template"


def test_multi_formula_functions_and_power():
    spec = {
        "type": "multi",
        "name": "m",
        "graders": {
            "a": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "yes",
                "operation": "eq",
            },
            "b": {
                "type": "text_similarity",
                "input": "{{sample.output_text}}",
                "reference": "yes",
                "evaluation_metric": "f1",
            },
        },
        "calculate_output": "max(a, 0.25) ^ 2 + sqrt(4) * min(b, 1) - abs(-1) + floor(1.7) + ceil(0.2) - exp(0) - log(1)",
    }
    assert grade(spec, output_text="yes").score == pytest.approx(1 + 2 - 1 + 1 + 1 - 1 - 0)
    assert grade(spec, output_text="no").score == pytest.approx(0.0625 + 0 - 1 + 1 + 1 - 1)


def test_multi_failing_sub_grader_yields_no_score_and_keeps_the_others():
    spec = {
        "type": "multi",
        "name": "m",
        "graders": {
            "ok": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "x",
                "operation": "eq",
            },
            "broken": {
                "type": "string_check",
                "input": "{{item.missing}}",
                "reference": "x",
                "operation": "eq",
            },
        },
        "calculate_output": "ok + broken",
    }
    result = grade(spec, output_text="x")
    assert result.score is None
    assert result.sub_scores == {"ok": 1.0}
    assert [(e["grader"], e["type"]) for e in result.errors] == [("broken", "template")]


def test_multi_division_by_zero_is_a_formula_error():
    spec = {
        "type": "multi",
        "name": "m",
        "graders": {
            "a": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "x",
                "operation": "eq",
            }
        },
        "calculate_output": "1 / a",
    }
    result = grade(spec, output_text="y")
    assert result.score is None and result.errors == [
        {"grader": "m", "type": "formula", "message": "division by zero"}
    ]


def test_nested_multi_reports_sub_scores_by_path():
    inner = {
        "type": "multi",
        "graders": {
            "x": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "a",
                "operation": "like",
            },
            "y": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "b",
                "operation": "like",
            },
        },
        "calculate_output": "(x + y) / 2",
    }
    spec = {
        "type": "multi",
        "name": "outer",
        "graders": {"inner": inner},
        "calculate_output": "inner * 10",
        "range": [0, 8],
    }
    result = grade(spec, output_text="a only")
    assert result.sub_scores == {"inner.x": 1.0, "inner.y": 0.0, "inner": 0.5}
    assert result.score == 5.0
    assert grade(spec, output_text="a and b").score == 8.0  # clipped to range


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"name": "x"},
            [
                "type: required (one of string_check, text_similarity, set_match, score_model, label_model, python, endpoint, multi)"
            ],
        ),
        (
            {"type": "string_check", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"},
            ["name: required: a non-empty string of at most 100 characters"],
        ),
        (
            {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "operation": "contains"},
            ["reference: required", "operation: must be one of eq, ne, like, ilike, not 'contains'"],
        ),
        (
            {
                "type": "text_similarity",
                "name": "s",
                "input": "{{output_text}}",
                "reference": "{{item.a}}",
                "evaluation_metric": "cosinus",
                "pass_threshold": 0.5,
            },
            [
                "input: {{output_text}}: unknown root 'output_text' (use item or sample)",
                "evaluation_metric: must be one of fuzzy_match, bleu, gleu, meteor, rouge_1, rouge_2, rouge_3, rouge_4, rouge_5, rouge_l, f1, cosine, not 'cosinus'",
            ],
        ),
        (
            {"type": "python", "name": "p", "source": "def grade(sample, item):\n  return (", "timeout": 3},
            [
                "timeout: unknown field for a python grader",
                "source: syntax error on line 2: '(' was never closed",
            ],
        ),
        (
            {"type": "python", "name": "p", "source": "def score(s, i):\n    return 1"},
            ["source: must define grade(sample, item) -> float"],
        ),
        (
            {"type": "endpoint", "name": "e", "url": "ftp://x/y", "headers": {"A": 1}},
            [
                "url: only http:// and https:// URLs can be called",
                "headers: must be an object of header names to string values",
            ],
        ),
        (
            {
                "type": "score_model",
                "name": "j",
                "model": "m",
                "input": [{"role": "user", "content": "{{item.q}}"}],
                "range": [1, 0],
            },
            # No judge configured is not an error of the spec: the grader is kept and says what it needs.
            ["range: must be [low, high] with low < high"],
        ),
        (
            {
                "type": "multi",
                "name": "t",
                "graders": {"a": {"type": "string_check"}, "min": {"type": "string_check"}},
                "calculate_output": "a + b",
            },
            [
                "graders.a.input: required",
                "graders.a.reference: required",
                "graders.a.operation: required (one of eq, ne, like, ilike)",
                "graders.min: the name must be an identifier (letters, digits, _) and not a function name",
                "calculate_output: unknown name 'b' (known: a, min)",
            ],
        ),
        (
            {
                "type": "multi",
                "name": "t",
                "graders": {"a": {"type": "string_check", "input": "x", "reference": "y", "operation": "eq"}},
                "calculate_output": "__import__('os')",
            },
            ["calculate_output: unknown function (allowed: min, max, abs, floor, ceil, exp, sqrt, log)"],
        ),
        ("not an object", ["must be a JSON object describing a grader"]),
    ],
)
def test_spec_errors_point_at_the_field(spec, expected):
    with pytest.raises(GraderSpecError) as info:
        build_grader(spec)
    assert info.value.errors == expected


def test_spec_error_paths_group_by_field():
    with pytest.raises(GraderSpecError) as info:
        build_grader(
            {
                "type": "multi",
                "name": "t",
                "graders": {"a": {"type": "string_check", "input": "x", "operation": "eq"}},
                "calculate_output": "a",
            }
        )
    assert info.value.by_field() == {"graders.a.reference": ["required"]}


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ('{"label": "neutral"}', "neutral"),
        ('```json\n{"label": "Negative"}\n```', "negative"),
        ("positive", "positive"),
        ("  POSITIVE. ", "positive"),
        ("The statement is clearly negative.", "negative"),
    ],
)
def test_judge_labels_are_read_from_json_or_text(answer, label):
    from trainer.graders.types import parse_judge_label

    assert parse_judge_label(answer, ["positive", "neutral", "negative"]) == label


@pytest.mark.parametrize("answer", ["positive or negative, hard to say", "no idea", '{"label": "great"}'])
def test_a_judge_answer_naming_no_single_label_is_a_grader_error(answer):
    from trainer.graders import GraderError
    from trainer.graders.types import parse_judge_label

    with pytest.raises(GraderError) as error:
        parse_judge_label(answer, ["positive", "neutral", "negative"])
    assert error.value.error_type == "invalid_response"
