"""The training loop: rollouts -> grading -> advantages -> update -> metrics, step after step.

Everything asynchronous of one run (tool calls and gradings) runs on one event loop created here
and closed at the end, so an executor's connection pool lives as long as the run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import (
    CheckpointState,
    load_adapter_weights,
    load_checkpoint,
    prune_checkpoints,
    save_adapter_atomically,
    save_checkpoint,
)
from trainer.config import ConfigError, TrainerConfig
from trainer.distributed import (
    World,
    full_weights_for_generation,
    launched_world_size,
    open_world,
    resolve_devices,
    shard_model,
)
from trainer.engine import ContinuousBatchingBackend
from trainer.generation import GenerationBackend, SamplingParams
from trainer.interfaces import Grader, GradeResult, Reporter, RolloutEnvironment, ToolExecutor
from trainer.loss import group_advantages
from trainer.metrics import eval_metrics, rollout_metrics, trajectory_record
from trainer.models import export_merged_model, load_policy, stop_token_ids
from trainer.rollout import (
    EngineLimits,
    Rollout,
    RolloutEngine,
    RolloutLimits,
    StopRequested,
    budget_penalty,
    start_rollout,
)
from trainer.update import build_optimizer, update_policy

logger = logging.getLogger(__name__)

FINAL_ADAPTER_DIR = "adapter"
MERGED_MODEL_DIR = "merged"
_EVAL_SEED_OFFSET = 7_919  # keeps eval sampling streams apart from training streams


@dataclass
class TrainResult:
    final_step: int
    stopped: bool
    final_adapter_path: str | None
    last_checkpoint_path: str | None = None
    merged_model_path: str | None = None


def validate_items(items: Sequence[Mapping[str, Any]], *, name: str) -> None:
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}[{index}]: must be an object")
        messages = item.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"{name}[{index}]: 'messages' must be a non-empty list")
        for message in messages:
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise ConfigError(f"{name}[{index}]: every message needs a 'role'")
        if "tools" in item and not isinstance(item["tools"], list):
            raise ConfigError(f"{name}[{index}]: 'tools' must be a list of function schemas")


def total_steps_for(config: TrainerConfig, *, train_size: int) -> int:
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * train_size / config.prompts_per_step))


class ItemSchedule:
    """Which train items each step uses: a fresh seeded shuffle per epoch, read in order."""

    def __init__(self, *, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.size))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def items_for_step(self, step: int, *, per_step: int) -> list[int]:
        """`step` counts from 1."""
        slots = range((step - 1) * per_step, step * per_step)
        return [self._order(slot // self.size)[slot % self.size] for slot in slots]


class _Run:
    """The state of one training run; `train()` below is the public entry point."""

    def __init__(
        self,
        *,
        config: TrainerConfig,
        train_items: Sequence[Mapping[str, Any]],
        eval_items: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        tool_executor: ToolExecutor,
        grader: Grader,
        reporter: Reporter,
        should_stop: Callable[[], bool],
        output_dir: str,
        backend_factory: Callable[[Any, Any], GenerationBackend] | None,
        model: Any,
        tokenizer: Any,
        loop: asyncio.AbstractEventLoop,
        world: World | None = None,
        environment: RolloutEnvironment | None = None,
    ) -> None:
        self.config = config
        self.world = world = world if world is not None else World()
        self.train_items = train_items
        self.eval_items = eval_items
        self.tools = tools
        self.grader = grader
        self.reporter = reporter
        self.should_stop = should_stop
        self.output_dir = Path(output_dir)
        self.model = model
        self.tokenizer = tokenizer
        self.loop = loop
        self.pad_id = tokenizer.pad_token_id
        self.device = next(model.parameters()).device
        if backend_factory is not None:
            self.backend = backend_factory(model, tokenizer)
        else:
            self.backend = ContinuousBatchingBackend(
                model=model, pad_id=self.pad_id, stop_ids=stop_token_ids(tokenizer)
            )
        self.engine = RolloutEngine(
            backend=self.backend,
            tokenizer=tokenizer,
            tool_executor=tool_executor,
            loop=loop,
            environment=environment,
            limits=RolloutLimits(
                max_turns=config.max_turns,
                max_new_tokens_per_turn=config.max_new_tokens_per_turn,
                max_tokens_per_rollout=config.max_tokens_per_rollout,
                tool_call_budget=config.tool_call_budget,
                tool_call_penalty=config.tool_call_penalty,
                deadline_s=config.rollout_deadline_s,
            ),
            engine_limits=EngineLimits(
                max_rollouts_in_flight=config.max_rollouts_in_flight,
                max_cache_tokens=config.max_kv_cache_tokens,
            ),
            # With several ranks a stop is only taken at a step boundary, where rank 0's decision is
            # broadcast: a rank that stopped mid-step alone would leave the others in a collective.
            should_stop=should_stop if not world.is_distributed else lambda: False,
        )
        self.num_tokens = 0.0  # prompt + completion tokens trained on so far (TRL's num_tokens)
        self.total_steps = total_steps_for(config, train_size=len(train_items))
        self.schedule = ItemSchedule(size=len(train_items), seed=config.seed)
        self.optimizer, self.scheduler = build_optimizer(
            model=model, config=config, total_optimizer_steps=self.total_steps * config.iterations_per_batch
        )

    # --- one step --------------------------------------------------------------------------------

    def _my_groups(self, count: int) -> range:
        """This rank's share of `count` prompt groups: a contiguous block, so that rank order is
        item order and a group never spans two ranks."""
        world = self.world
        return range(count * world.rank // world.world_size, count * (world.rank + 1) // world.world_size)

    def _generator(self, seed: int) -> torch.Generator:
        # The same on every rank: each rollout's stream is drawn from it by the rollout's (group,
        # sample) place in the step, so a rank samples exactly what one process would for its groups.
        return torch.Generator(device=self.device).manual_seed(seed)

    def train_step(self, step: int) -> tuple[dict[str, float], list[Rollout]]:
        """One step; on rank 0 returns the metrics and rollouts of every rank, elsewhere ({}, [])."""
        config = self.config
        world = self.world
        step_started = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout and anything else on the global RNG
        generator = self._generator(config.seed * 1_000_003 + step)
        rollouts = []
        step_items = self.schedule.items_for_step(step, per_step=config.prompts_per_step)
        for group_index in self._my_groups(len(step_items)):
            rollouts += self._start_group(
                items=self.train_items,
                item_index=step_items[group_index],
                group_index=group_index,
                size=config.group_size,
                split="train",
            )
        # Each rollout is graded as soon as it ends, while the others still run.
        with full_weights_for_generation(self.model, world):
            run_stats = self.engine.run(
                rollouts,
                sampling=SamplingParams(config.temperature, config.top_p),
                generator=generator,
                grade=self.grade_rollout,
            )
        rollout_s = run_stats.rollouts_s
        grading_s = run_stats.wall_s - run_stats.rollouts_s  # grading that outlasted the rollouts
        rewards = [r.reward for r in rollouts]
        batch_std = None
        if config.reward_scaling == "batch" and world.is_distributed:
            valid = [r for r in rewards if r is not None]
            count, total, squares = world.sum([len(valid), sum(valid), sum(r * r for r in valid)])
            batch_std = (
                max(0.0, (squares - total * total / count) / (count - 1)) ** 0.5 if count >= 2 else 0.0
            )
        advantages = group_advantages(
            rewards=rewards,
            group_ids=[r.group_index for r in rollouts],
            scaling=config.reward_scaling,
            batch_std=batch_std,
        )
        for rollout, advantage in zip(rollouts, advantages, strict=True):
            rollout.advantage = advantage

        update_started = time.perf_counter()
        update = update_policy(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            rollouts=rollouts,
            config=config,
            pad_id=self.pad_id,
            world=world,
        )
        update_s = time.perf_counter() - update_started
        local = {
            "rollout_s": rollout_s,
            "grading_s": grading_s,
            "update_s": update_s,
            "communication_s": world.take_communication_s(),
            "tokens_per_s": (
                run_stats.engine.generated_tokens / run_stats.engine.busy_s
                if run_stats.engine.busy_s > 0
                else 0.0
            ),
            "decode_rows": run_stats.engine.decode_rows,
            "decode_capacity": run_stats.engine.decode_steps * run_stats.engine.slots,
            "prefill_tokens": run_stats.engine.prefill_tokens,
            "generated_tokens": run_stats.engine.generated_tokens,
            "slots": run_stats.engine.slots,
        }
        gathered = world.gather_to_rank_zero((rollouts, local))
        if gathered is None:
            return {}, []
        rollouts = [rollout for rank_rollouts, _ in gathered for rollout in rank_rollouts]
        per_rank = [timings for _, timings in gathered]
        step_time = time.perf_counter() - step_started

        metrics = rollout_metrics(rollouts)
        metrics.update(update)
        self.num_tokens += sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
        metrics.update(
            {
                # The step waits for its slowest rank.
                "timing/rollout_s": max(t["rollout_s"] for t in per_rank),
                "timing/grading_s": max(t["grading_s"] for t in per_rank),
                "timing/update_s": max(t["update_s"] for t in per_rank),
                "step_time": step_time,
                # Generation throughput: tokens sampled per second inside the backends, all ranks.
                "tokens_per_s": sum(t["tokens_per_s"] for t in per_rank),
                "num_tokens": self.num_tokens,
                # Over all ranks: summed counts, so the ratios are exact.
                "engine/batch_occupancy": (
                    sum(t["decode_rows"] for t in per_rank) / sum(t["decode_capacity"] for t in per_rank)
                    if sum(t["decode_capacity"] for t in per_rank)
                    else 0.0
                ),
                "engine/prefill_per_generated_token": (
                    sum(t["prefill_tokens"] for t in per_rank) / sum(t["generated_tokens"] for t in per_rank)
                    if sum(t["generated_tokens"] for t in per_rank)
                    else 0.0
                ),
                "engine/rollouts_in_flight": float(sum(t["slots"] for t in per_rank)),
                "progress/step": float(step),
                "progress/total_steps": float(self.total_steps),
            }
        )
        if world.is_distributed:
            metrics["world_size"] = float(world.world_size)
            # Rank 0's time in collectives this step, waiting for slower ranks included.
            metrics["timing/communication_s"] = per_rank[0]["communication_s"] + world.take_communication_s()
            for rank, timings in enumerate(per_rank):
                for key in ("rollout_s", "update_s"):
                    metrics[f"timing/rank{rank}/{key}"] = timings[key]
                # Not under timing/rank: the run page's per-rank chart draws rollout and update.
                metrics[f"timing/communication_s/rank{rank}"] = timings["communication_s"]
                metrics[f"tokens_per_s/rank{rank}"] = timings["tokens_per_s"]
        return metrics, rollouts

    def _start_group(
        self, *, items: Sequence[Mapping[str, Any]], item_index: int, group_index: int, size: int, split: str
    ) -> list[Rollout]:
        """`size` rollouts of one item; the prompt is rendered once and shared."""
        group: list[Rollout] = []
        for sample_index in range(size):
            group.append(
                start_rollout(
                    tokenizer=self.tokenizer,
                    item=items[item_index],
                    item_index=item_index,
                    group_index=group_index,
                    sample_index=sample_index,
                    split=split,
                    run_tools=self.tools,
                    prompt_ids=group[0].prompt_ids if group else None,
                )
            )
        return group

    async def grade_rollout(self, rollout: Rollout) -> None:
        """Grades one finished rollout; a grader failure leaves it without reward (excluded)."""
        started = time.perf_counter()
        try:
            result = await self.grader.grade(rollout.grader_sample(), rollout.item, trace_id=rollout.trace_id)
        except Exception as error:  # a failing grader excludes the rollout, it never scores it 0
            logger.warning("grader raised for %s: %s", rollout.trace_id, error)
            result = GradeResult(
                score=None,
                errors=[{"grader": type(self.grader).__name__, "type": "exception", "message": str(error)}],
            )
        if result.score is not None and not math.isfinite(result.score):
            result = GradeResult(
                score=None,
                sub_scores=result.sub_scores,
                errors=[
                    *result.errors,
                    {"grader": "", "type": "non_finite_score", "message": str(result.score)},
                ],
            )
        if result.score is None and not result.errors:
            result.errors = [{"grader": "", "type": "no_score", "message": "the grader returned no score"}]
        if not result.latency_ms:
            result.latency_ms = (time.perf_counter() - started) * 1000
        rollout.grade = result
        rollout.penalty = budget_penalty(
            calls=rollout.calls_requested,
            budget=self.config.tool_call_budget,
            penalty_per_call=self.config.tool_call_penalty,
        )
        rollout.reward = None if result.score is None else float(result.score) - rollout.penalty
        rollout.latency_ms = (time.perf_counter() - rollout.started_at) * 1000

    # --- evaluation --------------------------------------------------------------------------------

    def evaluate(self, step: int) -> tuple[dict[str, float], list[Rollout]]:
        config = self.config
        k = config.eval_samples_per_item
        generator = self._generator(config.seed * 1_000_003 + _EVAL_SEED_OFFSET + step)
        sampling = SamplingParams(config.resolved_eval_temperature, config.top_p)
        started = time.perf_counter()
        rollouts: list[Rollout] = []
        chunk_items = max(1, (config.prompts_per_step * config.group_size) // k)
        total = len(self.eval_items)
        # Said before anything is plotted: the run page shows it while the eval runs (rank 0 speaks
        # for its own share of the items; the other ranks' reporters are silent).
        phase = "baseline eval" if step == 0 else f"eval at step {step}"
        self.reporter.log("info", f"{phase}: evaluating {total} items × {k} rollouts")
        mine = self._my_groups(len(self.eval_items))
        share = "" if len(mine) == total else " of this process's share"
        with full_weights_for_generation(self.model, self.world):
            for chunk_start in range(mine.start, mine.stop, chunk_items):
                chunk = []
                for item_index in range(chunk_start, min(mine.stop, chunk_start + chunk_items)):
                    chunk += self._start_group(
                        items=self.eval_items,
                        item_index=item_index,
                        group_index=item_index,
                        size=k,
                        split="eval",
                    )
                self.engine.run(chunk, sampling=sampling, generator=generator, grade=self.grade_rollout)
                rollouts.extend(chunk)
                done = min(mine.stop, chunk_start + chunk_items) - mine.start
                if done < len(mine):
                    self.reporter.log("info", f"{phase}: evaluating {done}/{len(mine)} items done{share}")
        gathered = self.world.gather_to_rank_zero(rollouts)
        if gathered is None:
            return {}, []
        rollouts = [rollout for rank_rollouts in gathered for rollout in rank_rollouts]
        metrics = eval_metrics(rollouts, k=k, threshold=config.eval_pass_threshold)
        metrics["eval/time_s"] = time.perf_counter() - started
        return metrics, rollouts

    # --- checkpoints ---------------------------------------------------------------------------------

    def checkpoint(self, step: int, metrics: Mapping[str, float]) -> Path:
        path = save_checkpoint(
            output_dir=self.output_dir / "checkpoints",
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=CheckpointState(
                step=step,
                total_steps=self.total_steps,
                config=self.config.to_dict(),
                metrics={k: float(v) for k, v in metrics.items()},
            ),
            keep=0,  # pruned below: the latest plus the best by eval reward
            world=self.world,
        )
        if self.world.is_rank_zero:  # the ranks share the filesystem; save_checkpoint ended on a barrier
            prune_checkpoints(
                self.output_dir / "checkpoints",
                keep_latest=self.config.keep_checkpoints,
                keep_best=self.config.keep_best_checkpoints,
            )
        self.reporter.report_checkpoint(step, str(path), dict(metrics))
        return path

    def resume(self, path: str) -> int:
        state = load_checkpoint(
            path=path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, world=self.world
        )
        self.num_tokens = float(state.metrics.get("num_tokens", 0.0))
        if state.total_steps != self.total_steps:
            self.reporter.log(
                "warning",
                f"resuming: the checkpoint planned {state.total_steps} steps, this run plans {self.total_steps}",
            )
        return state.step

    # --- the whole run -------------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Rank 0 asks `should_stop()`; every rank gets its answer (call it on every rank)."""
        return self.world.rank_zero_decides(self.world.is_rank_zero and self.should_stop())

    def run(self, *, resume_from: str | None, start_from_adapter: str | None = None) -> TrainResult:
        config = self.config
        step = 0
        if resume_from:
            step = self.resume(resume_from)
            self.reporter.log("info", f"resumed from {resume_from} at step {step}")
        elif start_from_adapter:  # a fork: the parent's adapter, a fresh optimizer and step counter
            load_adapter_weights(path=start_from_adapter, model=self.model)
            self.reporter.log("info", f"starting from the adapter in {start_from_adapter}")
        last_checkpoint: tuple[int, Path] | None = None
        stopped = False
        if step == 0 and self.eval_items and not self.stop_requested():
            try:
                baseline, rollouts = self.evaluate(0)
            except StopRequested:
                return TrainResult(final_step=0, stopped=True, final_adapter_path=None)
            if self.world.is_rank_zero:
                self.reporter.report_step(0, baseline, [trajectory_record(r, step=0) for r in rollouts])
                self.reporter.log("info", f"baseline eval: reward {baseline['eval/reward']:.3f}")
        metrics: dict[str, float] = {}
        while step < self.total_steps and not stopped:
            if self.stop_requested():
                stopped = True
                break
            try:
                metrics, rollouts = self.train_step(step + 1)
            except StopRequested:
                stopped = True
                break
            step += 1
            records = [trajectory_record(r, step=step) for r in rollouts]
            is_last = step == self.total_steps
            if self.eval_items and (step % config.eval_interval == 0 or is_last):
                try:
                    eval_values, eval_rollouts = self.evaluate(step)
                    metrics.update(eval_values)
                    records += [trajectory_record(r, step=step) for r in eval_rollouts]
                except StopRequested:
                    stopped = True
            if self.world.is_rank_zero:
                self._report(step, metrics, records)
            if stopped:
                break
            if step % config.checkpoint_interval == 0 or is_last:
                last_checkpoint = (step, self.checkpoint(step, metrics))
        if (
            step > 0
            and (last_checkpoint is None or last_checkpoint[0] != step)
            and (stopped or step == self.total_steps)
        ):
            last_checkpoint = (step, self.checkpoint(step, metrics))
        adapter_path = None
        merged_path = None
        if step > 0 or resume_from:
            adapter_path = save_adapter_atomically(
                model=self.model, target=self.output_dir / FINAL_ADAPTER_DIR, world=self.world
            )
            if config.export_merged and not stopped and self.world.is_rank_zero:
                merged_path = export_merged_model(
                    config=config,
                    adapter_dir=adapter_path,
                    output_dir=str(self.output_dir / MERGED_MODEL_DIR),
                )
        return TrainResult(
            final_step=step,
            stopped=stopped,
            final_adapter_path=str(adapter_path) if adapter_path else None,
            last_checkpoint_path=str(last_checkpoint[1]) if last_checkpoint else None,
            merged_model_path=str(merged_path) if merged_path else None,
        )

    def _report(self, step: int, metrics: Mapping[str, float], records: list[Any]) -> None:
        self.reporter.report_step(step, metrics, records)
        self.reporter.log(
            "info",
            f"step {step}/{self.total_steps}: reward {metrics['reward']:.3f}, loss {metrics['loss']:.4f}, "
            f"tool calls {metrics['tools/calls_mean']:.2f}, {metrics['step_time']:.2f} s",
        )
        if metrics.get("grader_errors/excluded"):
            self.reporter.log(
                "warning",
                f"step {step}: {int(metrics['grader_errors/excluded'])} rollouts excluded (grader errors)",
            )


def train(
    *,
    config: TrainerConfig,
    train_items: Sequence[Mapping[str, Any]],
    eval_items: Sequence[Mapping[str, Any]] = (),
    tools: Sequence[Mapping[str, Any]] = (),
    tool_executor: ToolExecutor,
    grader: Grader,
    reporter: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
    output_dir: str,
    resume_from: str | None = None,
    backend_factory: Callable[[Any, Any], GenerationBackend] | None = None,
    start_from_adapter: str | None = None,
    environment: RolloutEnvironment | None = None,
) -> TrainResult:
    """Trains a LoRA adapter with multi-turn GRPO; see the module docstring and trainer/README.

    With `devices` > 1 this runs in every rank started by `trainer.distributed.launch` (each rank
    passes the same arguments); rank 0 alone calls `reporter` and `should_stop`.
    """
    if isinstance(config, Mapping):
        config = TrainerConfig.from_dict(dict(config))
    config.validate()
    devices = resolve_devices(config)
    if devices != launched_world_size():
        raise ConfigError(
            f"devices: {devices} needs as many ranks started by trainer.distributed.launch "
            f"(this process is one of {launched_world_size()})"
        )
    world, config = open_world(config)
    try:
        return _train_in_world(
            world=world,
            config=config,
            train_items=train_items,
            eval_items=eval_items,
            tools=tools,
            tool_executor=tool_executor,
            grader=grader,
            reporter=reporter if world.is_rank_zero else _SilentReporter(),
            should_stop=should_stop,
            output_dir=output_dir,
            resume_from=resume_from,
            backend_factory=backend_factory,
            environment=environment,
            start_from_adapter=start_from_adapter,
        )
    finally:
        world.close()


class _SilentReporter:
    """The reporter of ranks other than 0: everything they produce reaches rank 0 first."""

    def report_step(self, step: int, metrics: Mapping[str, float], trajectories: Sequence[Any]) -> None:
        pass

    def report_checkpoint(self, step: int, path: str, metrics: Mapping[str, float]) -> None:
        pass

    def log(self, level: str, message: str) -> None:
        logger.log(logging.ERROR if level == "error" else logging.INFO, "%s", message)


def _train_in_world(
    *,
    world: World,
    config: TrainerConfig,
    train_items: Sequence[Mapping[str, Any]],
    eval_items: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    tool_executor: ToolExecutor,
    grader: Grader,
    reporter: Reporter,
    should_stop: Callable[[], bool],
    output_dir: str,
    resume_from: str | None,
    backend_factory: Callable[[Any, Any], GenerationBackend] | None,
    environment: RolloutEnvironment | None = None,
    start_from_adapter: str | None = None,
) -> TrainResult:
    train_items = list(train_items)
    eval_items = list(eval_items)
    if not train_items:
        raise ConfigError("train_items: at least one item is required")
    validate_items(train_items, name="train_items")
    validate_items(eval_items, name="eval_items")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(config=config)
    if config.sharding == "fsdp" and world.is_distributed:
        shard_model(model, world)
    model.train()
    loop = asyncio.new_event_loop()
    try:
        run = _Run(
            config=config,
            train_items=train_items,
            eval_items=eval_items,
            tools=list(tools),
            tool_executor=tool_executor,
            grader=grader,
            reporter=reporter,
            should_stop=should_stop,
            output_dir=output_dir,
            backend_factory=backend_factory,
            model=model,
            tokenizer=tokenizer,
            loop=loop,
            world=world,
            environment=environment,
        )
        return run.run(resume_from=resume_from, start_from_adapter=start_from_adapter)
    except Exception as error:
        reporter.log("error", f"training failed: {type(error).__name__}: {error}")
        raise
    finally:
        try:
            for closable in (tool_executor, grader, environment):
                close = getattr(closable, "aclose", None)
                if close is not None:
                    loop.run_until_complete(close())
        finally:
            loop.close()
