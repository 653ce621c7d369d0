"""Rollout orchestration overhead: 256 rollouts x 3 tool calls against a local tool server that takes
100 ms per call, with the policy replaced by a scripted stub behind the generation backend interface.

    .venv/bin/python bench/bench_orchestration.py                       # old client vs new stack
    .venv/bin/python bench/bench_orchestration.py --clients old,new,aiohttp --server process

The bound is 3 sequential tool calls per rollout = 0.3 s (all rollouts' calls of a turn run
concurrently); sequential execution would take 256 x 3 x 0.1 = 77 s. Each client runs `--repeats`
times, interleaved (old, new, old, new, ...) in one process against the same server, so that the
machine's load hits them alike; the summary prints each client's median wall time, its ratio to the
bound (goal <= 3x) and the new stack's ratio to the old client (goal <= 1.2x).

Clients: `new` is trainer.outbound's HttpToolExecutor (h11 under the SSRF policy); `old` is the
same executor from commit OLD_CLIENT_COMMIT (the hand-written HTTP/1.1 client, `http11.py`), read
from git into a temporary package; `aiohttp` is the candidate measured against httpcore2 before the
choice (a small executor on aiohttp with a policy-checking resolver; needs `pip install aiohttp`);
`none` replaces HTTP with a 100 ms sleep to isolate the rollout engine's own overhead.
`--server process` runs the tool server in a child process instead of 256 threads of this one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The last commit with the hand-written HTTP/1.1 client (trainer/outbound/http11.py).
OLD_CLIENT_COMMIT = "01ce1363a1b516df9eab86aadfa37b7533dcfaab"
OLD_PACKAGE = "rftweb_old_outbound"
OLD_MODULES = ("__init__", "client", "http11", "policy", "signing", "tools")

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
    "new": "trainer.outbound HttpToolExecutor on h11",
    "old": f"HttpToolExecutor on http11.py ({OLD_CLIENT_COMMIT[:7]})",
    "aiohttp": "candidate: aiohttp with a policy-checking resolver",
    "none": "no HTTP (asyncio.sleep per call)",
}


def start_tool_server(latency_s: float, connections=None) -> tuple[ThreadingHTTPServer, str]:
    """`connections.value` (a multiprocessing.Value, or anything with `value` and `get_lock()`)
    counts the TCP connections accepted: with keep-alive, a client opens them in its warm-up run and
    reuses them afterwards."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real tool server would

        def setup(self):
            super().setup()
            if connections is not None:
                with connections.get_lock():
                    connections.value += 1

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


def _serve_in_child(latency_s: float, ports, connections) -> None:
    server, _url = start_tool_server(latency_s, connections)
    ports.put(server.server_address[1])
    threading.Event().wait()  # until the parent terminates this process


def start_tool_server_process(latency_s: float, connections=None):
    """The same server in a child process, so that its 256 handler threads do not share the GIL with
    the rollout engine and the client (as a team's tool server would not)."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=_serve_in_child, args=(latency_s, ports, connections), daemon=True)
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


def load_old_outbound() -> object:
    """The outbound package of OLD_CLIENT_COMMIT, imported as `rftweb_old_outbound` from a temp dir."""
    root = Path(__file__).resolve().parents[1]
    target = Path(tempfile.mkdtemp(prefix="rftweb-old-outbound-"))
    package = target / OLD_PACKAGE
    package.mkdir()
    httpx_installed = importlib.util.find_spec("httpx") is not None
    for name in OLD_MODULES:
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{OLD_CLIENT_COMMIT}:trainer/outbound/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = source.replace("trainer.outbound", OLD_PACKAGE)
        if not httpx_installed:
            # The old client used httpx 0.x only to parse URLs (once per URL) and to build its TLS
            # context; httpx2 has the same API and is what this checkout installs.
            source = source.replace("\nimport httpx\n", "\nimport httpx2 as httpx\n")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(target))
    try:
        return importlib.import_module(f"{OLD_PACKAGE}.tools")
    finally:
        sys.path.remove(str(target))
        shutil.rmtree(target, ignore_errors=True)


class AiohttpCandidateExecutor:
    """The aiohttp candidate: the same wire format, policy check in the resolver, caps and deadline.

    Only what the measurement needs (no retries, no signing); aiohttp skips the resolver for IP
    literals, so a real client would also have to vet those before the request."""

    def __init__(self, url: str, policy) -> None:
        self.url = url
        self.policy = policy
        self._session = None

    def _open(self):
        import aiohttp
        from aiohttp.abc import AbstractResolver

        from trainer.outbound import client as outbound_client

        policy = self.policy

        class VettingResolver(AbstractResolver):
            async def resolve(self, host, port=0, family=socket.AF_INET):
                addresses = await outbound_client.resolve_host(host, port)
                for address in addresses:
                    if (reason := policy.address_refusal(address, host=host)) is not None:
                        raise OSError(f"refused: {address} is {reason}")
                return [
                    {
                        "hostname": host,
                        "host": address,
                        "port": port,
                        "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                        "proto": 0,
                        "flags": socket.AI_NUMERICHOST,
                    }
                    for address in addresses
                ]

            async def close(self):
                pass

        connector = aiohttp.TCPConnector(
            limit=256, resolver=VettingResolver(), use_dns_cache=False, happy_eyeballs_delay=0.25
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
        )

    async def execute(self, calls, *, item, trace_id):
        return list(await asyncio.gather(*(self._one(call, item, trace_id) for call in calls)))

    async def _one(self, call, item, trace_id):
        import aiohttp

        from trainer.interfaces import ToolResult
        from trainer.outbound.tools import ToolEndpoint, build_tool_request

        if self._session is None:
            self._session = self._open()
        body, headers = build_tool_request(
            call=call, endpoint=ToolEndpoint(url=self.url), item=item, trace_id=trace_id
        )
        started = time.perf_counter()
        async with self._session.post(
            self.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(65536):
                size += len(chunk)
                if size > 1_000_000:
                    raise RuntimeError("over the cap")
                chunks.append(chunk)
        output = json.loads(b"".join(chunks))["output"]
        return ToolResult(
            call_id=call.call_id,
            name=call.name,
            output=output,
            ok=response.status == 200,
            latency_ms=(time.perf_counter() - started) * 1000,
            status_code=response.status,
            attempts=1,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_executor(kind: str, url: str, latency_s: float):
    if kind == "none":
        return SleepExecutor(latency_s)
    if kind == "old":
        old = load_old_outbound()
        policy = sys.modules[f"{OLD_PACKAGE}.policy"].OutboundPolicy(allow_loopback=True)
        return old.HttpToolExecutor(
            endpoints={"lookup": old.ToolEndpoint(url=url, timeout_s=30.0)}, policy=policy
        )
    from trainer.outbound.policy import OutboundPolicy

    if kind == "aiohttp":
        return AiohttpCandidateExecutor(url, OutboundPolicy(allow_loopback=True))
    from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

    return HttpToolExecutor(
        endpoints={"lookup": ToolEndpoint(url=url, timeout_s=30.0)},
        policy=OutboundPolicy(allow_loopback=True),
    )


def run_once(*, tokenizer, executor, loop, rollouts_count: int, calls_per_rollout: int) -> tuple[float, list]:
    import torch

    from trainer.generation import SamplingParams, ScriptedBackend
    from trainer.rollout import EngineLimits, RolloutEngine, RolloutLimits, render_prompt, start_rollout

    assistant_header = tokenizer.encode("<|im_start|>assistant", add_special_tokens=False)

    header_bytes = array("q", assistant_header).tobytes()

    def respond(prompt_ids: list[int]) -> str:
        # Count the assistant turns so far: call the tool `calls_per_rollout` times, then answer. A
        # byte search (at whole-token offsets) instead of a Python scan of the prompt: the stub stands
        # in for the policy on its GPU, and the scan cost a fifth of the engine side's CPU per run.
        data = array("q", prompt_ids).tobytes()
        turns, at = 0, data.find(header_bytes)
        while at != -1:
            turns += at % 8 == 0
            at = data.find(header_bytes, at + 1)
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
    parser.add_argument("--repeats", type=int, default=5, help="runs per client, interleaved")
    parser.add_argument(
        "--clients",
        default="old,new",
        help="comma-separated, run interleaved in this order: old, new, aiohttp, none (default old,new)",
    )
    parser.add_argument(
        "--server",
        choices=["thread", "process"],
        default="thread",
        help="run the tool server in this process's threads (default) or in a child process",
    )
    args = parser.parse_args()
    clients = [name.strip() for name in args.clients.split(",") if name.strip()]
    unknown = sorted(set(clients) - set(CLIENT_NAMES))
    if unknown or not clients:
        parser.error(
            f"unknown client(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(CLIENT_NAMES)}"
        )

    from transformers import AutoTokenizer

    import trainer.outbound.client as outbound_client
    from trainer.tiny import build_tiny_model

    cache = Path(os.environ.get("RFTWEB_BENCH_CACHE", Path(tempfile.gettempdir()) / "rftweb-bench-models"))
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(cache / "tiny"))
    connections = multiprocessing.get_context("spawn").Value("i", 0)  # accepted by the tool server
    if args.server == "process":
        server_process, url = start_tool_server_process(args.latency_ms / 1000, connections)
        server = None
    else:
        server, url = start_tool_server(args.latency_ms / 1000, connections)
    bound = args.calls * args.latency_ms / 1000
    # The venv's editable install decides which checkout is imported: say which one it was.
    print(f"new client module: {outbound_client.__file__}")
    print(
        f"machine: {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
        f"(a shared machine: other jobs run too); {args.rollouts} rollouts x {args.calls} tool calls, "
        f"{args.latency_ms:.0f} ms per call, tool server in {'a child process' if server is None else 'this process'}"
    )
    loop = asyncio.new_event_loop()
    executors = {name: make_executor(name, url, args.latency_ms / 1000) for name in clients}
    walls: dict[str, list[float]] = {name: [] for name in clients}
    # CPU seconds of this process per run: less disturbed by other jobs than wall time (with the
    # default thread server it includes the server's handler threads).
    cpus: dict[str, list[float]] = {name: [] for name in clients}
    try:
        # A warm-up run per client (connections, caches) that is not counted.
        for name in clients:
            opened = connections.value
            run_once(
                tokenizer=tokenizer,
                executor=executors[name],
                loop=loop,
                rollouts_count=args.rollouts,
                calls_per_rollout=args.calls,
            )
            print(f"warm-up {name:>7}: {connections.value - opened} connections opened")
        for repeat in range(args.repeats):
            for name in clients:
                opened = connections.value
                cpu_started = time.process_time()
                wall, rollouts = run_once(
                    tokenizer=tokenizer,
                    executor=executors[name],
                    loop=loop,
                    rollouts_count=args.rollouts,
                    calls_per_rollout=args.calls,
                )
                failures = sum(1 for r in rollouts for result in r.tool_results if not result.ok)
                calls = sum(len(r.tool_results) for r in rollouts)
                assert calls == args.rollouts * args.calls, calls
                walls[name].append(wall)
                cpus[name].append(time.process_time() - cpu_started)
                print(
                    f"run {repeat + 1} {name:>7}: {wall:.2f} s wall, {cpus[name][-1]:.2f} s CPU, {calls} calls, {failures} failed, "
                    f"{connections.value - opened} connections opened, {wall / bound:.2f}x the {bound:.1f} s bound, "
                    f"load {os.getloadavg()[0]:.2f}"
                )
    finally:
        for executor in executors.values():
            loop.run_until_complete(executor.aclose())
        loop.close()
        if server is None:
            server_process.terminate()
        else:
            server.shutdown()
    print(
        f"load average {os.getloadavg()[0]:.2f} at the end; sequential would take {args.rollouts * args.calls * args.latency_ms / 1000:.0f} s"
    )
    medians = {name: statistics.median(values) for name, values in walls.items()}
    for name in clients:
        print(
            f"{name:>7} median {medians[name]:.2f} s (min {min(walls[name]):.2f}) = {medians[name] / bound:.2f}x the "
            f"{bound:.1f} s latency bound (goal <= 3x)  [{CLIENT_NAMES[name]}]"
        )
    if "old" in medians:
        for name in clients:
            if name in ("old", "none"):
                continue
            pairs = [candidate / old for candidate, old in zip(walls[name], walls["old"], strict=True)]
            print(
                f"{name} / old: {medians[name] / medians['old']:.2f}x by medians, pairwise runs "
                f"{', '.join(f'{ratio:.2f}' for ratio in pairs)} (goal for the new stack <= 1.2x); "
                f"CPU {statistics.median(cpus[name]) / statistics.median(cpus['old']):.2f}x by medians"
            )


if __name__ == "__main__":
    main()
