"""Advantages and the GRPO policy loss.

Shapes: B = rollouts in the micro-batch, T = completion positions (left-padded, aligned right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class LossNormaliser:
    """Batch-wide counts, so that summing micro-batch losses gives the loss of the whole batch."""

    sequences: int  # rollouts in the whole batch
    tokens: int  # trained (mask = 1) tokens in the whole batch
    max_completion_tokens: int  # Dr. GRPO's constant length (the rollout token limit)


def policy_loss(
    *,
    logprobs: torch.Tensor,  # (B, T) log pi_theta(token), with grad
    old_logprobs: torch.Tensor,  # (B, T) log pi_old(token): the policy that sampled
    ref_logprobs: torch.Tensor | None,  # (B, T) log pi_ref(token): adapter disabled; None when beta = 0
    advantages: torch.Tensor,  # (B,)
    completion_mask: torch.Tensor,  # (B, T) 1 = model-generated token, 0 = prompt, tool result, padding
    loss_type: str,  # "grpo" | "dr_grpo" | "dapo"
    clip_low: float,
    clip_high: float,
    kl_beta: float,
    normaliser: LossNormaliser,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped-ratio policy-gradient loss plus beta * k3 KL; returns (loss, per-token KL (B, T))."""
    mask = completion_mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    advantage = advantages[:, None]  # (B, 1)
    per_token = -torch.min(ratio * advantage, clipped_ratio * advantage)  # (B, T)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None and kl_beta > 0:
        log_ratio_ref = ref_logprobs - logprobs
        kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0  # k3: unbiased, always >= 0
        per_token = per_token + kl_beta * kl
    masked = per_token * mask
    if loss_type == "grpo":  # mean over each rollout's tokens, then mean over rollouts
        per_sequence = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        loss = per_sequence.sum() / normaliser.sequences
    elif loss_type == "dapo":  # mean over every trained token of the batch
        loss = masked.sum() / max(normaliser.tokens, 1)
    elif loss_type == "dr_grpo":  # sum over tokens / (rollouts x constant length): no length bias
        loss = masked.sum() / (normaliser.sequences * normaliser.max_completion_tokens)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return loss, kl


def group_advantages(
    *,
    rewards: Sequence[float | None],
    group_ids: Sequence[int],
    scaling: str,
    epsilon: float = 1e-4,
    batch_std: float | None = None,
) -> list[float | None]:
    """reward - group mean, divided by the group's std ("group"), the batch's std ("batch") or 1.

    Rollouts without a reward (grader failed) get None and do not count in any mean or std.
    `batch_std`: the std of the whole batch when `rewards` is one rank's share of it.
    """
    valid = [(r, g) for r, g in zip(rewards, group_ids, strict=True) if r is not None]
    by_group: dict[int, list[float]] = {}
    for reward, group in valid:
        by_group.setdefault(group, []).append(reward)
    means = {g: sum(v) / len(v) for g, v in by_group.items()}
    stds = {g: _std(v) for g, v in by_group.items()}
    if batch_std is None:
        batch_std = _std([r for r, _ in valid]) if valid else 0.0
    advantages: list[float | None] = []
    for reward, group in zip(rewards, group_ids, strict=True):
        if reward is None:
            advantages.append(None)
            continue
        centred = reward - means[group]
        if scaling == "group":
            centred /= stds[group] + epsilon
        elif scaling == "batch":
            centred /= batch_std + epsilon
        advantages.append(centred)
    return advantages


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1), as torch.std; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
