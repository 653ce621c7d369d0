"""One run over two ranks (gloo on the CPU, started by torch's elastic launcher) trains like one rank.

Each rollout samples from a stream seeded by its (group, sample) place in the step, so both runs see
the same rollouts; what is compared
is everything after sampling: the split of prompt groups, grading, advantages (batch scaling over
ranks), the loss normalised by the whole batch, the gradient sum (flat all-reduce, or FSDP2's
reduce-scatter), AdamW, the metrics gathered on rank 0, checkpoints and resume.

Tolerance (see trainer/README.md, "Several devices"): metrics within 1e-5 relative / 1e-6
absolute; adapter weights within 1% of the learning rate (5e-5 here), the most one AdamW step
can move a weight being about the learning rate. Measured: 7.7e-6.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from distributed_entry import run_toy
from safetensors.torch import load_file

from trainer import ConfigError, TrainerConfig
from trainer.distributed import RankFailed, launch, resolve_devices

# Timings, throughput and the multi-rank-only keys legitimately differ between the two runs.
# engine/ describes how each rank batched its rollouts: a prompt that groups on both ranks share is
# prefilled once per rank, so prefill per generated token and occupancy depend on the split.
NOT_COMPARED = ("timing/", "step_time", "tokens_per_s", "tools/latency_ms_p50", "world_size", "engine/")


LEARNING_RATE = 5e-3


def _config(model_dir, **overrides):
    values = dict(
        model=str(model_dir),
        prompts_per_step=2,
        group_size=4,
        max_turns=2,
        max_new_tokens_per_turn=8,
        max_tokens_per_rollout=48,
        learning_rate=LEARNING_RATE,
        kl_beta=0.1,
        reward_scaling="batch",
        eval_interval=100,
        checkpoint_interval=1,
        keep_checkpoints=0,
        micro_batch_size=3,
        steps=2,
        seed=11,
    )
    values.update(overrides)
    return values


def _launch(tmp: Path, name: str, config: dict, **arguments) -> dict:
    results = launch(
        run_toy,
        [{"config": config, "output_dir": str(tmp / name), **arguments}],
        nprocs=int(config["devices"]),
        log_dir=tmp / f"{name}-logs",
    )
    return results[0]


def _assert_metrics_equal(expected: dict, actual: dict) -> None:
    compared = {k for k in expected if not k.startswith(NOT_COMPARED)}
    assert compared - set(actual) == set(), f"missing on 2 ranks: {compared - set(actual)}"
    for key in sorted(compared):
        assert math.isclose(expected[key], actual[key], rel_tol=1e-5, abs_tol=1e-6), (
            key,
            expected[key],
            actual[key],
        )


def _assert_adapters_equal(expected_dir: Path, actual_dir: Path) -> float:
    expected = load_file(str(expected_dir / "adapter_model.safetensors"))
    actual = load_file(str(actual_dir / "adapter_model.safetensors"))
    assert set(expected) == set(actual)
    worst = max(float((expected[k] - actual[k]).abs().max()) for k in expected)
    assert worst <= 0.01 * LEARNING_RATE, worst
    return worst


@pytest.fixture(scope="module")
def one_rank(tiny_model_dir, tmp_path_factory):
    """The reference: the same run in this process, on one rank."""
    tmp = tmp_path_factory.mktemp("one-rank")
    torch.set_num_threads(1)
    return tmp, run_toy({"config": _config(tiny_model_dir), "output_dir": str(tmp / "run")})


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-ranks")
    return tmp, _launch(tmp, "run", _config(tiny_model_dir, devices=2))


@pytest.mark.slow
def test_two_ranks_equal_one_rank_metrics_and_adapter(one_rank, two_ranks):
    (one_dir, one), (two_dir, two) = one_rank, two_ranks
    assert [s for s, _, _ in two["steps"]] == [1, 2]
    for (_, expected, expected_records), (_, actual, actual_records) in zip(
        one["steps"], two["steps"], strict=True
    ):
        _assert_metrics_equal(expected, actual)
        # Every rank's rollouts reached rank 0, in the single process's order.
        assert [(r.group_index, r.sample_index, r.final_answer) for r in expected_records] == [
            (r.group_index, r.sample_index, r.final_answer) for r in actual_records
        ]
    metrics = two["steps"][0][1]
    assert metrics["world_size"] == 2.0
    for rank in (0, 1):
        for key in ("rollout_s", "update_s"):
            assert metrics[f"timing/rank{rank}/{key}"] >= 0.0
        assert metrics[f"timing/communication_s/rank{rank}"] >= 0.0
    assert metrics["timing/communication_s"] > 0.0
    for step in ("checkpoint-000001", "checkpoint-000002"):
        _assert_adapters_equal(one_dir / "run" / "checkpoints" / step, two_dir / "run" / "checkpoints" / step)
    _assert_adapters_equal(one_dir / "run" / "adapter", two_dir / "run" / "adapter")
    # Rank 0 reported; the checkpoint holds each rank's optimizer and RNG state, the adapter once.
    assert [s for s, _ in two["checkpoints"]] == [1, 2]
    files = {p.name for p in (two_dir / "run" / "checkpoints" / "checkpoint-000001").iterdir()}
    assert {"optimizer-rank0.pt", "optimizer-rank1.pt", "rng_state-rank0.pt", "rng_state-rank1.pt"} <= files
    assert "adapter_model.safetensors" in files and "optimizer.pt" not in files


@pytest.mark.slow
def test_two_ranks_resume_exactly_and_another_count_is_refused(tiny_model_dir, two_ranks, tmp_path):
    two_dir, two = two_ranks
    checkpoint = two_dir / "run" / "checkpoints" / "checkpoint-000001"
    resumed = _launch(tmp_path, "resumed", _config(tiny_model_dir, devices=2), resume_from=str(checkpoint))
    assert [s for s, _, _ in resumed["steps"]] == [2]
    _assert_metrics_equal(two["steps"][1][1], resumed["steps"][0][1])
    assert resumed["steps"][0][1]["num_tokens"] == two["steps"][1][1]["num_tokens"]
    with pytest.raises(ConfigError, match=r"written by a run on 2 device\(s\); resume it with devices: 2"):
        run_toy(
            {
                "config": _config(tiny_model_dir),
                "output_dir": str(tmp_path / "one"),
                "resume_from": str(checkpoint),
            }
        )


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks_equals_one_rank(one_rank, tiny_model_dir, tmp_path):
    one_dir, one = one_rank
    fsdp = _launch(tmp_path, "fsdp", _config(tiny_model_dir, devices=2, sharding="fsdp"))
    for (_, expected, _), (_, actual, _) in zip(one["steps"], fsdp["steps"], strict=True):
        _assert_metrics_equal(expected, actual)
    _assert_adapters_equal(one_dir / "run" / "adapter", tmp_path / "fsdp" / "adapter")
    # The gathered adapter loads like any PEFT adapter, and an FSDP checkpoint resumes.
    resumed = _launch(
        tmp_path,
        "fsdp-resumed",
        _config(tiny_model_dir, devices=2, sharding="fsdp"),
        resume_from=str(tmp_path / "fsdp" / "checkpoints" / "checkpoint-000001"),
    )
    _assert_metrics_equal(fsdp["steps"][1][1], resumed["steps"][0][1])


@pytest.mark.slow
def test_a_killed_rank_ends_the_launch_naming_it_and_leaves_no_process(tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, devices=2, steps=5, kl_beta=0.0)
    with pytest.raises(RankFailed) as failure:
        _launch(tmp_path, "killed", config, kill_rank=1, kill_after_gradings=4)
    assert failure.value.rank == 1
    assert "killed by SIGKILL" in str(failure.value)
    pids = [int(p.read_text()) for p in (tmp_path / "killed").glob("pid-rank*")]
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"rank process {pid} is still there"


def test_devices_are_validated_before_anything_starts(tiny_model_dir, tmp_path):
    def config(**values):
        return TrainerConfig.from_dict({"model": str(tiny_model_dir), **values})

    assert resolve_devices(config(devices="auto", device="cpu")) == 1
    assert config(devices="2").devices == 2
    with pytest.raises(ConfigError, match="devices: a number >= 1 or 'auto'"):
        config(devices=0)
    with pytest.raises(ConfigError, match="devices: must be a number or 'auto'"):
        config(devices="many")
    with pytest.raises(ConfigError, match="sharding: must be one of none, fsdp"):
        config(sharding="zero3")
    with pytest.raises(ConfigError, match="a prompt group is never split"):
        resolve_devices(config(devices=3, prompts_per_step=2))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="devices: 2 requested but this worker sees 0 GPU"):
            resolve_devices(config(devices=2, device="cuda"))
    with pytest.raises(ConfigError, match="sharding: fsdp shards the base over several devices"):
        resolve_devices(config(sharding="fsdp"))
    # train() itself refuses to run 2 devices' worth of work in one process.
    assert "WORLD_SIZE" not in os.environ
    with pytest.raises(ConfigError, match="devices: 2 needs as many ranks"):
        run_toy({"config": _config(tiny_model_dir, devices=2), "output_dir": str(tmp_path)})
