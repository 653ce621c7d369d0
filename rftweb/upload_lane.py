"""Uploads in a lane of their own, so that big imports do not slow the pages down.

Importing an upload parses its multipart body, hashes and copies it, parses every JSON line and
streams the rows to PostgreSQL: ~0.4 s of a web process's CPU per 50 MB, holding the GIL most of that
time. Twenty at once (bench/bench_load.py) took the whole machine for ~13 s, and every page of those
processes waited seconds behind them. In each web process, requests with a body to an upload URL
(RFT_UPLOAD_URL_NAMES) are routed here by RequestBodyGuard instead of to the pages' thread pool:

- RFT_UPLOAD_CONCURRENCY threads of their own run Django for them (a2wsgi, the body still streamed),
  at an OS priority RFT_UPLOAD_NICE lower than the pages' threads; the file, once on disk, is parsed
  and stored by the process's import helper (a process of its own, also niced: the OS priority of a
  thread does little while it holds the GIL that the pages' threads wait for), see
  experiments/services/datasets.py;
- up to RFT_UPLOAD_QUEUE more wait for a thread, holding no thread and no database connection (the
  server has not read their bodies yet: uvicorn stops reading the socket);
- past that, an upload is answered 503 with Retry-After at once, before its body is read.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from a2wsgi import WSGIMiddleware

RETRY_AFTER_SECONDS = 30
BUSY_MESSAGE = (
    "The server is importing other uploads right now; nothing was stored. "
    f"Try again in {RETRY_AFTER_SECONDS} s."
)


def _lower_thread_priority(nice: int) -> None:
    """A lane thread's initializer: lower its own OS priority (always allowed) for good."""
    if nice <= 0:
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError:  # not Linux-like: the lane still bounds how many imports run at once
        pass


class UploadLane:
    def __init__(self, wsgi_app, *, workers: int, queue: int, nice: int, refuse) -> None:
        workers = max(1, workers)
        self.app = WSGIMiddleware(wsgi_app, workers=workers)
        # a2wsgi makes a plain pool; the lane's threads must lower their priority as they start.
        self.app.executor.shutdown(wait=False)
        self.app.executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="rftweb-upload",
            initializer=_lower_thread_priority,
            initargs=(nice,),
        )
        self.limit = workers + max(0, queue)
        self.refuse = refuse  # async (send, status, message, *, api, headers): the guard's answer
        self.in_lane = 0  # touched only on the event loop's thread

    async def __call__(self, scope, receive, send, *, api: bool = True):
        if self.in_lane >= self.limit:
            return await self.refuse(
                send,
                503,
                BUSY_MESSAGE,
                api=api,
                headers=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
            )
        self.in_lane += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_lane -= 1
