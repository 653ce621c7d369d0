"""The one place that touches the channel layer.

PostgreSQL is the record; the channel layer only notifies. Every message carries the events' `seq`
so that a client that missed a frame (or reconnects) fills the gap from the database and drops
duplicates. Publishing happens after the surrounding transaction commits, so a client never hears
of a row it cannot read yet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Sequence

import orjson
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

RUN_EVENTS_MESSAGE_TYPE = "run.events"
PUBLISH_TIMEOUT_S = 10.0


class _PublishLoop:
    """One event loop in a daemon thread per process, for publishing from sync code (the worker's
    reporter, views). `async_to_sync` would start a fresh loop for every call, and the channel
    layer keeps its Redis connections per loop: each publish paid for a new connection. A forked
    child (Celery's prefork pool) starts its own loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def _get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="rftweb-publish", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def run(self, coroutine, timeout: float = PUBLISH_TIMEOUT_S):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._get())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


_publish_loop = _PublishLoop()


def run_group_name(run_id: int) -> str:
    return f"run-{run_id}"


def run_events_message(events: Sequence[dict]) -> dict:
    """The channel-layer message for consecutive events: their first and last seq and the WebSocket
    frame itself, encoded once here rather than by each of the run's watchers."""
    return {
        "type": RUN_EVENTS_MESSAGE_TYPE,
        "first": events[0]["seq"],
        "last": events[-1]["seq"],
        "frame": orjson.dumps({"type": "events", "events": list(events)}).decode(),
    }


def publish_run_events(*, run_id: int, events: Sequence[dict]) -> None:
    """Send the run's new events (already stored, JSON-safe dicts with consecutive `seq`s) as one
    frame, on commit."""
    if not events:
        return
    message = run_events_message(events)

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            _publish_loop.run(layer.group_send(run_group_name(run_id), message))
        except Exception:  # the record is in the database; a lost notification is filled on reconnect
            logger.warning("could not publish events of run %s", run_id, exc_info=True)

    transaction.on_commit(send, robust=True)


PLAYGROUND_EVENTS_MESSAGE_TYPE = "playground.events"


def playground_group_name(session_id: int) -> str:
    return f"playground-{session_id}"


def publish_playground_events(*, session_id: int, events: Sequence[dict]) -> None:
    """Send a playground session's events now (from the worker, token by token: no transaction, and
    nothing stored per token: the session's result is stored when it ends)."""
    layer = get_channel_layer()
    if layer is None or not events:
        return
    message = {"type": PLAYGROUND_EVENTS_MESSAGE_TYPE, "events": list(events)}
    try:
        _publish_loop.run(layer.group_send(playground_group_name(session_id), message))
    except Exception:
        logger.warning("could not publish events of playground session %s", session_id, exc_info=True)
