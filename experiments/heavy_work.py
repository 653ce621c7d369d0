"""Big uploads yield the CPU to people's clicks.

Importing an upload parses its multipart body, hashes and copies it, parses every JSON line and
streams the rows to PostgreSQL: ~0.4 s of a web process's CPU per 50 MB, holding the GIL most of
that time. Twenty at once (bench/bench_load.py) took the whole machine for ~13 s, and every page in
those processes waited seconds behind them. So, in each web process:

- at most RFT_UPLOAD_CONCURRENCY uploads are imported at once; the others wait their turn without
  using the CPU (their bodies are already on disk);
- at most RFT_UPLOAD_QUEUE more wait for a slot (holding a server thread each, but no database
  connection); past that an upload is refused at once with 503 and Retry-After, before its body is
  read, so that waiting uploads never take all of a process's RFT_WEB_THREADS from the pages;
- the thread that imports runs at a lower OS priority (nice +RFT_UPLOAD_NICE) and gets its priority
  back afterwards. Raising a priority again needs CAP_SYS_NICE or RLIMIT_NICE: where the process
  cannot, the priority is left alone (a pool thread must not stay slow for the next request).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from django.conf import settings
from django.db import connection

_slots_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_can_restore: bool | None = None
_waiting = 0


class UploadsBusy(Exception):
    """Every upload slot of this process is taken and the queue is full: try again later."""

    retry_after_seconds = 30

    def __init__(self) -> None:
        super().__init__(
            "The server is importing other uploads right now; nothing was stored. "
            f"Try again in {self.retry_after_seconds} s."
        )


def _semaphore() -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(max(1, settings.RFT_UPLOAD_CONCURRENCY))
        return _slots


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _set_thread_nice(value: int) -> None:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)


def priority_can_be_restored() -> bool:
    """Whether a thread of this process may raise its priority back (tried once, on a thread of its own)."""
    global _can_restore
    if _can_restore is None:
        result = []

        def probe() -> None:
            try:
                before = _thread_nice()
                _set_thread_nice(min(19, before + 1))
                _set_thread_nice(before)
                result.append(_thread_nice() == before)
            except (OSError, AttributeError):
                result.append(False)

        thread = threading.Thread(target=probe, name="rftweb-nice-probe")
        thread.start()
        thread.join()
        _can_restore = bool(result and result[0])
    return _can_restore


@contextlib.contextmanager
def heavy_upload() -> Iterator[None]:
    """Hold one of the process's upload slots, at a lower priority while inside; raises UploadsBusy
    when the slots are taken and RFT_UPLOAD_QUEUE uploads already wait."""
    global _waiting
    slots = _semaphore()
    if not slots.acquire(blocking=False):
        with _slots_lock:
            if _waiting >= settings.RFT_UPLOAD_QUEUE:
                raise UploadsBusy()
            _waiting += 1
        try:
            if not connection.in_atomic_block:
                connection.close()  # back to the pool while waiting (authentication took one)
            slots.acquire()
        finally:
            with _slots_lock:
                _waiting -= 1
    try:
        lowered_from = None
        if settings.RFT_UPLOAD_NICE > 0 and priority_can_be_restored():
            lowered_from = _thread_nice()
            _set_thread_nice(min(19, lowered_from + settings.RFT_UPLOAD_NICE))
        try:
            yield
        finally:
            if lowered_from is not None:
                _set_thread_nice(lowered_from)
    finally:
        slots.release()
