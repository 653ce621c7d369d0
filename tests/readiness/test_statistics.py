"""Readiness numbers on constructed rollout sets: best-of-k, zero-variance shares, verdict."""

from __future__ import annotations

import math

import pytest

from experiments.services.readiness import expected_best_of_k, readiness_statistics


def rollouts_for(rewards_by_item, *, calls=1):
    return [
        {
            "item_index": item,
            "reward": reward,
            "tool_calls": calls,
            "tool_call_names": ["lookup"] * calls,
            "grader_errors": [] if reward is not None else [{"type": "timeout"}],
        }
        for item, rewards in rewards_by_item.items()
        for reward in rewards
    ]


def test_best_of_k_is_the_unbiased_expected_maximum():
    # 4 samples, one success: pass@k = 1 - C(3, k) / C(4, k)
    for k in range(1, 5):
        assert expected_best_of_k([0, 0, 1, 0], k) == pytest.approx(1 - math.comb(3, k) / math.comb(4, k))
    # graded rewards: max of 2 out of {0.2, 0.5, 0.9}: pairs (0.2,0.5)->0.5, (0.2,0.9)->0.9, (0.5,0.9)->0.9
    assert expected_best_of_k([0.9, 0.2, 0.5], 2) == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    assert expected_best_of_k([0.9, 0.2, 0.5], 1) == pytest.approx((0.9 + 0.2 + 0.5) / 3)
    with pytest.raises(ValueError):
        expected_best_of_k([1.0], 2)


def test_curve_zero_variance_shares_and_per_item_variance():
    stats = readiness_statistics(
        rollouts_for(
            {
                0: [0, 0, 0, 0],  # always 0
                1: [1, 1, 1, 1],  # always 1
                2: [0.5, 0.5, 0.5, 0.5],  # constant, other
                3: [0, 1, 0, 0],  # varies
                4: [0, 0, 0, 0],  # always 0
            }
        )
    )
    assert stats["k"] == 4 and stats["items"] == 5
    zero = stats["zero_variance"]
    assert zero["always_0"] == pytest.approx(2 / 5)
    assert zero["always_1"] == pytest.approx(1 / 5)
    assert zero["other"] == pytest.approx(1 / 5)
    assert zero["total"] == pytest.approx(4 / 5)
    curve = [point["value"] for point in stats["best_of_k"]]
    # item 3 contributes pass@k = k/4; the others are constant (0, 1, 0.5, 0)
    expected = [(0 + 1 + 0.5 + k / 4 + 0) / 5 for k in range(1, 5)]
    assert curve == pytest.approx(expected)
    assert stats["mean_reward"] == pytest.approx((0 + 4 + 2 + 1 + 0) / 20)
    row = stats["per_item"][3]
    assert row["variance"] == pytest.approx(0.1875) and row["signal"] == "varies"
    verdict = stats["verdict"]
    assert verdict["level"] == "not_ready"  # 80% of items give no signal (limit 60%)
    texts = " ".join(reason["text"] for reason in verdict["reasons"])
    assert "40% of items always score 0" in texts and "partial credit" in texts


def test_grader_errors_are_counted_and_left_out_of_the_rewards():
    stats = readiness_statistics(rollouts_for({0: [0, 1, None, 1], 1: [1, 0, 0, 1]}))
    assert stats["grader_errors"]["rate"] == pytest.approx(1 / 8)
    assert stats["grader_errors"]["by_type"] == {"timeout": 1}
    assert stats["k"] == 3  # item 0 has 3 graded rollouts
    assert stats["per_item"][0]["graded"] == 3
    assert stats["verdict"]["level"] == "not_ready"  # 12.5% grader errors (limit 5%)


def test_a_dataset_with_signal_is_ready_and_the_tool_distribution_is_counted():
    stats = readiness_statistics(rollouts_for({0: [0, 1, 0, 1], 1: [1, 0, 0, 0], 2: [0, 0, 1, 1]}, calls=2))
    assert stats["verdict"]["level"] == "ready", stats["verdict"]
    assert stats["tool_calls"]["histogram"] == [{"calls": 2, "rollouts": 12}]
    assert stats["tool_calls"]["by_tool"] == {"lookup": 24}
    no_tools = readiness_statistics(rollouts_for({0: [0, 1, 0, 1], 1: [1, 0, 0, 0]}, calls=0))
    assert no_tools["verdict"]["level"] == "weak"
    assert any("never called a tool" in r["text"] for r in no_tools["verdict"]["reasons"])


def test_flat_best_of_k_says_sampling_more_does_not_help():
    stats = readiness_statistics(rollouts_for({i: [0.5, 0.5, 0.55, 0.5] for i in range(3)}))
    assert any("sampling more does not find better answers" in r["text"] for r in stats["verdict"]["reasons"])
