"""The demo tool/grader server, exercised through the real outbound client."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments.demo_servers import PRODUCTS, REPOSITORY, TOOL_DEFINITIONS, DemoServer
from trainer.interfaces import ToolCall
from trainer.outbound.client import OutboundClient
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.signing import sign_body
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

DEV = OutboundPolicy(allow_loopback=True)


@pytest.fixture
def demo():
    with DemoServer() as server:
        yield server


@pytest.fixture
def signed_demo():
    with DemoServer(signing_secret="whsec_demo") as server:
        yield server


def executor_for(server, *, secret=None):
    endpoints = {
        definition["function"]["name"]: ToolEndpoint(
            url=server.tool_url(definition["function"]["name"]), signing_secret=secret
        )
        for definition in TOOL_DEFINITIONS
    }
    return HttpToolExecutor(endpoints, DEV, retry_backoff_s=0.01)


async def call(server, name, arguments, *, trace_id="trace_demo", secret=None):
    executor = executor_for(server, secret=secret)
    try:
        [result] = await executor.execute(
            [ToolCall(call_id="call_1", name=name, arguments=json.dumps(arguments))],
            item={},
            trace_id=trace_id,
        )
    finally:
        await executor.aclose()
    return result


async def get_json(url):
    async with OutboundClient(policy=DEV) as client:
        response = await client.request("GET", url)
    return json.loads(response.body)


async def test_tool_definitions_are_openai_functions(demo):
    definitions = await get_json(f"{demo.url}/tools")
    assert [d["function"]["name"] for d in definitions] == [
        "calculator",
        "lookup",
        "list_files",
        "grep",
        "peek",
        "workspace_list_files",
        "workspace_read_file",
        "workspace_write_file",
    ]
    for definition in definitions:
        assert definition["type"] == "function"
        parameters = definition["function"]["parameters"]
        assert parameters["type"] == "object"
        # peek takes no arguments: it reads the rollout's item
        assert (
            parameters.get("required")
            or not parameters["properties"]
            or definition["function"]["name"] == "peek"
        )


async def test_peek_shows_the_items_secret_colour_and_needs_the_item(demo):
    from trainer.toy import swatch

    executor = executor_for(demo)
    try:
        [shown] = await executor.execute(
            [ToolCall(call_id="call_1", name="peek", arguments="{}")],
            item={"answer": "gold"},
            trace_id="trace_peek",
        )
        [refused] = await executor.execute(
            [ToolCall(call_id="call_2", name="peek", arguments="{}")], item={}, trace_id="trace_peek"
        )
    finally:
        await executor.aclose()
    assert shown.ok and shown.output == swatch("gold")
    assert not refused.ok and "item" in refused.output


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("3 * 4.99 + 2 * 5.49", "25.95"),
        ("2^10", "1024"),
        ("sqrt(16) + max(1, 2)", "6"),
        ("1/3", "0.3333333333"),
    ],
)
async def test_calculator(demo, expression, expected):
    result = await call(demo, "calculator", {"expression": expression})
    assert result.ok and result.output == expected


async def test_calculator_refuses_code(demo):
    result = await call(demo, "calculator", {"expression": "__import__('os').system('true')"})
    assert not result.ok and result.error_type == "http_4xx" and "cannot evaluate" in result.output


async def test_lookup_known_and_unknown(demo):
    result = await call(demo, "lookup", {"key": "sku-1008"})
    assert result.ok and json.loads(result.output) == {
        "key": "SKU-1008",
        "name": "Multimeter",
        "price_usd": 54.5,
    }
    missing = await call(demo, "lookup", {"key": "SKU-9"})
    assert not missing.ok and missing.status_code == 404
    assert "SKU-1001 .. SKU-1012" in missing.output
    assert len(PRODUCTS) == 12


async def test_list_files_and_grep_answer_the_documented_task(demo):
    listing = await call(demo, "list_files", {"directory": "src/shop"})
    assert listing.ok and listing.output.splitlines() == sorted(
        p for p in REPOSITORY if p.startswith("src/shop/")
    )
    root = await call(demo, "list_files", {"directory": "."})
    assert len(root.output.splitlines()) == len(REPOSITORY)
    grep = await call(demo, "grep", {"pattern": "compute_total"})
    files = {line.split(":")[0] for line in grep.output.splitlines()}
    assert files == {
        "README.md",
        "docs/usage.md",
        "src/shop/pricing.py",
        "src/shop/cart.py",
        "src/shop/checkout.py",
        "tests/test_cart.py",
    }
    bad = await call(demo, "grep", {"pattern": "(unclosed"})
    assert bad.error_type == "http_4xx" and "invalid regular expression" in bad.output


async def test_calls_are_counted_per_rollout(demo):
    for _ in range(3):
        await call(demo, "lookup", {"key": "SKU-1001"}, trace_id="trace_a")
    await call(demo, "calculator", {"expression": "1+1"}, trace_id="trace_b")
    seen_a = await get_json(f"{demo.url}/rollouts/trace_a")
    seen_b = await get_json(f"{demo.url}/rollouts/trace_b")
    assert seen_a["count"] == 3 and {c["tool"] for c in seen_a["calls"]} == {"lookup"}
    assert seen_a["calls"][0]["arguments"] == {"key": "SKU-1001"}
    assert seen_b["count"] == 1
    assert (await get_json(f"{demo.url}/rollouts/trace_none"))["count"] == 0


async def test_signatures_are_required_when_a_secret_is_set(signed_demo):
    unsigned = await call(signed_demo, "lookup", {"key": "SKU-1001"})
    assert unsigned.status_code == 401
    wrong = await call(signed_demo, "lookup", {"key": "SKU-1001"}, secret="not-the-secret")
    assert wrong.status_code == 401
    signed = await call(signed_demo, "lookup", {"key": "SKU-1001"}, secret="whsec_demo")
    assert signed.ok


async def grade(server, sample, item, *, secret=None):
    body = json.dumps({"sample": sample, "item": item, "trace_id": "trace_g"}).encode()
    headers = {"Content-Type": "application/json"}
    async with OutboundClient(policy=DEV) as client:
        response = await client.request(
            "POST", server.grade_url, content=body, headers=headers, signing_secret=secret
        )
    return response.status_code, json.loads(response.body)


async def test_grade_endpoint(demo):
    assert await grade(demo, {"output_text": "The total is 25.95 USD"}, {"answer": "25.95"}) == (
        200,
        {"score": 1.0},
    )
    assert (await grade(demo, {"output_text": "About 26"}, {"answer": "25.95"}))[1]["score"] == 0.0
    status, body = await grade(
        demo,
        {"output_text": "Edit src/shop/config.py and src/shop/checkout.py, also src/shop/cart.py."},
        {"reference_files": ["src/shop/config.py", "src/shop/checkout.py", "src/shop/invoice.py"]},
    )
    assert status == 200
    assert body["precision"] == pytest.approx(2 / 3) and body["recall"] == pytest.approx(2 / 3)
    assert body["score"] == pytest.approx(2 / 3)
    status, body = await grade(demo, {"output_text": "x"}, {})
    assert status == 400 and "answer" in body["error"]


async def test_signed_grade(signed_demo):
    assert (await grade(signed_demo, {"output_text": "42"}, {"answer": "42"}))[0] == 401
    assert await grade(signed_demo, {"output_text": "42"}, {"answer": "42"}, secret="whsec_demo") == (
        200,
        {"score": 1.0},
    )


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runs_as_a_module_with_a_port():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.demo_servers", "--port", str(port), "--signing-secret", "s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/tools", timeout=1) as response:
                    definitions = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        assert len(definitions) == 8  # five demo tools, three workspace tools
        body = json.dumps(
            {"type": "function_call", "call_id": "c", "name": "lookup", "arguments": '{"key": "SKU-1003"}'}
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/tools/lookup",
            data=body.encode(),
            headers={"X-RFT-Signature": sign_body(secret="s", body=body.encode()), "X-RFT-Rollout-Id": "t1"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert re.search(r"Green gadget", json.loads(response.read())["output"])
    finally:
        process.terminate()
        process.wait(timeout=5)
