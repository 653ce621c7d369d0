"""`python -m trainer` calls tools through the app's executor, with the run file's outbound policy."""

from __future__ import annotations

import json

import pytest

from tests.http_test_server import Reply
from trainer.__main__ import main
from trainer.config import ConfigError
from trainer.interfaces import ToolCall
from trainer.outbound.signing import verify_signature
from trainer.outbound.tools import HttpToolExecutor
from trainer.standalone import script_policy, tool_endpoint, tool_executor


def _run_file(tmp_path, **overrides) -> str:
    data = {
        "trainer": {"model": "m"},
        "train_file": "train.jsonl",
        "output_dir": "out",
        "grader": {"type": "exact_match"},
        **overrides,
    }
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("tools", "outbound", "message"),
    [
        ([{"name": "t", "url": "ftp://example.com/t"}], None, "tools[0].url: only http:// and https://"),
        ([{"name": "t", "url": "file:///etc/passwd"}], None, "tools[0].url: only http:// and https://"),
        ([{"name": "t", "url": "http://u:p@example.com/"}], None, "tools[0].url: credentials"),
        ([{"name": "t", "url": "http:///t"}], None, "tools[0].url: the URL has no host"),
        ([{"name": "t", "url": "https://example.com/t", "headers": {"A": 1}}], None, "tools[0].headers"),
        ([{"name": "t", "url": "https://example.com/t", "timeout_s": 0}], None, "must be positive"),
        ([], {"allowlist": ["not a host/or cidr"]}, "outbound.allowlist"),
        ([], {"allow_loopback": "yes"}, "outbound.allow_loopback"),
        ([], {"proxy": "x"}, "outbound: unknown key(s) proxy"),
    ],
)
def test_bad_tool_urls_and_policies_are_refused_before_training(tmp_path, capsys, tools, outbound, message):
    extra = {"tools": tools} | ({"outbound": outbound} if outbound is not None else {})
    assert main([_run_file(tmp_path, **extra)]) == 2
    assert message in capsys.readouterr().err


def test_the_script_policy_defaults_to_loopback_only():
    policy = script_policy(None)
    assert policy.is_address_allowed("127.0.0.1")
    assert not policy.is_address_allowed("10.1.2.3") and not policy.is_address_allowed("169.254.169.254")
    listed = script_policy({"allowlist": ["10.0.0.0/8"], "allow_loopback": False})
    assert listed.is_address_allowed("10.1.2.3") and not listed.is_address_allowed("127.0.0.1")
    with pytest.raises(ConfigError):
        script_policy(["10.0.0.0/8"])


async def test_script_tools_go_through_the_apps_executor_and_policy(scripted_server):
    received = []

    def handler(request):
        received.append(request)
        return Reply(body=b'{"output": "sunny"}')

    scripted_server.routes["/weather"] = handler
    endpoint = tool_endpoint(
        {
            "url": scripted_server.url("/weather"),
            "signing_secret": "s3cret-signing",
            "headers": {"X-Key": "k"},
        },
        where="tools[0]",
    )
    call = ToolCall(call_id="call_1", name="weather", arguments='{"city": "Oslo"}')

    executor = tool_executor({"weather": endpoint}, script_policy(None))
    assert type(executor) is HttpToolExecutor  # the app's executor, not a second implementation
    try:
        [result] = await executor.execute([call], item={"id": 7}, trace_id="trace_script")
    finally:
        await executor.aclose()
    assert result.ok and result.output == "sunny"
    [request] = received
    body = json.loads(request.body)
    assert (body["type"], body["call_id"], body["trace_id"], body["item"]) == (
        "function_call",
        "call_1",
        "trace_script",
        {"id": 7},
    )
    assert request.headers["x-rft-rollout-id"] == "trace_script" and request.headers["x-key"] == "k"
    assert verify_signature(
        secret="s3cret-signing", body=request.body, header=request.headers["x-rft-signature"]
    )

    strict = tool_executor({"weather": endpoint}, script_policy({"allow_loopback": False}))
    try:
        [refused] = await strict.execute([call], item={}, trace_id="trace_strict")
    finally:
        await strict.aclose()
    assert not refused.ok and refused.error_type == "blocked" and "127.0.0.1" in refused.error
    assert len(received) == 1
