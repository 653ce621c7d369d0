"""The example datasets in examples/ are valid, use the demo server's tools, and their answers are right
for the demo server's fake repository and product table."""

import json
import re
from pathlib import Path

import pytest

from experiments.dataset_format import scan
from experiments.demo_servers import PRODUCTS, REPOSITORY, TOOL_DEFINITIONS
from experiments.demo_servers.app import format_number, run_grep

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_TOOLS = {tool["function"]["name"]: tool for tool in TOOL_DEFINITIONS}


def load(task: str, split: str) -> list[dict]:
    rows = []
    with open(EXAMPLES / task / f"{split}.jsonl", "rb") as stream:
        result = scan(stream, on_item=lambda item: rows.append(item.data))
    assert result.ok, result.errors
    return rows


@pytest.mark.parametrize("split", ["train", "eval"])
def test_file_finding_references_are_the_files_grep_finds(split):
    rows = load("file_finding", split)
    assert len(rows) >= 8
    for row in rows:
        assert row["tools"] == [DEMO_TOOLS["list_files"], DEMO_TOOLS["grep"]]
        found = sorted({line.split(":", 1)[0] for line in run_grep({"pattern": row["pattern"]}).splitlines()})
        assert row["reference_files"] == found and set(found) <= set(REPOSITORY)
        assert row["messages"][-1]["role"] == "user"


def test_file_finding_eval_questions_are_not_in_train():
    train = {row["messages"][-1]["content"] for row in load("file_finding", "train")}
    assert not train & {row["messages"][-1]["content"] for row in load("file_finding", "eval")}


@pytest.mark.parametrize("split", ["train", "eval"])
def test_calculator_lookup_answers_match_the_product_table(split):
    rows = load("calculator_lookup", split)
    assert len(rows) >= 8
    for row in rows:
        assert row["tools"] == [DEMO_TOOLS["calculator"], DEMO_TOOLS["lookup"]]
        question = row["messages"][-1]["content"]
        if "expression" not in row:  # "which product has the code ...?"
            code = re.search(r"SKU-\d{4}", question).group()
            assert row["answer"] == PRODUCTS[code][0]
            continue
        codes_in_question = set(re.findall(r"SKU-\d{4}", question))
        assert codes_in_question == set(re.findall(r"SKU-\d{4}", row["expression"]))
        arithmetic = re.sub(r"SKU-\d{4}", lambda match: repr(PRODUCTS[match.group()][1]), row["expression"])
        assert row["answer"] == format_number(round(eval(arithmetic, {"__builtins__": {}}), 2))


@pytest.mark.parametrize("split", ["train", "eval"])
def test_calculator_lookup_worked_examples_are_what_the_demo_tools_answer(split):
    """The earlier turns of each prompt (the worked example that shows the tool-call format) hold the
    demo server's real answers to their calls, and no worked question is one of the tasks."""
    from experiments.demo_servers.app import TOOL_FUNCTIONS

    rows = load("calculator_lookup", split)
    questions = {row["messages"][-1]["content"] for row in load("calculator_lookup", "train")}
    questions |= {row["messages"][-1]["content"] for row in load("calculator_lookup", "eval")}
    for row in rows:
        worked = row["messages"][1:-1]
        assert worked and row["messages"][0]["role"] == "system"
        assert '<tool_call>{"name": "lookup", "arguments": {"key": "SKU-' in row["messages"][0]["content"]
        calls = {}
        for message in worked:
            if message["role"] == "user":
                assert message["content"] not in questions
            for call in message.get("tool_calls", []):
                calls[call["id"]] = call["function"]
            if message["role"] == "tool":
                function = calls[message["tool_call_id"]]
                answer = TOOL_FUNCTIONS[function["name"]](json.loads(function["arguments"]))
                assert message["content"] == answer
        assert {function["name"] for function in calls.values()} == {"lookup", "calculator"}
