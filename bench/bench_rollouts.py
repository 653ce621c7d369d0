"""Rollout wall time: the continuous-batching engine against the turn-synchronous one it replaced.

    .venv/bin/python bench/bench_rollouts.py                     # tiny model, then SmolLM2-135M (bundled)
    .venv/bin/python bench/bench_rollouts.py --models tiny       # quick
    .venv/bin/python bench/bench_rollouts.py --models qwen2-0.5b --device cuda --dtype bfloat16

64 rollouts (16 prompts x 4), up to 6 turns, at most 48 new tokens per turn, tool results of about
200 tokens from a real local HTTP server whose latency per call is drawn from a seeded lognormal
(p50 100 ms, p99 about 3 s; the same draw for the same rollout and turn in both engines). The models
do not call tools on their own, so both engines force each sampled token to a scripted turn (five
tool calls, then an answer) while the model runs every forward pass and samples every token with the
trainer's sampling (see bench/forced_turns.py). The old engine (bench/turn_sync_engine.py) and the
new one run in this same process, interleaved, on the same model with a LoRA adapter.

Prints, per model: wall time of each, generated tokens per second, prefill tokens per generated
token, the machine's load; the last line is `ratio new/old = X.XX` for the last model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROMPTS = 16
GROUP_SIZE = 4
MAX_TURNS = 6
MAX_NEW_TOKENS_PER_TURN = 48
LATENCY_P50_S = 0.1
LATENCY_P99_S = 3.0
SEED = 0
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Looks a topic up in the reference notes.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
TOPICS = [
    "the boiling point of water at altitude",
    "why the sky is blue",
    "how a bicycle stays upright",
    "the first law of thermodynamics",
    "what a hash table is",
    "how vaccines train the immune system",
    "the causes of ocean tides",
    "how compilers optimise loops",
    "why bread rises",
    "the life cycle of a star",
    "how a transistor switches",
    "what makes a good password",
    "how bees find flowers",
    "the history of the printing press",
    "why ice floats",
    "how rainbows form",
]
WORDS = (
    "the notes say that measured values vary with conditions and that several sources agree on the "
    "main effect while smaller effects depend on temperature pressure and the method used to observe "
    "them in practice engineers keep a margin and check the result twice before relying on it"
).split()


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def latency_s(key: str) -> float:
    """Seeded lognormal: median LATENCY_P50_S, 99th percentile LATENCY_P99_S."""
    sigma = math.log(LATENCY_P99_S / LATENCY_P50_S) / 2.3263
    return random.Random(f"{SEED}:{key}").lognormvariate(math.log(LATENCY_P50_S), sigma)


def tool_text(key: str, words: int) -> str:
    rng = random.Random(f"text:{key}")
    return " ".join(rng.choice(WORDS) for _ in range(words))


class ToolServer:
    """The lookup tool over HTTP (agent-RFT wire format), answering after the seeded latency."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = f"{body['item']['rollout_key']}:{body['arguments']}"
                time.sleep(latency_s(key))
                payload = json.dumps(
                    {
                        "type": "function_call_output",
                        "call_id": body["call_id"],
                        "output": tool_text(key, body["item"]["result_words"]),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tools/lookup"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeyedExecutor:
    """Tells the server which rollout calls (so both engines get the same latency per rollout and turn)."""

    def __init__(self, inner, keys: dict[str, str], result_words: int) -> None:
        self.inner = inner
        self.keys = keys
        self.result_words = result_words

    async def execute(self, calls, *, item, trace_id):
        return await self.inner.execute(
            calls,
            item={**item, "rollout_key": self.keys[trace_id], "result_words": self.result_words},
            trace_id=trace_id,
        )


def scripted_turns() -> list[str]:
    calls = [
        f'<tool_call>{{"name": "lookup", "arguments": {{"query": "note {turn}"}}}}</tool_call>'
        for turn in range(1, MAX_TURNS)
    ]
    return [*calls, "The notes agree on the main effect; the answer is 42."]


def make_rollouts(tokenizer, prompts=PROMPTS, group_size=GROUP_SIZE):
    from trainer.rollout import start_rollout

    rollouts, keys = [], {}
    for group in range(prompts):
        item = {
            "messages": [
                {
                    "role": "system",
                    "content": "You are a careful assistant. Use the lookup tool before answering.",
                },
                {
                    "role": "user",
                    "content": f"Explain {TOPICS[group % len(TOPICS)]}. Check your notes first.",
                },
            ]
        }
        prompt_ids = None
        for sample in range(group_size):
            rollout = start_rollout(
                tokenizer=tokenizer,
                item=item,
                item_index=group,
                group_index=group,
                sample_index=sample,
                split="train",
                run_tools=[LOOKUP_TOOL],
                prompt_ids=prompt_ids,
            )
            prompt_ids = rollout.prompt_ids
            keys[rollout.trace_id] = f"{group}-{sample}"
            rollouts.append(rollout)
    return rollouts, keys


def run_engine(
    kind, *, model, tokenizer, script, server_url, max_tokens, sampling, seed, result_words, prompts=PROMPTS
):
    import torch
    from forced_turns import ForcedContinuousBackend, turn_sync_pick
    from turn_sync_engine import KVCacheBackend, TurnSyncRolloutEngine

    from trainer.models import stop_token_ids
    from trainer.outbound.policy import OutboundPolicy
    from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint
    from trainer.rollout import RolloutEngine, RolloutLimits

    rollouts, keys = make_rollouts(tokenizer, prompts)
    inner = HttpToolExecutor(
        {"lookup": ToolEndpoint(url=server_url, timeout_s=60.0)},
        OutboundPolicy(allow_loopback=True),
        max_retries=0,
    )
    executor = KeyedExecutor(inner, keys, result_words)
    limits = RolloutLimits(
        max_turns=MAX_TURNS,
        max_new_tokens_per_turn=MAX_NEW_TOKENS_PER_TURN,
        max_tokens_per_rollout=max_tokens,
        tool_call_budget=None,
        tool_call_penalty=0.0,
        deadline_s=None,
    )
    loop = asyncio.new_event_loop()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    stop_ids = stop_token_ids(tokenizer)
    started = time.perf_counter()
    try:
        if kind == "old":
            backend = KVCacheBackend(
                model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids, pick=turn_sync_pick(script)
            )
            engine = TurnSyncRolloutEngine(
                backend=backend, tokenizer=tokenizer, tool_executor=executor, loop=loop, limits=limits
            )
            engine.run(rollouts, sampling=sampling, generator=generator)
            prefill, generated, busy = backend.prefill_tokens, backend.generated_tokens, engine.generation_s
            occupancy = "all rollouts in lockstep per turn"
        else:
            backend = ForcedContinuousBackend(
                script=script, model=model, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids
            )
            engine = RolloutEngine(
                backend=backend, tokenizer=tokenizer, tool_executor=executor, loop=loop, limits=limits
            )
            stats = engine.run(rollouts, sampling=sampling, generator=generator)
            prefill, generated, busy = (
                stats.engine.prefill_tokens,
                stats.engine.generated_tokens,
                stats.engine.busy_s,
            )
            occupancy = (
                f"{stats.engine.slots} slots (the in-flight cap from the KV-cache budget), "
                f"occupancy {stats.engine.batch_occupancy:.2f}"
            )
        wall = time.perf_counter() - started
    finally:
        loop.run_until_complete(inner.aclose())
        loop.close()
    calls = sum(len(r.tool_results) for r in rollouts)
    turns = sum(r.turns for r in rollouts)
    assert all(r.finish_reason == "answer" for r in rollouts), {r.finish_reason for r in rollouts}
    assert generated == sum(r.generated_tokens for r in rollouts)
    return {
        "wall_s": wall,
        "generated": generated,
        "prefill": prefill,
        "busy_s": busy,
        "calls": calls,
        "turns": turns,
        "tool_tokens": sum(r.completion_mask.count(0) for r in rollouts) / max(1, calls),
        "occupancy": occupancy,
    }


def load_model(name: str, args):
    import torch

    from trainer.config import TrainerConfig
    from trainer.models import bundled_model_path, load_policy
    from trainer.tiny import build_tiny_model

    if name == "smollm2":
        source = str(bundled_model_path())
    else:
        cache = Path(os.environ.get("RFTWEB_TEST_MODEL_CACHE", ROOT / ".pytest_cache" / "rftweb-models"))
        shape = "tiny" if name == "tiny" else name
        source = str(build_tiny_model(cache / shape, shape=shape))
    config = TrainerConfig(model=source, device=args.device, dtype=args.dtype)
    torch.manual_seed(SEED)
    model, tokenizer = load_policy(config=config)
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2, qwen2-0.5b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="old/new pairs per model, interleaved")
    parser.add_argument(
        "--prompts",
        type=int,
        default=PROMPTS,
        help=f"prompts of {GROUP_SIZE} rollouts each (the goal: {PROMPTS})",
    )
    parser.add_argument("--tool-tokens", type=int, default=200, help="tokens per tool result (about)")
    args = parser.parse_args()

    import torch

    from trainer.generation import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; {load_line()}"
    )
    print(
        f"{args.prompts * GROUP_SIZE} rollouts ({args.prompts} prompts x {GROUP_SIZE}), up to {MAX_TURNS} turns, "
        f"<= {MAX_NEW_TOKENS_PER_TURN} new tokens per turn, tool latency lognormal p50 {LATENCY_P50_S * 1000:.0f} ms "
        f"p99 {LATENCY_P99_S:.0f} s over real local HTTP."
    )
    print(
        "Every sampled token is forced to a scripted turn (5 tool calls, then an answer): the model runs "
        "every forward pass and samples every token, so both engines do the same work."
    )
    server = ToolServer()
    ratio = None
    try:
        with tempfile.TemporaryDirectory():
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                model, tokenizer = load_model(name, args)
                from forced_turns import TurnScript

                stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
                script = TurnScript(tokenizer=tokenizer, turns=scripted_turns(), stop_id=stop_id)
                longest = max(len(t) for t in script.turns if t is not None)
                assert longest <= MAX_NEW_TOKENS_PER_TURN, f"a scripted turn has {longest} tokens"
                # Words per result so that a result is about --tool-tokens tokens with this tokenizer.
                sample = tool_text("calibration", 400)
                per_word = len(tokenizer.encode(sample, add_special_tokens=False)) / 400
                result_words = max(1, round(args.tool_tokens / per_word))
                # Room for every turn and result, with a margin (the new engine reserves this per slot).
                max_tokens = MAX_TURNS * MAX_NEW_TOKENS_PER_TURN + (MAX_TURNS - 1) * (
                    round(args.tool_tokens * 1.25) + 32
                )
                sampling = SamplingParams(temperature=1.0, top_p=1.0)
                results: dict[str, list[dict]] = {"old": [], "new": []}
                for repeat in range(args.repeats):
                    for kind in ("old", "new"):
                        results[kind].append(
                            run_engine(
                                kind,
                                model=model,
                                tokenizer=tokenizer,
                                script=script,
                                server_url=server.url,
                                max_tokens=max_tokens,
                                sampling=sampling,
                                seed=SEED + repeat,
                                result_words=result_words,
                                prompts=args.prompts,
                            )
                        )
                        r = results[kind][-1]
                        print(
                            f"  {name} {kind}: {r['wall_s']:.2f} s wall, {r['generated']} tokens generated "
                            f"({r['generated'] / r['wall_s']:.1f}/s of wall, {r['generated'] / r['busy_s']:.1f}/s "
                            f"of engine time), prefill {r['prefill']} tokens = "
                            f"{r['prefill'] / r['generated']:.2f} per generated token; {r['turns']} turns, "
                            f"{r['calls']} tool calls, {r['tool_tokens']:.0f} result tokens per call; {r['occupancy']}; "
                            f"{load_line()}",
                            flush=True,
                        )
                old_wall = sum(r["wall_s"] for r in results["old"])
                new_wall = sum(r["wall_s"] for r in results["new"])
                old_prefill = sum(r["prefill"] for r in results["old"]) / sum(
                    r["generated"] for r in results["old"]
                )
                new_prefill = sum(r["prefill"] for r in results["new"]) / sum(
                    r["generated"] for r in results["new"]
                )
                ratio = new_wall / old_wall
                print(
                    f"{name}: old {old_wall / args.repeats:.2f} s, new {new_wall / args.repeats:.2f} s per run; "
                    f"prefill tokens per generated token old {old_prefill:.2f}, new {new_prefill:.2f} "
                    f"(new/old {new_prefill / old_prefill:.2f}); {load_line()}"
                )
                print(f"{name}: ratio new/old = {ratio:.2f}", flush=True)
                del model
    finally:
        server.close()
    if ratio is not None:
        print(f"ratio new/old = {ratio:.2f}")


if __name__ == "__main__":
    main()
