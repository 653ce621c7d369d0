"""The one place that touches the channel layer.

PostgreSQL is the record; the channel layer only notifies. Every message carries the events' `seq`
so that a client that missed a frame (or reconnects) fills the gap from the database and drops
duplicates. Publishing happens after the surrounding transaction commits, so a client never hears
of a row it cannot read yet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

RUN_EVENTS_MESSAGE_TYPE = "run.events"


def run_group_name(run_id: int) -> str:
    return f"run-{run_id}"


def publish_run_events(*, run_id: int, events: Sequence[dict]) -> None:
    """Send the run's new events (already stored, JSON-safe dicts with `seq`) as one frame, on commit."""
    if not events:
        return
    message = {"type": RUN_EVENTS_MESSAGE_TYPE, "events": list(events)}

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(run_group_name(run_id), message)
        except Exception:  # the record is in the database; a lost notification is filled on reconnect
            logger.warning("could not publish events of run %s", run_id, exc_info=True)

    transaction.on_commit(send, robust=True)
