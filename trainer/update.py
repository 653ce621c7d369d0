"""The policy update: log-probabilities of the rollouts' tokens, the loss, micro-batched backward, step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint

from trainer.config import TrainerConfig
from trainer.distributed import World
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


# Peak bytes of one chunk's fp32 logits (rows x positions x vocabulary). A 152k vocabulary and a
# 2k-token completion would otherwise hold 1.2 GB per rollout of logits, twice more for their
# gradient and the entropy's temporaries; chunked, the update's extra memory stays near this.
LOGITS_CHUNK_BYTES = 64 * 2**20


def _output_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) when the logits are a plain projection of the decoder's last hidden
    state, so they can be computed a chunk of positions at a time; None otherwise."""
    if getattr(model, "_rftweb_fsdp", False):
        # Calling the decoder and the head directly would skip the FSDP root's gathers, and a
        # per-chunk gather would make ranks run different numbers of collectives.
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if (
        config is None
        or getattr(config, "final_logit_softcapping", None)
        or getattr(config, "logit_scale", None)
    ):
        return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, weight_holder: Any, inverse_temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of `targets` and the entropy, from hidden states (B, c, H) through the head."""
    logits = weight_holder(hidden).float() * inverse_temperature  # (B, c, V)
    log_normaliser = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_normaliser
    with torch.no_grad():
        log_probs_all = logits - log_normaliser[..., None]
        entropy = -(log_probs_all.exp() * log_probs_all).sum(dim=-1)
    return logprobs, entropy


def token_logprobs(
    model: Any,
    batch: MicroBatch,
    *,
    temperature: float,
    with_entropy: bool = False,
    chunk_bytes: int | None = LOGITS_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, C) log-probabilities of the completion tokens (and their entropies) under `model`.

    With `chunk_bytes`, the logits are computed a slice of positions at a time from the decoder's
    hidden states, each slice under activation checkpointing: only (B, C) results are kept for the
    backward pass, which recomputes one slice's logits at a time. The result equals the one-pass
    computation (`chunk_bytes=None`) up to float rounding.
    """
    completion_length = batch.completion_length
    targets = batch.input_ids[:, -completion_length:]  # (B, C)
    inverse_temperature = 1.0 / temperature if temperature > 0 else 1.0
    parts = _output_head(model) if chunk_bytes else None
    if parts is None:
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
        log_normaliser = torch.logsumexp(logits, dim=-1)  # (B, C)
        logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_normaliser
        entropy = None
        if with_entropy:
            with torch.no_grad():
                log_probs_all = logits - log_normaliser[..., None]
                entropy = -(log_probs_all.exp() * log_probs_all).sum(dim=-1)
        return logprobs, entropy

    decoder, head = parts
    hidden = decoder(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state[:, -(completion_length + 1) : -1, :]  # (B, C, H): position t predicts t + 1
    rows, vocabulary = hidden.shape[0], head.weight.shape[0]
    step = max(1, chunk_bytes // (rows * vocabulary * 4))
    logprob_parts, entropy_parts = [], []
    for start in range(0, completion_length, step):
        piece, piece_targets = hidden[:, start : start + step], targets[:, start : start + step]
        if torch.is_grad_enabled() and piece.requires_grad:
            logprobs, entropy = torch.utils.checkpoint.checkpoint(
                _chunk_logprobs, piece, piece_targets, head, inverse_temperature, use_reentrant=False
            )
        else:
            logprobs, entropy = _chunk_logprobs(piece, piece_targets, head, inverse_temperature)
        logprob_parts.append(logprobs)
        entropy_parts.append(entropy)
    logprobs = torch.cat(logprob_parts, dim=1)
    return logprobs, (torch.cat(entropy_parts, dim=1) if with_entropy else None)


def _empty_like(batch: MicroBatch) -> MicroBatch:
    """A batch that trains nothing (mask and advantages 0): FSDP ranks must run equally many passes."""
    return MicroBatch(
        input_ids=batch.input_ids[:1],
        attention_mask=batch.attention_mask[:1],
        position_ids=batch.position_ids[:1],
        completion_mask=torch.zeros_like(batch.completion_mask[:1]),
        advantages=torch.zeros_like(batch.advantages[:1]),
    )


def update_policy(
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rollouts: Sequence[Rollout],
    config: TrainerConfig,
    pad_id: int,
    world: World | None = None,
) -> dict[str, float]:
    """Runs `iterations_per_batch` optimizer steps on the rollouts that have an advantage.

    With several ranks each one passes its own rollouts; the loss is normalised by the counts of
    the whole batch (all ranks) and the gradients are summed over ranks, so the step is the one a
    single process would take on all the rollouts. The metrics are those of the whole batch.
    """
    world = world or World()
    trainable = [r for r in rollouts if r.advantage is not None and r.generated_tokens > 0]
    local_sequences, local_tokens = len(trainable), sum(r.generated_tokens for r in trainable)
    sequences, tokens = (int(v) for v in world.sum([local_sequences, local_tokens]))
    metrics: dict[str, float] = {
        "loss": 0.0,
        "entropy": 0.0,
        "grad_norm": 0.0,
        "clip_ratio/low_mean": 0.0,
        "clip_ratio/low_min": 0.0,
        "clip_ratio/high_mean": 0.0,
        "clip_ratio/high_max": 0.0,
        "clip_ratio/region_mean": 0.0,
    }
    if config.kl_beta > 0:  # as TRL: no `kl` when it is not computed
        metrics["kl"] = 0.0
    if sequences == 0:
        metrics["learning_rate"] = scheduler.get_last_lr()[0]
        return metrics
    device = next(model.parameters()).device
    temperature = config.temperature if config.temperature > 0 else 1.0
    batches = (
        build_micro_batches(trainable, micro_batch_size=config.micro_batch_size, pad_id=pad_id, device=device)
        if trainable
        else []
    )
    if config.sharding == "fsdp" and world.is_distributed:
        # Every forward of a sharded model is a collective: all ranks run the same number.
        most = int(world.max([len(batches)])[0])
        template = batches[0] if batches else _placeholder_batch(device=device, pad_id=pad_id)
        batches += [_empty_like(template) for _ in range(most - len(batches))]
    normaliser = LossNormaliser(
        sequences=sequences, tokens=tokens, max_completion_tokens=config.max_tokens_per_rollout
    )
    with torch.no_grad():
        for batch in batches:
            if config.kl_beta > 0:
                with model.disable_adapter():
                    batch.ref_logprobs, _ = token_logprobs(model, batch, temperature=temperature)
            if config.iterations_per_batch > 1:
                batch.old_logprobs, _ = token_logprobs(model, batch, temperature=temperature)

    trainable_parameters = [p for p in model.parameters() if p.requires_grad]
    losses, grad_norms = [], []
    # Token counts summed over micro-batches and ranks; TRL's min/max are over its processes'
    # batch means, ours over micro-batches (of every rank).
    kl_sum = entropy_sum = low_sum = high_sum = region_sum = 0.0
    low_min, high_max = math.inf, 0.0
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
                # As TRL: a token counts as clipped only where the clip changes its gradient.
                ratio = torch.exp(logprobs.detach() - old)
                advantage = batch.advantages[:, None]
                low = (ratio < 1 - config.clip_epsilon_low) & (advantage < 0)
                high = (ratio > 1 + config.clip_epsilon_high) & (advantage > 0)
                batch_tokens = float(mask.sum())
                low_count = float((low.float() * mask).sum())
                high_count = float((high.float() * mask).sum())
                low_sum += low_count
                high_sum += high_count
                region_sum += float(((low | high).float() * mask).sum())
                if batch_tokens > 0:
                    low_min = min(low_min, low_count / batch_tokens)
                    high_max = max(high_max, high_count / batch_tokens)
        if config.sharding != "fsdp":
            world.sum_gradients(trainable_parameters)
        elif world.is_distributed:  # FSDP reduce-scattered the mean; the batch's gradient is the sum
            for parameter in trainable_parameters:
                if parameter.grad is not None:
                    parameter.grad.mul_(world.world_size)
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
    iterations = config.iterations_per_batch
    loss_total, kl_sum, entropy_sum, low_sum, high_sum, region_sum = world.sum(
        [sum(losses), kl_sum, entropy_sum, low_sum, high_sum, region_sum]
    )
    low_min = -world.max([-low_min])[0]  # a rank without trained tokens sends -inf: no effect
    low_min = low_min if math.isfinite(low_min) else 0.0
    high_max = world.max([high_max])[0]
    token_total = float(tokens)
    metrics.update(
        {
            "loss": loss_total / iterations,
            "entropy": entropy_sum / token_total,
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "clip_ratio/low_mean": low_sum / (token_total * iterations),
            "clip_ratio/low_min": low_min,
            "clip_ratio/high_mean": high_sum / (token_total * iterations),
            "clip_ratio/high_max": high_max,
            "clip_ratio/region_mean": region_sum / (token_total * iterations),
            "learning_rate": scheduler.get_last_lr()[0],
        }
    )
    if config.kl_beta > 0:
        metrics["kl"] = kl_sum / token_total
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"{key} is {value}: the update diverged")
    return metrics


def _placeholder_batch(*, device: Any, pad_id: int) -> MicroBatch:
    """One padding token predicting another, trained nowhere: a rank with no rollouts under FSDP."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device)
    return MicroBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.arange(2, device=device)[None],
        completion_mask=torch.zeros((1, 1), device=device),
        advantages=torch.zeros(1, device=device),
    )


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
