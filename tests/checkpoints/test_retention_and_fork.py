"""Best-k checkpoint retention and a fork's start from its parent's adapter, on the tiny local model.

Pure trainer (no Django): the tiny model, the toy tool in process, graders written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import TrainerConfig, train
from trainer.checkpoint import checkpoint_name, prune_checkpoints, retained_checkpoints
from trainer.interfaces import GradeResult
from trainer.tiny import build_tiny_model
from trainer.toy import TOY_TOOLS, ToyToolExecutor, toy_items

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = ROOT / ".pytest_cache" / "rftweb-models"


@pytest.fixture(scope="module")
def tiny_model_dir() -> Path:
    return build_tiny_model(MODEL_CACHE / "tiny")


class Reporter:
    def __init__(self) -> None:
        self.steps: list[tuple[int, dict, list]] = []
        self.checkpoints: list[tuple[int, str, dict]] = []
        self.logs: list[tuple[str, str]] = []

    def report_step(self, step, metrics, trajectories) -> None:
        self.steps.append((step, dict(metrics), list(trajectories)))

    def report_checkpoint(self, step, path, metrics) -> None:
        self.checkpoints.append((step, path, dict(metrics)))

    def log(self, level, message) -> None:
        self.logs.append((level, message))

    def eval_records(self, step):
        return [r for s, _, records in self.steps if s == step for r in records if r.split == "eval"]


def test_the_policy_keeps_the_latest_plus_the_k_best():
    rewards = [(1, 0.2), (2, 0.9), (3, None), (4, 0.5), (5, 0.8), (6, 0.9), (7, None), (8, 0.1)]
    assert retained_checkpoints(rewards, keep_latest=1, keep_best=2) == {8, 6, 2}  # a tie: the later first
    assert retained_checkpoints(rewards, keep_latest=2, keep_best=3) == {7, 8, 6, 2, 5}
    assert retained_checkpoints(rewards, keep_latest=1, keep_best=0) == {8}
    assert retained_checkpoints(rewards, keep_latest=0, keep_best=1) == {1, 2, 3, 4, 5, 6, 7, 8}
    # The latest is kept even when it is also among the best (no double count, no extra kept).
    assert retained_checkpoints([(1, 0.1), (2, 0.3), (3, 0.9)], keep_latest=1, keep_best=1) == {3}


def test_pruning_reads_the_eval_reward_each_checkpoint_stored(tmp_path):
    for step, reward in [(10, 0.4), (20, 0.7), (30, None), (40, 0.2), (50, 0.3)]:
        directory = tmp_path / checkpoint_name(step)
        directory.mkdir()
        (directory / "adapter_model.safetensors").write_bytes(b"x")
        metrics = {"reward": 0.5} | ({"eval/reward": reward} if reward is not None else {})
        (directory / "trainer_state.json").write_text(
            json.dumps({"step": step, "total_steps": 50, "config": {}, "metrics": metrics})
        )
    (tmp_path / "checkpoint-000060").mkdir()  # incomplete (no state): not judged, not deleted
    deleted = prune_checkpoints(tmp_path, keep_latest=1, keep_best=2)
    assert sorted(path.name for path in deleted) == [checkpoint_name(30), checkpoint_name(40)]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        checkpoint_name(10),
        checkpoint_name(20),
        checkpoint_name(50),
        "checkpoint-000060",
    ]


class ScriptedEvalGrader:
    """Eval rollouts (items marked "scripted") score SCRIPT[eval round]; train rollouts 0 and 1 in
    turn, so each group of two differs and every step updates the adapter (whatever was sampled)."""

    def __init__(self, script, samples_per_round):
        self.script, self.samples_per_round, self.eval_calls = script, samples_per_round, 0
        self.train_calls = 0

    async def grade(self, sample, item, *, trace_id):
        if item.get("scripted"):
            eval_round = self.eval_calls // self.samples_per_round
            self.eval_calls += 1
            return GradeResult(score=self.script[eval_round], sub_scores={})
        self.train_calls += 1
        return GradeResult(score=float(self.train_calls % 2), sub_scores={})


def _config(model_dir, **overrides):
    values = dict(
        model=str(model_dir),
        prompts_per_step=1,
        group_size=2,
        max_turns=2,
        max_new_tokens_per_turn=6,
        max_tokens_per_rollout=32,
        learning_rate=2e-2,
        micro_batch_size=4,
        eval_samples_per_item=2,
        seed=5,
    )
    values.update(overrides)
    return TrainerConfig.from_dict(values)


def test_training_keeps_exactly_the_latest_plus_the_k_best_by_eval_reward(tiny_model_dir, tmp_path):
    # Eval rounds: the baseline (step 0), then steps 1..8.
    script = [0.0, 0.2, 0.9, 0.1, 0.5, 0.8, 0.3, 0.4, 0.6]
    eval_items = [{**toy_items(count=1, seed=9)[0], "scripted": True}]
    reporter = Reporter()
    train(
        config=_config(
            tiny_model_dir,
            steps=8,
            eval_interval=1,
            checkpoint_interval=1,
            keep_checkpoints=1,
            keep_best_checkpoints=2,
        ),
        train_items=toy_items(count=4, seed=1),
        eval_items=eval_items,
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=ScriptedEvalGrader(script, samples_per_round=2),
        reporter=reporter,
        output_dir=str(tmp_path),
    )
    assert [step for step, _, _ in reporter.checkpoints] == list(range(1, 9))
    assert [metrics["eval/reward"] for _, _, metrics in reporter.checkpoints] == pytest.approx(script[1:])
    kept = sorted(path.name for path in (tmp_path / "checkpoints").glob("checkpoint-*"))
    # The latest (8) plus the two best by eval reward (2: 0.9, 5: 0.8).
    assert kept == [checkpoint_name(2), checkpoint_name(5), checkpoint_name(8)]


def test_a_fork_starts_from_its_parents_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    eval_items = toy_items(count=3, seed=4)
    common = dict(eval_temperature=0.0, eval_samples_per_item=1)  # greedy: the same items, same answers
    parent = Reporter()
    train(
        config=_config(tiny_model_dir, steps=3, eval_interval=3, checkpoint_interval=3, **common),
        train_items=toy_items(count=4, seed=1),
        eval_items=eval_items,
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=ScriptedEvalGrader([0.0] * 10, samples_per_round=3),
        reporter=parent,
        output_dir=str(tmp_path / "parent"),
    )
    [(step, checkpoint, _)] = parent.checkpoints
    assert step == 3
    weights = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    assert any(float(t.abs().max()) > 0 for name, t in weights.items() if "lora_B" in name)  # trained

    fork = Reporter()
    train(
        # Edited settings (a lower learning rate), the same LoRA shape.
        config=_config(tiny_model_dir, steps=1, learning_rate=1e-3, eval_interval=5, **common),
        train_items=toy_items(count=4, seed=1),
        eval_items=eval_items,
        tools=TOY_TOOLS,
        tool_executor=ToyToolExecutor(),
        grader=ScriptedEvalGrader([0.0] * 10, samples_per_round=3),
        reporter=fork,
        output_dir=str(tmp_path / "fork"),
        start_from_adapter=checkpoint,
    )
    parents = [(r.item_index, r.messages, r.final_answer) for r in parent.eval_records(3)]
    forks = [(r.item_index, r.messages, r.final_answer) for r in fork.eval_records(0)]
    base = [(r.item_index, r.messages, r.final_answer) for r in parent.eval_records(0)]
    assert forks == parents
    assert base != parents, "training changed nothing: this test would not tell a fork from a fresh run"
    assert fork.steps[0][0] == 0 and fork.steps[-1][0] == 1  # a fresh step counter
    assert any("starting from the adapter" in message for _, message in fork.logs)
