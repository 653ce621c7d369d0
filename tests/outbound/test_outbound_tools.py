"""HttpToolExecutor against real local HTTP servers."""

import asyncio
import json
import time
import tracemalloc

import pytest

from tests.http_test_server import Reply
from trainer.interfaces import ToolCall, ToolExecutor
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.signing import verify_signature
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint, try_tool_call

DEV = OutboundPolicy(allow_loopback=True)
ITEM = {"messages": [{"role": "user", "content": "Which files?"}], "answer": "42"}
SECRET_HEADER_VALUE = "Bearer sk-very-secret-token-123456"


def ok_reply(request):
    body = json.loads(request.body)
    return Reply(body=json.dumps({"output": f"echo {body['arguments']}"}).encode())


async def run_calls(executor, calls, trace_id="trace_abc"):
    try:
        return await executor.execute(calls, item=ITEM, trace_id=trace_id)
    finally:
        await executor.aclose()


def test_executor_satisfies_the_trainer_protocol():
    assert isinstance(HttpToolExecutor({}, DEV), ToolExecutor)


async def test_body_headers_trace_id_and_signature(scripted_server):
    scripted_server.routes["/grep"] = ok_reply
    endpoint = ToolEndpoint(
        url=scripted_server.url("/grep"),
        headers={"Authorization": SECRET_HEADER_VALUE, "X-RFT-Rollout-Id": "forged"},
        signing_secret="whsec_test",
    )
    executor = HttpToolExecutor({"grep": endpoint}, DEV)
    first = [ToolCall(call_id="call_1", name="grep", arguments='{"pattern": "TODO"}')]
    second = [ToolCall(call_id="call_2", name="grep", arguments='{"pattern": "FIXME"}')]
    try:
        results_1 = await executor.execute(first, item=ITEM, trace_id="trace_rollout1")
        results_2 = await executor.execute(second, item=ITEM, trace_id="trace_rollout1")
    finally:
        await executor.aclose()
    assert results_1[0].ok and results_1[0].output == 'echo {"pattern": "TODO"}'
    assert results_2[0].ok and results_2[0].status_code == 200
    assert len(scripted_server.requests) == 2
    for request, call in zip(scripted_server.requests, first + second, strict=True):
        body = json.loads(request.body)
        assert body["type"] == "function_call"
        assert body["id"].startswith("fc_")
        assert body["call_id"] == call.call_id
        assert body["name"] == "grep"
        assert body["arguments"] == call.arguments
        assert body["item"] == ITEM
        assert body["trace_id"] == "trace_rollout1"
        assert request.headers["x-rft-rollout-id"] == "trace_rollout1"
        assert request.headers["authorization"] == SECRET_HEADER_VALUE
        assert request.headers["content-type"] == "application/json"
        assert verify_signature(
            secret="whsec_test", body=request.body, header=request.headers["x-rft-signature"]
        )
        assert not verify_signature(
            secret="other", body=request.body, header=request.headers["x-rft-signature"]
        )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(body=b'{"output": "plain json"}'), "plain json"),
        (
            Reply(body=b'{"type": "function_call_output", "call_id": "call_1", "output": "shaped"}'),
            "shaped",
        ),
        (Reply(body=b"just text\n", content_type="text/plain"), "just text\n"),
        (Reply(body=b'{"output": {"rows": [1, 2]}}'), '{"rows": [1, 2]}'),
    ],
)
async def test_response_shapes(scripted_server, reply, expected):
    scripted_server.routes["/t"] = lambda request: reply
    executor = HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV)
    [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="t", arguments="{}")])
    assert result.ok and result.output == expected


async def test_4xx_body_is_shown_to_the_model_without_retry(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(
        status=404, body=b'{"error": "no such product: X-1"}'
    )
    executor = HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV, retry_backoff_s=0.01)
    [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="t", arguments="{}")])
    assert not result.ok
    assert result.error_type == "http_4xx"
    assert result.status_code == 404
    assert "no such product: X-1" in result.output
    assert len(scripted_server.requests) == 1


async def test_5xx_is_retried_then_reported(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(status=503, body=b"busy")
    executor = HttpToolExecutor(
        {"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV, max_retries=3, retry_backoff_s=0.01
    )
    [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="t", arguments="{}")])
    assert not result.ok and result.error_type == "http_5xx"
    assert result.attempts == 4 and len(scripted_server.requests) == 4
    assert "503" in result.output


async def test_5xx_then_success_recovers(scripted_server):
    answers = iter([Reply(status=500, body=b"oops"), Reply(body=b'{"output": "fine"}')])
    scripted_server.routes["/t"] = lambda request: next(answers)
    executor = HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV, retry_backoff_s=0.01)
    [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="t", arguments="{}")])
    assert result.ok and result.output == "fine" and result.attempts == 2


async def test_hanging_server_times_out(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "late"}', delay_s=30)
    endpoint = ToolEndpoint(url=scripted_server.url("/t"), timeout_s=0.3)
    executor = HttpToolExecutor({"t": endpoint}, DEV, max_retries=1, retry_backoff_s=0.01)
    started = time.perf_counter()
    [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="t", arguments="{}")])
    elapsed = time.perf_counter() - started
    assert not result.ok and result.error_type == "timeout"
    assert result.attempts == 2
    assert elapsed < 1.5


async def test_connection_refused_is_a_connection_error(scripted_server):
    url = scripted_server.url("/t")
    scripted_server.close()
    executor = HttpToolExecutor({"t": ToolEndpoint(url=url)}, DEV, max_retries=2, retry_backoff_s=0.01)
    [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="t", arguments="{}")])
    assert not result.ok and result.error_type == "connection" and result.attempts == 3


async def test_50_mb_stream_is_cut_at_the_cap_with_bounded_memory(scripted_server):
    chunk = b"x" * 65536
    sent_chunks = []

    def stream():
        for _ in range(50 * 1024 * 1024 // len(chunk)):
            sent_chunks.append(1)
            yield chunk

    scripted_server.routes["/big"] = lambda request: Reply(body=stream(), content_type="text/plain")
    endpoint = ToolEndpoint(url=scripted_server.url("/big"), max_response_bytes=1_000_000)
    executor = HttpToolExecutor({"big": endpoint}, DEV)
    tracemalloc.start()
    try:
        [result] = await run_calls(executor, [ToolCall(call_id="call_1", name="big", arguments="{}")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.ok and result.error_type == "too_large"
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"
    # The client stopped reading: the server could not push the whole 50 MB.
    assert len(sent_chunks) * len(chunk) < 50 * 1024 * 1024


async def test_announced_oversize_body_is_refused_before_reading(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(body=b"y" * 5000, content_type="text/plain")
    endpoint = ToolEndpoint(url=scripted_server.url("/t"), max_response_bytes=1000)
    [result] = await run_calls(
        HttpToolExecutor({"t": endpoint}, DEV), [ToolCall(call_id="c", name="t", arguments="{}")]
    )
    assert result.error_type == "too_large"


async def test_invalid_json_is_an_invalid_response(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"output": "unterminated')
    [result] = await run_calls(
        HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV),
        [ToolCall(call_id="c", name="t", arguments="{}")],
    )
    assert not result.ok and result.error_type == "invalid_response"
    assert "not valid JSON" in result.error


async def test_json_without_output_is_an_invalid_response(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(body=b'{"result": 3}')
    [result] = await run_calls(
        HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV),
        [ToolCall(call_id="c", name="t", arguments="{}")],
    )
    assert result.error_type == "invalid_response"


async def test_parallel_calls_run_concurrently(scripted_server):
    scripted_server.routes["/slow"] = lambda request: Reply(body=b'{"output": "done"}', delay_s=0.2)
    executor = HttpToolExecutor({"slow": ToolEndpoint(url=scripted_server.url("/slow"))}, DEV)
    calls = [ToolCall(call_id=f"call_{i}", name="slow", arguments="{}") for i in range(10)]
    started = time.perf_counter()
    results = await run_calls(executor, calls)
    elapsed = time.perf_counter() - started
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert all(r.ok for r in results)
    assert elapsed < 0.7, f"10 calls of 200 ms took {elapsed:.2f} s"


async def test_many_rollouts_share_one_executor(scripted_server):
    scripted_server.routes["/t"] = ok_reply
    executor = HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV)
    try:
        batches = await asyncio.gather(
            *(
                executor.execute(
                    [ToolCall(call_id="c", name="t", arguments="{}")], item=ITEM, trace_id=f"trace_{i}"
                )
                for i in range(20)
            )
        )
    finally:
        await executor.aclose()
    assert all(batch[0].ok for batch in batches)
    seen = sorted(json.loads(r.body)["trace_id"] for r in scripted_server.requests)
    assert seen == sorted(f"trace_{i}" for i in range(20))


async def test_unknown_tool_and_malformed_arguments_are_not_sent(scripted_server):
    scripted_server.routes["/t"] = ok_reply
    executor = HttpToolExecutor({"t": ToolEndpoint(url=scripted_server.url("/t"))}, DEV)
    unknown, malformed = await run_calls(
        executor,
        [
            ToolCall(call_id="a", name="nope", arguments="{}"),
            ToolCall(call_id="b", name="t", arguments="{not json"),
        ],
    )
    assert unknown.error_type == "unknown_tool" and "t" in unknown.output
    assert malformed.error_type == "malformed_call"
    assert scripted_server.requests == []


async def test_secrets_never_appear_in_results(scripted_server, caplog):
    # A careless server echoes the request headers in its error body.
    def echo_headers(request):
        return Reply(
            status=400, body=json.dumps({"error": f"bad auth {request.headers['authorization']}"}).encode()
        )

    scripted_server.routes["/t"] = echo_headers
    endpoint = ToolEndpoint(
        url=scripted_server.url("/t"),
        headers={"Authorization": SECRET_HEADER_VALUE},
        signing_secret="whsec_x1",
    )
    assert SECRET_HEADER_VALUE not in repr(endpoint) and "whsec_x1" not in repr(endpoint)
    caplog.set_level("DEBUG")
    [result] = await run_calls(
        HttpToolExecutor({"t": endpoint}, DEV), [ToolCall(call_id="c", name="t", arguments="{}")]
    )
    assert result.error_type == "http_4xx"
    for text in (result.output, result.error, caplog.text):
        assert "sk-very-secret-token" not in text
        assert "whsec_x1" not in text


def test_try_tool_call_reports_what_a_rollout_sends(scripted_server):
    scripted_server.routes["/lookup"] = ok_reply
    endpoint = ToolEndpoint(
        url=scripted_server.url("/lookup?api_key=querysecret"),
        headers={"Authorization": SECRET_HEADER_VALUE, "X-Short": "abc"},
        signing_secret="whsec_try",
    )
    result = try_tool_call(
        name="lookup", endpoint=endpoint, arguments={"key": "SKU-1"}, policy=DEV, item={"answer": "x"}
    )
    assert result.ok and result.status_code == 200
    assert result.output == 'echo {"key": "SKU-1"}'
    assert result.latency_ms > 0
    [received] = scripted_server.requests
    assert json.loads(received.body) == result.request.body
    assert (
        result.request.headers["X-RFT-Rollout-Id"] == result.trace_id == received.headers["x-rft-rollout-id"]
    )
    assert result.request.url == f"http://127.0.0.1:{scripted_server.port}/lookup"
    assert result.request.headers["Authorization"] == "••••3456"
    assert result.request.headers["X-Short"] == "••••"
    assert result.request.headers["X-RFT-Signature"].startswith("••••")
    echoed = repr(result)
    for secret in ("sk-very-secret", "whsec_try", "querysecret"):
        assert secret not in echoed


def test_try_tool_call_reports_failures(scripted_server):
    scripted_server.routes["/t"] = lambda request: Reply(
        status=422, body=b'{"detail": "pattern is required"}'
    )
    result = try_tool_call(
        name="t", endpoint=ToolEndpoint(url=scripted_server.url("/t")), arguments="{}", policy=DEV
    )
    assert not result.ok and result.status_code == 422 and result.error_type == "http_4xx"
    assert "pattern is required" in result.output
