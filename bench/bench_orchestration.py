"""Rollout orchestration overhead: 256 rollouts x 3 tool calls against a local tool server that takes
100 ms per call, with the policy replaced by a scripted stub behind the generation backend interface.

    .venv/bin/python bench/bench_orchestration.py

The bound is 3 sequential tool calls per rollout = 0.3 s (all rollouts' calls of a turn run
concurrently); sequential execution would take 256 x 3 x 0.1 = 77 s. Prints the wall time and its ratio
to the bound (goal <= 3x). Tool calls go through the app's real HttpToolExecutor
(experiments.outbound.tools); `--client standalone` uses trainer.standalone's executor instead, and
`--client none` replaces HTTP with a 100 ms sleep to isolate the rollout engine's own overhead.
`--server process` runs the tool server in a child process instead of 256 threads of this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CALL = '<tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks a key up.",
            "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
        },
    }
]


CLIENT_NAMES = {
    "app": "experiments.outbound.tools.HttpToolExecutor",
    "standalone": "trainer.standalone.SimpleHttpToolExecutor",
    "none": "no HTTP (asyncio.sleep per call)",
}


def start_tool_server(latency_s: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real tool server would

        def do_POST(self):  # the wire format: a function_call in, {"output": ...} out
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency_s)
            payload = json.dumps({"output": f"value of {json.loads(body['arguments'])['key']}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/lookup"


def _serve_in_child(latency_s: float, ports) -> None:
    server, _url = start_tool_server(latency_s)
    ports.put(server.server_address[1])
    threading.Event().wait()  # until the parent terminates this process


def start_tool_server_process(latency_s: float):
    """The same server in a child process, so that its 256 handler threads do not share the GIL with
    the rollout engine and the client (as a team's tool server would not)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=_serve_in_child, args=(latency_s, ports), daemon=True)
    process.start()
    return process, f"http://127.0.0.1:{ports.get(timeout=60)}/lookup"


class SleepExecutor:
    """No HTTP at all: each call just waits the latency (isolates the engine's own overhead)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s

    async def execute(self, calls, *, item, trace_id):
        from trainer.interfaces import ToolResult

        await asyncio.sleep(self.latency_s)
        return [ToolResult(call_id=c.call_id, name=c.name, output="value of a", ok=True) for c in calls]

    async def aclose(self) -> None:
        pass


def make_executor(kind: str, url: str, latency_s: float):
    if kind == "none":
        return SleepExecutor(latency_s)
    if kind == "app":
        from experiments.outbound.policy import OutboundPolicy
        from experiments.outbound.tools import HttpToolExecutor, ToolEndpoint

        return HttpToolExecutor(
            endpoints={"lookup": ToolEndpoint(url=url, timeout_s=30.0)},
            policy=OutboundPolicy(allow_loopback=True),
        )
    from trainer.standalone import HttpTool, SimpleHttpToolExecutor

    return SimpleHttpToolExecutor(tools={"lookup": HttpTool(url=url, timeout_s=30.0)})


def run_once(*, tokenizer, executor, loop, rollouts_count: int, calls_per_rollout: int) -> tuple[float, list]:
    import torch

    from trainer.generation import SamplingParams, ScriptedBackend
    from trainer.rollout import EngineLimits, RolloutEngine, RolloutLimits, render_prompt, start_rollout

    assistant_header = tokenizer.encode("<|im_start|>assistant", add_special_tokens=False)

    def respond(prompt_ids: list[int]) -> str:
        # Count the assistant turns so far: call the tool `calls_per_rollout` times, then answer.
        turns = sum(
            1 for i in range(len(prompt_ids)) if prompt_ids[i : i + len(assistant_header)] == assistant_header
        )
        return CALL if turns <= calls_per_rollout else "The value of a."

    backend = ScriptedBackend(
        tokenizer=tokenizer, stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), respond=respond
    )
    engine = RolloutEngine(
        backend=backend,
        tokenizer=tokenizer,
        tool_executor=executor,
        loop=loop,
        limits=RolloutLimits(
            max_turns=calls_per_rollout + 1,
            max_new_tokens_per_turn=64,
            max_tokens_per_rollout=4096,
            tool_call_budget=None,
            tool_call_penalty=0.0,
        ),
        # Every rollout in flight at once, as before the in-flight cap existed (the stub has no cache).
        engine_limits=EngineLimits(max_rollouts_in_flight=rollouts_count),
    )
    started = time.perf_counter()
    item = {"messages": [{"role": "user", "content": "What is the value of a?"}]}
    prompt_ids = render_prompt(tokenizer=tokenizer, messages=item["messages"], tools=TOOLS)
    rollouts = [
        start_rollout(
            tokenizer=tokenizer,
            item=item,
            item_index=0,
            group_index=i // 8,
            sample_index=i % 8,
            split="train",
            run_tools=TOOLS,
            prompt_ids=prompt_ids,
        )
        for i in range(rollouts_count)
    ]
    engine.run(rollouts, sampling=SamplingParams(), generator=torch.Generator())
    return time.perf_counter() - started, rollouts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--calls", type=int, default=3, help="tool calls per rollout, one per turn")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--client", choices=["app", "standalone", "none"], default="app")
    parser.add_argument(
        "--server",
        choices=["thread", "process"],
        default="thread",
        help="run the tool server in this process's threads (default) or in a child process",
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from trainer.tiny import build_tiny_model

    cache = Path(os.environ.get("RFTWEB_BENCH_CACHE", Path(tempfile.gettempdir()) / "rftweb-bench-models"))
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(cache / "tiny"))
    if args.server == "process":
        server_process, url = start_tool_server_process(args.latency_ms / 1000)
        server = None
    else:
        server, url = start_tool_server(args.latency_ms / 1000)
    client = args.client
    if client == "app":
        try:
            import experiments.outbound.tools  # noqa: F401
        except ImportError as error:
            print(
                f"the app's HttpToolExecutor is not importable ({error}); using trainer.standalone's executor"
            )
            client = "standalone"
    bound = args.calls * args.latency_ms / 1000
    if client == "app":
        import experiments.outbound.client as outbound_client

        # The venv's editable install decides which checkout is imported: say which one it was.
        print(f"outbound client module: {outbound_client.__file__}")
    print(
        f"machine: {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"{args.rollouts} rollouts x {args.calls} tool calls, {args.latency_ms:.0f} ms per call, "
        f"client: {CLIENT_NAMES[client]}, tool server in {'a child process' if server is None else 'this process'}"
    )
    loop = asyncio.new_event_loop()
    executor = make_executor(client, url, args.latency_ms / 1000)
    walls = []
    try:
        for repeat in range(args.repeats):
            wall, rollouts = run_once(
                tokenizer=tokenizer,
                executor=executor,
                loop=loop,
                rollouts_count=args.rollouts,
                calls_per_rollout=args.calls,
            )
            failures = sum(1 for r in rollouts for result in r.tool_results if not result.ok)
            calls = sum(len(r.tool_results) for r in rollouts)
            assert calls == args.rollouts * args.calls, calls
            walls.append(wall)
            print(
                f"run {repeat + 1}: {wall:.2f} s wall, {calls} calls, {failures} failed, ratio to {bound:.1f} s = {wall / bound:.2f}x"
            )
    finally:
        loop.run_until_complete(executor.aclose())
        loop.close()
        if server is None:
            server_process.terminate()
        else:
            server.shutdown()
    median = statistics.median(walls)
    print(
        f"load average {os.getloadavg()[0]:.2f} at the end; "
        f"median wall {median:.2f} s = {median / bound:.2f}x the {bound:.1f} s latency bound (goal <= 3x); "
        f"sequential would take {args.rollouts * args.calls * args.latency_ms / 1000:.0f} s"
    )


if __name__ == "__main__":
    main()
