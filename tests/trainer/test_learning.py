"""RL raises the toy task's success rate, with the tool served over real HTTP through the real client.

The toy task's reward needs the `peek` tool (see trainer/toy.py). The tiny model is warm-started for a
few seconds on demonstrations (half call the tool, half guess), then GRPO must make it call the tool.
"""

from __future__ import annotations

import time

import pytest

from trainer import TrainerConfig, train
from trainer.toy import TOY_TOOL_NAME, TOY_TOOLS, ToyGrader, toy_items, warm_start_toy_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("devices", [1, 2])
def test_rl_raises_the_reward_on_the_toy_task_over_http(devices, toy_tool_server, reporter, tmp_path):
    from conftest import MODEL_CACHE

    from trainer.outbound.policy import OutboundPolicy
    from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

    started = time.perf_counter()
    model_dir = warm_start_toy_model(MODEL_CACHE / "toy-warm", base_dir=MODEL_CACHE / "tiny")
    warm_s = time.perf_counter() - started
    base_url, received = toy_tool_server
    executor = HttpToolExecutor(
        endpoints={TOY_TOOL_NAME: ToolEndpoint(url=f"{base_url}/tools/{TOY_TOOL_NAME}", timeout_s=10.0)},
        policy=OutboundPolicy(allow_loopback=True),
    )
    config = TrainerConfig.from_dict(
        {
            "model": str(model_dir),
            # 2: two gloo ranks started by the elastic launcher, 2 prompt groups each.
            "devices": devices,
            "steps": 40,
            "prompts_per_step": 4,
            "group_size": 8,
            # 2e-3 learned faster but then drifted into repeated, malformed tool calls on some seeds
            # and CPUs (seed 1: reward 0.56 -> 0.00); at 1e-3 seeds 1-7 all went from about 0.5 to
            # 0.82-0.95 over the last 10 steps.
            "learning_rate": 1e-3,
            # The tiny model's first-token decision (call the tool or guess) moves far faster when
            # the output projection is adapted too.
            "lora_target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
                "lm_head",
            ],
            "max_turns": 3,
            "max_new_tokens_per_turn": 24,
            "max_tokens_per_rollout": 128,
            "micro_batch_size": 16,
            "checkpoint_interval": 1000,
            "seed": 3,
        }
    )
    if devices == 1:
        result = train(
            config=config,
            train_items=toy_items(count=64, seed=1),
            eval_items=[],
            tools=TOY_TOOLS,
            tool_executor=executor,
            grader=ToyGrader(),
            reporter=reporter,
            output_dir=str(tmp_path),
        )
    else:
        from distributed_entry import run_toy

        from trainer.distributed import launch

        outcome = launch(
            run_toy,
            [
                {
                    "config": config.to_dict(),
                    "items": 64,
                    "output_dir": str(tmp_path / "run"),
                    "tool_url": f"{base_url}/tools/{TOY_TOOL_NAME}",
                }
            ],
            nprocs=devices,
            log_dir=tmp_path / "ranks",
        )[0]
        result = outcome["result"]
        reporter.steps = outcome["steps"]
        assert all(metrics["world_size"] == 2.0 for _, metrics, _ in reporter.steps)
    assert result.final_step == 40
    rewards = [metrics["reward"] for _, metrics, _ in reporter.steps]
    calls = [metrics["tools/calls_mean"] for _, metrics, _ in reporter.steps]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(
        f"\nwarm start {warm_s:.1f} s, RL {time.perf_counter() - started - warm_s:.1f} s; "
        f"mean reward first 10 steps {first:.3f}, last 10 steps {last:.3f}; "
        f"tool calls per rollout {sum(calls[:10]) / 10:.2f} -> {sum(calls[-10:]) / 10:.2f}"
    )
    failures = sum(metrics["tools/failure_frequency"] for _, metrics, _ in reporter.steps) / len(
        reporter.steps
    )
    print(f"tool failure frequency (malformed calls included) {failures:.3f}")
    assert last >= first + 0.25
    # The tool really went over HTTP, with the wire format's body and rollout header.
    assert received
    headers, body = received[0]
    assert body["type"] == "function_call" and body["name"] == TOY_TOOL_NAME
    assert body["trace_id"].startswith("trace_") and headers["X-RFT-Rollout-Id"] == body["trace_id"]
    assert body["item"]["answer"] in {"red", "blue", "green", "gold"}
