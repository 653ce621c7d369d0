"""Environment lifecycle overhead of one step, and MCP sessions per turn vs one pooled session.

    .venv/bin/python bench/bench_environments.py                 # lifecycle, caps 64 and 16
    .venv/bin/python bench/bench_environments.py --mcp           # also the MCP session comparison
    .venv/bin/python bench/bench_environments.py --server thread # lifecycle server in this process

Lifecycle: 64 rollouts of one turn each (a scripted policy behind the generation backend interface,
`trainer.generation.ScriptedBackend`), with an environment whose start takes 500 ms and whose end
takes 200 ms (a local HTTP server, signed requests through the outbound client). The same step
without an environment is the baseline, run interleaved in the same process (no-env, cap 64, cap
16, no-env, ...). The environment overhead is (step with environment) - (step without). With the
cap at 64 every start runs at once, so the overhead is bounded by one start + one end = 0.7 s (goal:
ratio <= 1.5x); with the cap at 16 the rollouts go in four waves (bound 4 x 0.7 = 2.8 s).

The lifecycle server runs in a child process as an asyncio app (uvicorn), so the server's own
thread-per-connection cost is not charged to the trainer; `--server thread` puts a stdlib
ThreadingHTTPServer in this process instead.

MCP (`--mcp`): 64 concurrent rollouts each making one tool call on a local MCP server built with the
SDK, once with a fresh session per call (what `McpToolExecutor` does per turn) and once through one
long-lived session shared by every call (pooled). Prints both wall times and the per-call cost.

The machine is shared and noisy: the load average is printed with each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_S = 0.5
END_S = 0.2
BOUND_S = START_S + END_S


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


def lifecycle_server() -> tuple[_Server, dict]:
    state = {"live": 0, "max_live": 0, "lock": threading.Lock()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            return

        def do_GET(self):  # /stats: the max live environments since the last reset (and resets it)
            with state["lock"]:
                body = json.dumps({"max_live": state["max_live"]}).encode()
                state["max_live"] = 0
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/start":
                with state["lock"]:
                    state["live"] += 1
                    state["max_live"] = max(state["max_live"], state["live"])
                time.sleep(START_S)
                body = b'{"context": "a sandbox"}'
            else:
                time.sleep(END_S)
                with state["lock"]:
                    state["live"] -= 1
                body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, state


def _serve_in_child(port_queue) -> None:
    """The lifecycle server as an asyncio app (uvicorn + starlette) in its own process: 64 sleeping
    starts cost it no threads, so what is measured is the trainer's side."""
    import asyncio as aio

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state = {"live": 0, "max_live": 0}

    async def start(request):
        await request.body()
        state["live"] += 1
        state["max_live"] = max(state["max_live"], state["live"])
        await aio.sleep(START_S)
        return JSONResponse({"context": "a sandbox"})

    async def end(request):
        await request.body()
        await aio.sleep(END_S)
        state["live"] -= 1
        return JSONResponse({})

    async def stats(request):
        peak, state["max_live"] = state["max_live"], 0
        return JSONResponse({"max_live": peak})

    app = Starlette(
        routes=[
            Route("/start", start, methods=["POST"]),
            Route("/end", end, methods=["POST"]),
            Route("/stats", stats),
        ]
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    port_queue.put(port)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=1024)


def _max_live(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as response:
        return json.loads(response.read())["max_live"]


def run_step(*, tokenizer, environment, rollouts_count: int) -> float:
    import torch

    from trainer.generation import SamplingParams, ScriptedBackend
    from trainer.rollout import RolloutEngine, RolloutLimits, render_prompt, start_rollout
    from trainer.toy import ToyToolExecutor

    backend = ScriptedBackend(
        tokenizer=tokenizer,
        stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        respond=lambda ids: "Done.",
    )
    loop = asyncio.new_event_loop()
    engine = RolloutEngine(
        backend=backend,
        tokenizer=tokenizer,
        tool_executor=ToyToolExecutor(),
        loop=loop,
        limits=RolloutLimits(
            max_turns=1,
            max_new_tokens_per_turn=16,
            max_tokens_per_rollout=64,
            tool_call_budget=None,
            tool_call_penalty=0.0,
        ),
        environment=environment,
        environment_context_tokens=64,
    )
    item = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go."}]}
    prompt = render_prompt(tokenizer=tokenizer, messages=item["messages"], tools=[])
    rollouts = [
        start_rollout(
            tokenizer=tokenizer,
            item=item,
            item_index=0,
            group_index=i // 8,
            sample_index=i % 8,
            split="train",
            run_tools=[],
            prompt_ids=prompt,
        )
        for i in range(rollouts_count)
    ]
    started = time.perf_counter()
    engine.run(rollouts, sampling=SamplingParams(temperature=1.0), generator=torch.Generator())
    wall = time.perf_counter() - started
    if environment is not None:
        loop.run_until_complete(environment.aclose())
        assert all(r.env_error is None and r.env_ended_at for r in rollouts), "a start or end failed"
        starts = sorted(r.env_start_ms for r in rollouts)
        ends = sorted(r.env_end_ms for r in rollouts)
        print(
            f"    start ms p50 {starts[len(starts) // 2]:.0f} max {starts[-1]:.0f}; "
            f"end ms p50 {ends[len(ends) // 2]:.0f} max {ends[-1]:.0f}"
        )
    loop.close()
    return wall


def lifecycle(tokenizer, *, repeats: int, rollouts_count: int, in_process: bool) -> None:
    from trainer.environments import EnvironmentEndpoint, HttpEnvironment
    from trainer.outbound.policy import OutboundPolicy

    if in_process:
        server, _state = lifecycle_server()
        port = server.server_address[1]
    else:  # an asyncio server in a child process, off this process's GIL (the engine and client run here)
        import multiprocessing

        ports = multiprocessing.Queue()
        child = multiprocessing.Process(target=_serve_in_child, args=(ports,), daemon=True)
        child.start()
        port = ports.get(timeout=30)
        deadline = time.monotonic() + 30
        while True:  # until uvicorn listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    endpoint = EnvironmentEndpoint(
        start_url=f"http://127.0.0.1:{port}/start",
        end_url=f"http://127.0.0.1:{port}/end",
        signing_secret="bench-secret-0123456789",
    )
    policy = OutboundPolicy(allow_loopback=True)
    times: dict[str, list[float]] = {"none": [], "cap 64": [], "cap 16": []}
    max_live: dict[str, int] = {}
    for repeat in range(repeats):
        for label in times:
            environment = None
            if label != "none":
                environment = HttpEnvironment(endpoint, policy, max_live=int(label.split()[1]))
                _max_live(port)  # reset
            wall = run_step(tokenizer=tokenizer, environment=environment, rollouts_count=rollouts_count)
            times[label].append(wall)
            if environment is not None:
                max_live[label] = max(max_live.get(label, 0), _max_live(port))
            print(
                f"repeat {repeat + 1} {label:>6}: step {wall:.3f} s  (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    if in_process:
        server.shutdown()
    else:
        child.terminate()
    base = statistics.median(times["none"])
    print(f"\n{rollouts_count} rollouts, start {START_S * 1000:.0f} ms, end {END_S * 1000:.0f} ms")
    print(f"no environment: median step {base:.3f} s")
    for label, waves in (("cap 64", 1), ("cap 16", 4)):
        median = statistics.median(times[label])
        overhead = median - base
        bound = waves * BOUND_S
        print(
            f"{label}: median step {median:.3f} s, environment overhead {overhead:.3f} s, "
            f"bound {bound:.1f} s ({waves} x 0.7 s), ratio {overhead / bound:.2f}x; "
            f"server's max live environments {max_live[label]}"
        )
    print(f"load average now: {os.getloadavg()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mcp_sessions(*, calls: int, repeats: int) -> None:
    from trainer.interfaces import ToolCall
    from trainer.outbound.mcp import (
        McpServerEndpoint,
        McpToolExecutor,
        PolicyTransport,
        call_tool,
        open_session,
    )
    from trainer.outbound.policy import OutboundPolicy

    port = _free_port()
    log = Path(tempfile.mkdtemp()) / "calls.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "mcp_test_server.py"), str(port), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        policy = OutboundPolicy(allow_loopback=True)
        endpoint = McpServerEndpoint(url=f"http://127.0.0.1:{port}/mcp", timeout_s=60)

        async def per_turn() -> float:
            executor = McpToolExecutor({"add": endpoint}, policy)
            started = time.perf_counter()
            results = await asyncio.gather(
                *(
                    executor.execute(
                        [ToolCall(f"c{i}", "add", '{"a": 1, "b": 2}')], item={}, trace_id=f"trace_{i}"
                    )
                    for i in range(calls)
                )
            )
            wall = time.perf_counter() - started
            await executor.aclose()
            assert all(r[0].ok for r in results), [r[0].error for r in results if not r[0].ok][:3]
            return wall

        async def pooled() -> float:
            transport = PolicyTransport(policy)
            async with open_session(endpoint, policy, transport=transport) as session:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(
                        call_tool(
                            session,
                            ToolCall(f"c{i}", "add", '{"a": 1, "b": 2}'),
                            endpoint=endpoint,
                            trace_id=f"t{i}",
                        )
                        for i in range(calls)
                    )
                )
                wall = time.perf_counter() - started
            await transport.aclose()
            assert all(r.ok for r in results)
            return wall

        walls: dict[str, list[float]] = {"per-turn session": [], "pooled session": []}
        for repeat in range(repeats):
            for label, run in (("per-turn session", per_turn), ("pooled session", pooled)):
                wall = asyncio.run(run())
                walls[label].append(wall)
                print(
                    f"repeat {repeat + 1} {label}: {calls} calls in {wall:.3f} s (load {os.getloadavg()[0]:.2f})"
                )
        for label, values in walls.items():
            median = statistics.median(values)
            print(
                f"{label}: median {median:.3f} s for {calls} concurrent calls ({median / calls * 1000:.1f} ms per call)"
            )
        ratio = statistics.median(walls["per-turn session"]) / statistics.median(walls["pooled session"])
        print(f"per-turn / pooled: {ratio:.2f}x   load average now: {os.getloadavg()}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--mcp", action="store_true", help="also compare MCP sessions per turn vs pooled")
    parser.add_argument("--mcp-calls", type=int, default=64)
    parser.add_argument("--skip-lifecycle", action="store_true")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="lifecycle server in a child process",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from trainer.tiny import build_tiny_model

    print(f"load average at start: {os.getloadavg()}  (a shared 2-core machine: figures are noisy)")
    if not args.skip_lifecycle:
        cache = Path(os.environ.get("RFTWEB_TEST_MODEL_CACHE", ROOT / ".pytest_cache" / "rftweb-models"))
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(cache / "tiny"))
        lifecycle(
            tokenizer, repeats=args.repeats, rollouts_count=args.rollouts, in_process=args.server == "thread"
        )
    if args.mcp:
        print()
        mcp_sessions(calls=args.mcp_calls, repeats=args.repeats)


if __name__ == "__main__":
    main()
