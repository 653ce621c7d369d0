"""A stand-in training worker for the sweeper test: starts a run's environments through the real
rollout engine and the database-backed ledger, then hangs mid-step (its policy never answers) until
the test SIGKILLs it. Usage: python tests/environment_worker.py RUN_ID ROLLOUTS MODEL_DIR
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rftweb.settings.test")

import django  # noqa: E402

django.setup()

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from experiments.models import Run  # noqa: E402
from experiments.services.environments import build_environment_for  # noqa: E402
from trainer.generation import SamplingParams, ScriptedBackend  # noqa: E402
from trainer.rollout import RolloutEngine, RolloutLimits, start_rollout  # noqa: E402

CALL = '<tool_call>{"name": "wait", "arguments": {}}</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "wait", "description": "Waits.", "parameters": {}}}]


class HangingTools:
    """Every rollout's tool call waits forever: the worker is killed while its rollouts are mid-step."""

    async def execute(self, calls, *, item, trace_id):
        print(f"mid-step {trace_id}", flush=True)
        await asyncio.sleep(3600)
        return []


def main() -> None:
    run_id, count, model_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    run = Run.objects.select_related("environment").get(pk=run_id)
    environment = build_environment_for(run)
    loop = asyncio.new_event_loop()
    engine = RolloutEngine(
        backend=ScriptedBackend(
            tokenizer=tokenizer, stop_id=tokenizer.eos_token_id, respond=lambda _ids: CALL
        ),
        tokenizer=tokenizer,
        tool_executor=HangingTools(),
        loop=loop,
        limits=RolloutLimits(
            max_turns=1,
            max_new_tokens_per_turn=64,
            max_tokens_per_rollout=128,
            tool_call_budget=None,
            tool_call_penalty=0,
        ),
        environment=environment,
        environment_context_tokens=128,
    )
    item = {"messages": [{"role": "user", "content": "Go."}]}
    rollouts = [
        start_rollout(
            tokenizer=tokenizer,
            item=item,
            item_index=i,
            group_index=i,
            sample_index=0,
            split="train",
            run_tools=TOOLS,
        )
        for i in range(count)
    ]
    engine.run(rollouts, sampling=SamplingParams(temperature=1.0), generator=torch.Generator())


if __name__ == "__main__":
    main()
