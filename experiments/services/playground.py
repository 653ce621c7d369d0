"""The playground: a run's adapter (a checkpoint's or the final one) and its base model answer the same
prompt side by side, each a full multi-turn rollout with the run's real tools, streamed token by
token to the page over the WebSocket and graded by the run's grader.

A session is created first and starts when its page (or an API client) has joined its WebSocket
group (`start_session`), so that no token is sent before anyone listens. The worker
(`execute_session`) plays both sides at once, in two threads, publishing every event as it happens;
the session's result (each side's messages, answer and score) is stored when it ends, for a reload.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from .. import realtime
from ..models import DatasetItem, PlaygroundSession, PlaygroundStatus, Run
from .artifacts import ArtifactMissing, adapter_directory

logger = logging.getLogger(__name__)

SIDES = ("adapter", "base")
MAX_PROMPT_CHARS = 4000
STOP_POLL_S = 0.2


class PlaygroundError(Exception):
    """The session cannot be created or started; the message says why, for the user."""


def create_session(
    *, owner, run: Run, step: int | None, item_id: int | None = None, prompt: str = ""
) -> PlaygroundSession:
    """Validate the choice (an adapter that exists, an item of the run's datasets or a typed prompt)."""
    if run.owner_id != owner.pk and not owner.is_staff:
        raise PlaygroundError("Not one of your runs.")
    try:
        adapter = adapter_directory(run=run, step=step)
    except ArtifactMissing as exc:
        raise PlaygroundError(str(exc)) from exc
    if step is None:  # no final adapter yet: say which checkpoint plays instead
        checkpoint = run.checkpoints.filter(path=str(adapter)).first()
        step = checkpoint.step if checkpoint else None
    item = None
    prompt = (prompt or "").strip()
    if item_id is not None:
        item = DatasetItem.objects.filter(
            pk=item_id, dataset_id__in=[run.train_dataset_id, run.eval_dataset_id]
        ).first()
        if item is None:
            raise PlaygroundError("Choose an item of this run's train or eval dataset.")
        messages = [dict(message) for message in item.data["messages"]]
    elif prompt:
        if len(prompt) > MAX_PROMPT_CHARS:
            raise PlaygroundError(f"The prompt is longer than {MAX_PROMPT_CHARS} characters.")
        messages = _system_messages(run) + [{"role": "user", "content": prompt}]
    else:
        raise PlaygroundError("Choose a dataset item or type a prompt.")
    return PlaygroundSession.objects.create(owner=owner, run=run, step=step, item=item, messages=messages)


def _system_messages(run: Run) -> list[dict[str, Any]]:
    """A typed prompt gets the system message the run's items start with (the task's instructions)."""
    first = DatasetItem.objects.filter(dataset_id=run.train_dataset_id).order_by("index").first()
    if first is None:
        return []
    return [dict(m) for m in first.data.get("messages", [])[:1] if m.get("role") == "system"]


def start_session(*, session_id: int) -> bool:
    """created -> queued, and the worker task sent on commit; False when it had already started."""
    from ..tasks import run_playground

    with transaction.atomic():
        started = PlaygroundSession.objects.filter(pk=session_id, status=PlaygroundStatus.CREATED).update(
            status=PlaygroundStatus.QUEUED
        )
        if started:
            run_playground.delay_on_commit(session_id)
    return bool(started)


def request_stop(*, session_id: int) -> PlaygroundSession:
    session = PlaygroundSession.objects.get(pk=session_id)
    if session.status == PlaygroundStatus.CREATED:
        session.status = PlaygroundStatus.STOPPED
        session.finished_at = timezone.now()
        session.save(update_fields=["status", "finished_at", "updated_at"])
    elif not session.is_finished:
        PlaygroundSession.objects.filter(pk=session_id).update(stop_requested=True)
        session.refresh_from_db()
    return session


class _Publisher:
    """Numbers the session's events (one sequence for both sides) and publishes each at once."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def emit(self, side: str, kind: str, payload: Mapping[str, Any]) -> None:
        with self._lock:
            event = {"seq": next(self._seq), "side": side, "kind": kind, **payload}
            realtime.publish_playground_events(session_id=self.session_id, events=[event])


class _StopWatch(threading.Thread):
    """Polls the session's stop flag, so that the generating threads only read an Event per token."""

    def __init__(self, session_id: int) -> None:
        super().__init__(name=f"playground-stop-{session_id}", daemon=True)
        self.session_id = session_id
        self.stop = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while True:  # look at once, then every STOP_POLL_S: a stop sent while queued is seen first
                try:
                    if _stop_flag_set(self.session_id):
                        self.stop.set()
                        return
                except Exception:  # a database hiccup: look again
                    close_old_connections()
                if self.done.wait(STOP_POLL_S):
                    return
        finally:
            connection.close()


def execute_session(*, session_id: int) -> str | None:
    """The worker's part: play both sides, stream them, store the result. Returns the final status."""
    from trainer import TrainerConfig
    from trainer.generation import SamplingParams
    from trainer.playground import load_playground_model, play_rollout
    from trainer.rollout import RolloutLimits, StopRequested

    from .training import build_run_grader, build_tool_executor_for, resolve_base_model, torch_threads

    if not PlaygroundSession.objects.filter(pk=session_id, status=PlaygroundStatus.QUEUED).update(
        status=PlaygroundStatus.RUNNING
    ):
        return None
    session = PlaygroundSession.objects.select_related("run", "item", "run__grader").get(pk=session_id)
    run = session.run
    publisher = _Publisher(session_id)
    publisher.emit("session", "status", {"status": PlaygroundStatus.RUNNING})
    if session.stop_requested:  # stopped while it waited in the queue: load nothing, play nothing
        return _finish(session, publisher, PlaygroundStatus.STOPPED, {}, "")
    watch = _StopWatch(session_id)
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    try:
        config = TrainerConfig.from_dict({**run.config, "model": resolve_base_model(run.base_model)})
        adapter_dir = adapter_directory(run=run, step=session.step)
        tool_models = list(run.tools.all())
        tools = [tool.openai_schema() for tool in tool_models]
        item = dict(session.item.data) if session.item else {}
        item["messages"] = session.messages
        limits = RolloutLimits(
            max_turns=config.max_turns,
            max_new_tokens_per_turn=config.max_new_tokens_per_turn,
            max_tokens_per_rollout=config.max_tokens_per_rollout,
            tool_call_budget=config.tool_call_budget,
            tool_call_penalty=config.tool_call_penalty,
            deadline_s=config.rollout_deadline_s,  # as in training: a hung tool ends the rollout
        )
        sampling = SamplingParams(config.resolved_eval_temperature, config.top_p)
        # Built here (they read the database); each side gets its own, used on its own event loop.
        per_side = {side: (build_tool_executor_for(tool_models), build_run_grader(run)) for side in SIDES}
    except Exception as exc:
        logger.exception("playground session %s could not be set up", session_id)
        return _finish(session, publisher, PlaygroundStatus.FAILED, {}, f"{type(exc).__name__}: {exc}")

    # Loaded one after the other: transformers' loading is not thread-safe (it builds on the meta
    # device under a process-wide switch); the two rollouts then run at the same time.
    models: dict[str, tuple[Any, Any]] = {}
    watch.start()  # a stop sent while the models load ends the session before either side plays
    for side in SIDES:
        started = time.perf_counter()
        try:
            models[side] = load_playground_model(
                model=config.model,
                adapter_dir=adapter_dir if side == "adapter" else None,
                chat_template=config.chat_template,
                gguf_file=config.gguf_file,
            )
        except Exception as exc:
            logger.exception("playground session %s: loading the %s model failed", session_id, side)
            watch.done.set()
            return _finish(session, publisher, PlaygroundStatus.FAILED, {}, f"{type(exc).__name__}: {exc}")
        publisher.emit(side, "loaded", {"seconds": round(time.perf_counter() - started, 2)})

    def play(side: str) -> None:
        def emit(kind: str, payload: Mapping[str, Any]) -> None:
            publisher.emit(side, kind, payload)
            if kind == "done":
                results[side] = {**results.get(side, {}), **payload}
            elif kind == "graded":
                results[side] = {**results.get(side, {}), "score": payload.get("score"), "grade": payload}

        executor, grader = per_side[side]
        model, tokenizer = models[side]
        try:
            play_rollout(
                model=model,
                tokenizer=tokenizer,
                item=item,
                tools=tools,
                tool_executor=executor,
                grader=grader,
                limits=limits,
                sampling=sampling,
                seed=config.seed,
                emit=emit,
                should_stop=watch.stop.is_set,
            )
        except StopRequested:
            emit("stopped", {})
        except Exception as exc:
            logger.exception("playground session %s, %s side", session_id, side)
            errors[side] = f"{type(exc).__name__}: {exc}"[:2000]
            emit("error", {"error": errors[side]})

    if watch.stop.is_set() or _stop_flag_set(session_id):  # stopped while the models loaded
        watch.done.set()
        return _finish(session, publisher, PlaygroundStatus.STOPPED, {}, "")
    threads = [threading.Thread(target=play, args=(side,), name=f"playground-{side}") for side in SIDES]
    # One intra-op thread per side: the two sides run at once, and oversubscribed torch threads
    # make every token wait on the others (see training._torch_threads).
    with torch_threads(1):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    watch.done.set()
    if watch.stop.is_set():
        status = PlaygroundStatus.STOPPED
    elif errors:
        status = PlaygroundStatus.FAILED
    else:
        status = PlaygroundStatus.SUCCEEDED
    return _finish(session, publisher, status, results, "; ".join(f"{k}: {v}" for k, v in errors.items()))


def _stop_flag_set(session_id: int) -> bool:
    return PlaygroundSession.objects.filter(pk=session_id, stop_requested=True).exists()


def _finish(session, publisher: _Publisher, status: str, results: dict, error: str) -> str:
    session.status = status
    session.result = results
    session.error = error
    session.finished_at = timezone.now()
    session.save(update_fields=["status", "result", "error", "finished_at", "updated_at"])
    publisher.emit("session", "status", {"status": status, "error": error})
    return status
