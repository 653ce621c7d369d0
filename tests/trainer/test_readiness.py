"""trainer.readiness: k base-model rollouts per item through the training loop's own evaluation."""

from __future__ import annotations

import pytest

from trainer import TrainerConfig, train
from trainer.config import ConfigError
from trainer.interfaces import GradeResult
from trainer.readiness import evaluate_base_model
from trainer.toy import TOY_TOOLS, ToyToolExecutor, toy_items


class LengthGrader:
    """Scores by answer length, so that a random model's rollouts already differ in reward."""

    async def grade(self, sample, item, *, trace_id):
        return GradeResult(score=(len(sample["output_text"]) % 3) / 2)


def _config(model_dir, **overrides):
    values = dict(
        model=str(model_dir),
        prompts_per_step=2,
        group_size=2,
        max_turns=2,
        max_new_tokens_per_turn=8,
        max_tokens_per_rollout=32,
        eval_samples_per_item=3,
        micro_batch_size=4,
        steps=1,
        eval_interval=100,
        checkpoint_interval=100,
        seed=5,
    )
    values.update(overrides)
    return TrainerConfig.from_dict(values)


@pytest.mark.slow
def test_k_rollouts_per_item_graded_and_identical_to_a_runs_baseline_eval(tiny_model_dir, reporter, tmp_path):
    items = toy_items(count=3, seed=2)
    result = evaluate_base_model(
        config=_config(tiny_model_dir),
        items=items,
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=LengthGrader(),
        k=4,
    )
    assert len(result.records) == 3 * 4
    assert sorted(result.rewards_by_item) == [0, 1, 2]
    assert all(len(rewards) == 4 for rewards in result.rewards_by_item.values())
    assert {r.split for r in result.records} == {"eval"} and {r.step for r in result.records} == {0}
    assert {f"eval/pass@{k}" for k in range(1, 5)} <= set(result.metrics)
    mean = sum(r.reward for r in result.records) / len(result.records)
    assert result.metrics["eval/reward"] == pytest.approx(mean)

    # The same sampling as a run's step-0 baseline eval: the same answers, rollout for rollout.
    train(
        config=_config(tiny_model_dir, eval_samples_per_item=4),
        train_items=items,
        eval_items=items,
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=LengthGrader(),
        reporter=reporter,
        output_dir=str(tmp_path / "out"),
    )
    baseline = reporter.trajectories_at(0, split="eval")
    assert [r.final_answer for r in baseline] == [r.final_answer for r in result.records]
    assert [r.reward for r in baseline] == [r.reward for r in result.records]


def test_no_items_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="items"):
        evaluate_base_model(
            config=_config(tiny_model_dir), items=[], tool_executor=ToyToolExecutor(), grader=LengthGrader()
        )
