"""The policy update: log-probabilities of the rollouts' tokens, the loss, micro-batched backward, step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import TrainerConfig
from trainer.generation import left_pad
from trainer.loss import LossNormaliser, policy_loss
from trainer.rollout import Rollout


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (B, L) prompt + completion, left-padded
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    completion_mask: torch.Tensor  # (B, C) the last C positions; 1 = model-generated token
    advantages: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor | None = None  # (B, C), set when iterations_per_batch > 1
    ref_logprobs: torch.Tensor | None = None  # (B, C), set when kl_beta > 0

    @property
    def completion_length(self) -> int:
        return self.completion_mask.shape[1]


def build_micro_batches(
    rollouts: Sequence[Rollout], *, micro_batch_size: int, pad_id: int, device: Any
) -> list[MicroBatch]:
    batches = []
    for start in range(0, len(rollouts), micro_batch_size):
        chunk = rollouts[start : start + micro_batch_size]
        input_ids, attention_mask, position_ids = left_pad(
            [r.prompt_ids + r.completion_ids for r in chunk], pad_id=pad_id, device=device
        )
        completion_length = max(len(r.completion_ids) for r in chunk)
        completion_mask = torch.zeros((len(chunk), completion_length), dtype=torch.float32)
        for row, rollout in enumerate(chunk):
            if rollout.completion_mask:
                completion_mask[row, completion_length - len(rollout.completion_mask) :] = torch.tensor(
                    rollout.completion_mask, dtype=torch.float32
                )
        advantages = torch.tensor([float(r.advantage or 0.0) for r in chunk], dtype=torch.float32)
        batches.append(
            MicroBatch(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                completion_mask=completion_mask.to(device),
                advantages=advantages.to(device),
            )
        )
    return batches


def token_logprobs(
    model: Any, batch: MicroBatch, *, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, C) log-probabilities of the completion tokens (and their entropies) under `model`."""
    completion_length = batch.completion_length
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=completion_length + 1,
    )
    logits = output.logits[:, :-1, :].float()  # (B, C, V): position t predicts token t + 1
    if temperature > 0:
        logits = logits / temperature
    targets = batch.input_ids[:, -completion_length:]  # (B, C)
    log_normaliser = torch.logsumexp(logits, dim=-1)  # (B, C)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_normaliser
    entropy = None
    if with_entropy:
        with torch.no_grad():
            log_probs_all = logits - log_normaliser[..., None]
            entropy = -(log_probs_all.exp() * log_probs_all).sum(dim=-1)
    return logprobs, entropy


def update_policy(
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rollouts: Sequence[Rollout],
    config: TrainerConfig,
    pad_id: int,
) -> dict[str, float]:
    """Runs `iterations_per_batch` optimizer steps on the rollouts that have an advantage."""
    trainable = [r for r in rollouts if r.advantage is not None and r.generated_tokens > 0]
    metrics = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0, "clip_ratio": 0.0}
    if not trainable:
        metrics["learning_rate"] = scheduler.get_last_lr()[0]
        return metrics
    device = next(model.parameters()).device
    temperature = config.temperature if config.temperature > 0 else 1.0
    batches = build_micro_batches(
        trainable, micro_batch_size=config.micro_batch_size, pad_id=pad_id, device=device
    )
    normaliser = LossNormaliser(
        sequences=len(trainable),
        tokens=sum(r.generated_tokens for r in trainable),
        max_completion_tokens=config.max_tokens_per_rollout,
    )
    with torch.no_grad():
        for batch in batches:
            if config.kl_beta > 0:
                with model.disable_adapter():
                    batch.ref_logprobs, _ = token_logprobs(model, batch, temperature=temperature)
            if config.iterations_per_batch > 1:
                batch.old_logprobs, _ = token_logprobs(model, batch, temperature=temperature)

    trainable_parameters = [p for p in model.parameters() if p.requires_grad]
    token_total = float(normaliser.tokens)
    losses, grad_norms = [], []
    kl_sum = entropy_sum = clipped_sum = 0.0
    for iteration in range(config.iterations_per_batch):
        optimizer.zero_grad(set_to_none=True)
        iteration_loss = 0.0
        for batch in batches:
            logprobs, entropy = token_logprobs(
                model, batch, temperature=temperature, with_entropy=iteration == 0
            )
            old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
            loss, kl = policy_loss(
                logprobs=logprobs,
                old_logprobs=old,
                ref_logprobs=batch.ref_logprobs,
                advantages=batch.advantages,
                completion_mask=batch.completion_mask,
                loss_type=config.loss_type,
                clip_low=config.clip_epsilon_low,
                clip_high=config.clip_epsilon_high,
                kl_beta=config.kl_beta,
                normaliser=normaliser,
            )
            loss.backward()
            iteration_loss += loss.item()
            with torch.no_grad():
                mask = batch.completion_mask
                if iteration == 0:
                    kl_sum += float((kl * mask).sum())
                    entropy_sum += float((entropy * mask).sum()) if entropy is not None else 0.0
                ratio = torch.exp(logprobs.detach() - old)
                outside = (ratio < 1 - config.clip_epsilon_low) | (ratio > 1 + config.clip_epsilon_high)
                clipped_sum += float((outside.float() * mask).sum())
        if config.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters, config.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in trainable_parameters if p.grad is not None])
            )
        optimizer.step()
        scheduler.step()
        losses.append(iteration_loss)
        grad_norms.append(float(grad_norm))
    optimizer.zero_grad(set_to_none=True)
    metrics.update(
        loss=sum(losses) / len(losses),
        kl=kl_sum / token_total,
        entropy=entropy_sum / token_total,
        grad_norm=sum(grad_norms) / len(grad_norms),
        clip_ratio=clipped_sum / (token_total * config.iterations_per_batch),
        learning_rate=scheduler.get_last_lr()[0],
    )
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"{key} is {value}: the update diverged")
    return metrics


def build_optimizer(*, model: Any, config: TrainerConfig, total_optimizer_steps: int) -> tuple[Any, Any]:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
    )
    warmup = config.warmup_steps
    decay_steps = max(1, total_optimizer_steps - warmup)

    def multiplier(optimizer_step: int) -> float:
        if optimizer_step < warmup:
            return (optimizer_step + 1) / (warmup + 1)
        progress = min(1.0, (optimizer_step - warmup) / decay_steps)
        if config.lr_schedule == "linear":
            return 1.0 - progress
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, scheduler
