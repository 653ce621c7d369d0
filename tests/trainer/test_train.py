"""train() end to end on the tiny local model: KL, grader errors, budgets, eval, resume, stop."""

from __future__ import annotations

import asyncio
import math

import pytest

from trainer import TrainerConfig, train
from trainer.generation import ScriptedBackend
from trainer.interfaces import GradeResult
from trainer.toy import TOY_TOOLS, ToyGrader, ToyToolExecutor, toy_items

TIMING_KEYS = {
    "timing/rollout_s",
    "timing/grading_s",
    "timing/update_s",
    "step_time",
    "tokens_per_s",
    "eval/time_s",
    "timing/rollout_generating_s",
    "timing/rollout_tool_wait_s",
    "timing/rollout_wall_s_p50",
    "timing/rollout_wall_s_p95",
    "engine/batch_occupancy",  # which rollouts share a forward depends on timing
}


def _config(model_dir, **overrides):
    values = dict(
        model=str(model_dir),
        prompts_per_step=2,
        group_size=4,
        max_turns=2,
        max_new_tokens_per_turn=8,
        max_tokens_per_rollout=48,
        learning_rate=5e-3,
        eval_interval=100,
        checkpoint_interval=100,
        eval_samples_per_item=3,
        micro_batch_size=3,
        steps=2,
        seed=11,
    )
    values.update(overrides)
    return TrainerConfig.from_dict(values)


class LengthGrader:
    """Scores by answer length, so that a random model's rollouts already differ in reward."""

    async def grade(self, sample, item, *, trace_id):
        return GradeResult(score=(len(sample["output_text"]) % 3) / 2, sub_scores={"length": 1.0})


def _run(config, reporter, tmp_path, **kwargs):
    arguments = dict(
        config=config,
        train_items=toy_items(count=8, seed=1),
        eval_items=[],
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=LengthGrader(),
        reporter=reporter,
        output_dir=str(tmp_path / "out"),
    )
    arguments.update(kwargs)
    return train(**arguments)


def _scripted(turns):
    def factory(model, tokenizer):
        state = {"n": 0}

        def respond(prompt_ids):
            text = tokenizer.decode(prompt_ids)
            done = text.count("<|im_start|>assistant") - 1
            state["n"] += 1
            return turns[min(done, len(turns) - 1)]

        return ScriptedBackend(
            tokenizer=tokenizer, stop_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), respond=respond
        )

    return factory


def test_kl_is_zero_before_the_first_update_and_grows_after(tiny_model_dir, reporter, tmp_path):
    result = _run(_config(tiny_model_dir, kl_beta=0.5, learning_rate=5e-2), reporter, tmp_path)
    assert result.final_step == 2 and not result.stopped
    assert [s for s, _, _ in reporter.steps] == [1, 2]
    assert reporter.metrics_at(1)["kl"] == 0.0
    assert reporter.metrics_at(2)["kl"] > 0.0
    metrics = reporter.metrics_at(2)
    for key in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "rewards/length/mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "tools/calls_mean",
        "tools/calls_p95",
        "tools/failure_frequency",
        "tools/latency_ms_p50",
        "entropy",
        "loss",
        "grad_norm",
        "learning_rate",
        "timing/rollout_s",
        "timing/grading_s",
        "timing/update_s",
        "step_time",
        "tokens_per_s",
        "progress/step",
        "progress/total_steps",
        "grader_errors/excluded",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["progress/total_steps"] == 2.0
    assert len(reporter.trajectories_at(2)) == 8


def test_a_grader_error_excludes_the_rollout_instead_of_scoring_zero(tiny_model_dir, reporter, tmp_path):
    class FlakyGrader:
        def __init__(self):
            self.calls = 0

        async def grade(self, sample, item, *, trace_id):
            self.calls += 1
            if self.calls % 2 == 0:
                raise TimeoutError("judge timed out")
            if self.calls % 3 == 0:
                return GradeResult(
                    score=None, errors=[{"grader": "judge", "type": "invalid_json", "message": "x"}]
                )
            return GradeResult(score=1.0 if "red" in sample["output_text"] else 0.5)

    _run(
        _config(tiny_model_dir, steps=1),
        reporter,
        tmp_path,
        grader=FlakyGrader(),
        tool_executor=ToyToolExecutor(),
    )
    records = reporter.trajectories_at(1)
    excluded = [r for r in records if r.reward is None]
    kept = [r for r in records if r.reward is not None]
    assert excluded and kept
    assert all(r.advantage is None and r.grader_errors for r in excluded)
    assert all(r.advantage is not None for r in kept)
    metrics = reporter.metrics_at(1)
    assert metrics["grader_errors/excluded"] == len(excluded)
    assert metrics["grader_errors/exception"] + metrics.get("grader_errors/invalid_json", 0) == len(excluded)
    assert metrics["reward"] == pytest.approx(sum(r.reward for r in kept) / len(kept))
    assert any("excluded" in message for _, message in reporter.logs)


def test_calls_over_budget_are_penalised(tiny_model_dir, reporter, tmp_path):
    call = '<tool_call>{"name": "peek", "arguments": {}}</tool_call>'
    config = _config(
        tiny_model_dir,
        steps=1,
        tool_call_budget=1,
        tool_call_penalty=0.25,
        max_turns=3,
        max_new_tokens_per_turn=32,
        max_tokens_per_rollout=256,
    )
    items = toy_items(count=8, seed=1)
    for item in items:
        item["answer"] = "red"
    _run(
        config,
        reporter,
        tmp_path,
        backend_factory=_scripted([call, call, "red"]),
        train_items=items,
        grader=ToyGrader(),
    )
    records = reporter.trajectories_at(1)
    assert {r.finish_reason for r in records} == {"budget"}
    assert all(r.tool_calls == 2 and r.penalty == 0.25 and r.reward == r.score - 0.25 for r in records)

    reporter.steps.clear()
    config = _config(
        tiny_model_dir,
        steps=1,
        tool_call_budget=2,
        tool_call_penalty=0.25,
        max_turns=3,
        max_new_tokens_per_turn=32,
        max_tokens_per_rollout=256,
    )
    _run(
        config,
        reporter,
        tmp_path / "b",
        backend_factory=_scripted([call, call, "red"]),
        train_items=items,
        grader=ToyGrader(),
    )
    records = reporter.trajectories_at(1)
    assert all(r.finish_reason == "answer" and r.penalty == 0.0 and r.reward == 1.0 for r in records)
    metrics = reporter.metrics_at(1)
    assert metrics["tools/calls_mean"] == 2.0 and metrics["tools/peek/calls"] == 16.0
    assert metrics["completions/clipped_ratio"] == 0.0


def test_eval_baseline_interval_and_end_with_pass_at_k(tiny_model_dir, reporter, tmp_path):
    config = _config(tiny_model_dir, steps=3, eval_interval=2, eval_samples_per_item=3)
    _run(config, reporter, tmp_path, eval_items=toy_items(count=2, seed=5))
    assert [s for s, _, _ in reporter.steps] == [0, 1, 2, 3]
    for step in (0, 2, 3):
        metrics = reporter.metrics_at(step)
        assert {"eval/reward", "eval/pass@1", "eval/pass@2", "eval/pass@3", "eval/tools/calls_mean"} <= set(
            metrics
        )
        assert metrics["eval/pass@1"] <= metrics["eval/pass@2"] <= metrics["eval/pass@3"]
        evals = reporter.trajectories_at(step, split="eval")
        assert sorted((r.item_index, r.sample_index) for r in evals) == [
            (i, k) for i in range(2) for k in range(3)
        ]
    assert "reward" not in reporter.metrics_at(0)
    assert "eval/reward" not in reporter.metrics_at(1)


def test_resume_from_a_checkpoint_reproduces_the_next_step_exactly(
    tiny_model_dir, reporter_factory, tmp_path
):
    config = _config(tiny_model_dir, steps=3, checkpoint_interval=2, kl_beta=0.1, iterations_per_batch=2)
    first = reporter_factory()
    _run(config, first, tmp_path / "a")
    assert [s for s, _ in first.checkpoints] == [2, 3]
    checkpoint = dict(first.checkpoints)[2]

    resumed = reporter_factory()
    result = _run(config, resumed, tmp_path / "b", resume_from=checkpoint)
    assert result.final_step == 3
    assert [s for s, _, _ in resumed.steps] == [3]
    expected = {k: v for k, v in first.metrics_at(3).items() if k not in TIMING_KEYS}
    actual = {k: v for k, v in resumed.metrics_at(3).items() if k not in TIMING_KEYS}
    assert actual == expected
    assert expected["kl"] > 0  # the adapter really moved, so the comparison is not trivial
    first_answers = [r.final_answer for r in first.trajectories_at(3)]
    assert [r.final_answer for r in resumed.trajectories_at(3)] == first_answers


def test_should_stop_ends_cleanly_and_keeps_a_checkpoint(tiny_model_dir, reporter, tmp_path):
    result = _run(
        _config(tiny_model_dir, steps=10, checkpoint_interval=100),
        reporter,
        tmp_path,
        should_stop=lambda: len(reporter.steps) >= 2,
    )
    assert result.stopped and result.final_step == 2
    assert reporter.checkpoints[-1][0] == 2
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert result.final_adapter_path == str(tmp_path / "out" / "adapter")


def test_stop_during_the_baseline_eval_is_a_stop_not_an_error(tiny_model_dir, reporter, tmp_path):
    # A user who cancels while the step-0 evaluation runs must see "cancelled", not a crash.
    asked = []

    def should_stop():
        asked.append(True)
        return len(asked) > 1  # false for the check before the baseline, true inside it

    result = _run(
        _config(tiny_model_dir, steps=10),
        reporter,
        tmp_path,
        eval_items=toy_items(count=2, seed=5),
        should_stop=should_stop,
    )
    assert result.stopped and result.final_step == 0
    assert reporter.steps == []  # no step trained, nothing half-reported


def test_one_event_loop_for_the_whole_run_and_aclose_at_the_end(tiny_model_dir, reporter, tmp_path):
    class TrackingExecutor(ToyToolExecutor):
        def __init__(self):
            super().__init__()
            self.loops = set()
            self.closed_on = None

        async def execute(self, calls, *, item, trace_id):
            self.loops.add(id(asyncio.get_running_loop()))
            return await super().execute(calls, item=item, trace_id=trace_id)

        async def aclose(self):
            self.closed_on = id(asyncio.get_running_loop())

    class TrackingGrader(ToyGrader):
        def __init__(self):
            self.loops = set()

        async def grade(self, sample, item, *, trace_id):
            self.loops.add(id(asyncio.get_running_loop()))
            return await super().grade(sample, item, trace_id=trace_id)

    call = '<tool_call>{"name": "peek", "arguments": {}}</tool_call>'
    executor, grader = TrackingExecutor(), TrackingGrader()
    _run(
        _config(tiny_model_dir, steps=2, max_new_tokens_per_turn=32, max_tokens_per_rollout=256),
        reporter,
        tmp_path,
        tool_executor=executor,
        grader=grader,
        backend_factory=_scripted([call, "red"]),
    )
    assert len(executor.loops) == 1 and executor.loops == grader.loops
    assert executor.closed_on in executor.loops
    trace_ids = {trace for trace, _ in executor.calls}
    assert len(trace_ids) == 16  # one per rollout, 8 rollouts x 2 steps


def test_merged_model_export_loads_without_peft(tiny_model_dir, reporter, tmp_path):
    from transformers import AutoModelForCausalLM

    result = _run(_config(tiny_model_dir, steps=1, export_merged=True), reporter, tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(result.merged_model_path)
    assert merged.config.model_type == "qwen2"


def test_metric_names_follow_trl(tiny_model_dir, reporter, tmp_path):
    """TRL's current names: clip_ratio/{low,high,region}_*, num_tokens, min/max lengths, reward
    std per sub-score, and no `kl` when beta is 0."""
    result = _run(_config(tiny_model_dir, kl_beta=0.0), reporter, tmp_path)
    assert result.final_step == 2
    first, second = reporter.metrics_at(1), reporter.metrics_at(2)
    assert "kl" not in first and "clip_ratio" not in first
    for key in (
        "clip_ratio/low_mean",
        "clip_ratio/low_min",
        "clip_ratio/high_mean",
        "clip_ratio/high_max",
        "clip_ratio/region_mean",
    ):
        assert 0.0 <= first[key] <= 1.0, key
    # One optimizer step per batch: the ratio is exactly 1, nothing is clipped.
    assert first["clip_ratio/region_mean"] == 0.0
    records = reporter.trajectories_at(1)
    lengths = [r.completion_tokens for r in records]
    assert (first["completions/min_length"], first["completions/max_length"]) == (min(lengths), max(lengths))
    assert first["rewards/length/std"] == 0.0  # the sub-score is constant
    # Prompt and completion tokens of every rollout (tool results included), summed over steps.
    assert first["num_tokens"] >= sum(r.prompt_tokens + r.completion_tokens for r in records)
    assert second["num_tokens"] >= 2 * sum(r.prompt_tokens for r in records)
    assert second["num_tokens"] > first["num_tokens"]
