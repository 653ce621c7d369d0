"""The GRPO loss variants and advantages against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import LossNormaliser, group_advantages, policy_loss
from trainer.metrics import pass_at_k, percentile

# Two rollouts, three completion positions; row 0 trains 2 tokens, row 1 trains 3.
LOGPROBS = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, -1.0, -0.2]])
OLD = torch.tensor([[-1.0, -1.0, 0.0], [-1.5, -1.0, -0.2]])
MASK = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
ADVANTAGES = torch.tensor([1.0, -1.0])


def _hand_per_token(clip_low=0.2, clip_high=0.28):
    """Per-token -min(r A, clip(r) A) written out element by element."""
    rows = []
    for b in range(2):
        row = []
        for t in range(3):
            ratio = math.exp(float(LOGPROBS[b, t] - OLD[b, t]))
            clipped = min(max(ratio, 1 - clip_low), 1 + clip_high)
            a = float(ADVANTAGES[b])
            row.append(-min(ratio * a, clipped * a))
        rows.append(row)
    return rows


def _loss(loss_type, **kwargs):
    normaliser = LossNormaliser(sequences=2, tokens=5, max_completion_tokens=4)
    return policy_loss(
        logprobs=LOGPROBS,
        old_logprobs=OLD,
        ref_logprobs=kwargs.get("ref"),
        advantages=ADVANTAGES,
        completion_mask=MASK,
        loss_type=loss_type,
        clip_low=0.2,
        clip_high=0.28,
        kl_beta=kwargs.get("beta", 0.0),
        normaliser=normaliser,
    )[0].item()


def test_loss_variants_equal_hand_computed_values():
    per_token = _hand_per_token()
    # row 0: ratio e^0.5 = 1.6487 is clipped to 1.28 with A = +1 -> -1.28; position 2 ratio 1 -> -1.
    assert per_token[0][1] == pytest.approx(-1.28)
    # row 1: ratio e^-0.5 = 0.6065 with A = -1: min(-0.6065, -0.8) = -0.8 -> +0.8 (clipped from below).
    assert per_token[1][0] == pytest.approx(0.8)
    row0 = [per_token[0][1], per_token[0][2]]
    row1 = per_token[1]
    grpo = (sum(row0) / 2 + sum(row1) / 3) / 2
    dapo = (sum(row0) + sum(row1)) / 5
    dr_grpo = (sum(row0) + sum(row1)) / (2 * 4)
    assert _loss("grpo") == pytest.approx(grpo, abs=1e-6)
    assert _loss("dapo") == pytest.approx(dapo, abs=1e-6)
    assert _loss("dr_grpo") == pytest.approx(dr_grpo, abs=1e-6)
    assert len({round(v, 6) for v in (grpo, dapo, dr_grpo)}) == 3


def test_k3_kl_term_is_added_per_token_and_is_zero_against_itself():
    ref = LOGPROBS - 0.1
    per_token_kl = math.exp(-0.1) + 0.1 - 1
    with_kl = _loss("dapo", ref=ref, beta=0.5)
    assert with_kl - _loss("dapo") == pytest.approx(0.5 * per_token_kl, abs=1e-6)
    assert _loss("dapo", ref=LOGPROBS.clone(), beta=0.5) == pytest.approx(_loss("dapo"), abs=1e-7)


def test_loss_gradient_flows_only_through_trained_tokens():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss, _ = policy_loss(
        logprobs=logprobs,
        old_logprobs=logprobs.detach(),
        ref_logprobs=None,
        advantages=ADVANTAGES,
        completion_mask=MASK,
        loss_type="dapo",
        clip_low=0.2,
        clip_high=0.2,
        kl_beta=0.0,
        normaliser=LossNormaliser(sequences=2, tokens=5, max_completion_tokens=4),
    )
    loss.backward()
    assert logprobs.grad[0, 0] == 0
    assert logprobs.grad[0, 1] == pytest.approx(-1 / 5)
    assert logprobs.grad[1, 2] == pytest.approx(1 / 5)


def test_group_advantages_scalings_and_excluded_rollouts():
    rewards = [1.0, 0.0, None, 1.0, 1.0, 1.0]
    groups = [0, 0, 0, 1, 1, 1]
    none = group_advantages(rewards=rewards, group_ids=groups, scaling="none")
    assert none == [0.5, -0.5, None, 0.0, 0.0, 0.0]
    group = group_advantages(rewards=rewards, group_ids=groups, scaling="group")
    std = math.sqrt(0.5)  # sample std of [1, 0]
    assert group[0] == pytest.approx(0.5 / (std + 1e-4)) and group[2] is None and group[3] == 0.0
    batch = group_advantages(rewards=rewards, group_ids=groups, scaling="batch")
    batch_std = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]).std().item()
    assert batch[1] == pytest.approx(-0.5 / (batch_std + 1e-4))


def test_pass_at_k_and_percentile():
    assert pass_at_k(samples=4, successes=0, k=2) == 0.0
    assert pass_at_k(samples=4, successes=1, k=1) == pytest.approx(0.25)
    assert pass_at_k(samples=4, successes=1, k=2) == pytest.approx(1 - 3 / 6)
    assert pass_at_k(samples=4, successes=3, k=2) == 1.0
    assert percentile([0, 1, 2, 3, 10], 0.95) == pytest.approx(8.6)
    assert percentile([], 0.5) == 0.0
