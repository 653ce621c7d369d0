"""Uploads in a lane of their own, so that big imports do not slow the pages down.

Serving an upload means parsing its multipart body, hashing and storing the file, parsing every JSON
line and streaming the rows to PostgreSQL. Twenty 50 MB uploads at once (bench/bench_load.py) took
the whole machine, and whatever ran in a web process held the GIL that its pages' threads and event
loop need: even handing the body to Django's thread piece by piece (a2wsgi: a trip through the event
loop for every 64-256 KB) cost the web process ~5 CPU-s per GB. In each web process, requests with a
declared body to an upload URL (RFT_UPLOAD_URL_NAMES) are routed here by RequestBodyGuard (which has
already refused anonymous clients and oversize lengths from the headers) instead of to the pages'
thread pool:

- RFT_UPLOAD_CONCURRENCY of them at a time are received: the event loop writes the body, as it
  arrives, to a file in FILE_UPLOAD_TEMP_DIR (a megabyte at a time, the writes on a thread of the
  lane), so memory stays bounded and no thread waits on a slow client;
- the whole request then runs in the process's upload helper (experiments/import_helper.py: a
  process of its own at an OS priority RFT_UPLOAD_NICE lower, with its own GIL and database
  connection): Django's middleware, authentication, the view, the import, exactly as in the web
  process, its body read from that file; the web process only sends the answer back. Bodies under
  RFT_IMPORT_HELPER_MIN_BYTES (or with RFT_IMPORT_PROCESSES=0) run in a thread of the lane, also at
  the lower priority, as the hand-off would cost more;
- up to RFT_UPLOAD_QUEUE more wait for their turn, holding no thread and no database connection (the
  server has not read their bodies yet: uvicorn stops reading the socket);
- past that, an upload is answered 503 with Retry-After at once, before its body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from a2wsgi.wsgi import build_environ

from experiments import import_helper

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
BUSY_MESSAGE = (
    "The server is importing other uploads right now; nothing was stored. "
    f"Try again in {RETRY_AFTER_SECONDS} s."
)
FAILED_MESSAGE = "The upload stopped unexpectedly; nothing was stored. Upload the file again."
NO_ROOM_MESSAGE = (
    "The server has no room to receive this upload right now (its disk is full); nothing was stored."
)
SPOOL_WRITE_BYTES = 1024 * 1024  # the body is written to its file in pieces of this size


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
    """`wsgi_app` serves the uploads that are not handed to the helper (`processes` 0, or bodies under
    `helper_min_bytes`); the helper runs the project's own WSGI application."""

    def __init__(
        self,
        wsgi_app,
        *,
        workers: int,
        queue: int,
        nice: int,
        refuse,
        processes: int = 0,
        helper_min_bytes: int = 0,
        spool_dir: str | None = None,
    ) -> None:
        workers = max(1, workers)
        self.wsgi_app = wsgi_app
        self.executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="rftweb-upload",
            initializer=_lower_thread_priority,
            initargs=(nice,),
        )
        self.slots = asyncio.Semaphore(workers)
        self.limit = workers + max(0, queue)
        self.refuse = refuse  # async (send, status, message, *, api, headers): the guard's answer
        self.processes = processes
        self.helper_min_bytes = helper_min_bytes
        self.spool_dir = spool_dir
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
            async with self.slots:
                await self._serve(scope, receive, send, api=api)
        finally:
            self.in_lane -= 1

    def start(self) -> None:
        """At the server's start (rftweb/lifespan.py): the helpers start with the server."""
        if self.processes > 0:
            import_helper.warm()

    async def _serve(self, scope, receive, send, *, api: bool):
        loop = asyncio.get_running_loop()
        try:
            descriptor, body_path = tempfile.mkstemp(prefix="upload-", suffix=".body", dir=self.spool_dir)
        except OSError:
            logger.exception("no room for an upload's body in %s", self.spool_dir)
            return await self.refuse(send, 507, NO_ROOM_MESSAGE, api=api)
        try:
            try:
                with open(descriptor, "wb") as body:
                    size = await self._spool(receive, body, loop)
            except OSError:  # the disk filled up (or went away) under the body
                logger.exception("writing an upload's body to %s failed", body_path)
                return await self.refuse(send, 507, NO_ROOM_MESSAGE, api=api)
            if size is None:
                return  # the client went away: there is nobody to answer
            environ = build_environ(scope, None)
            for key in ("asgi.scope", "wsgi.input", "wsgi.errors"):
                environ.pop(key, None)  # the body is the file; the rest is plain strings for pickling
            try:
                if self.processes > 0 and size >= self.helper_min_bytes:
                    helper = import_helper.pool()
                    try:
                        answer = await asyncio.wrap_future(
                            helper.submit(import_helper.serve, environ, body_path)
                        )
                    except BrokenProcessPool:  # the helper died: the next upload starts another
                        import_helper.discard(helper)
                        raise
                else:
                    answer = await loop.run_in_executor(
                        self.executor, import_helper.call_wsgi, self.wsgi_app, environ, body_path
                    )
            except Exception:
                logger.exception("upload %s %s failed outside Django", scope["method"], scope["path"])
                return await self.refuse(send, 500, FAILED_MESSAGE, api=api)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(body_path)
        status, headers, content = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                # Django writes Set-Cookie values with a leading space (WSGI servers strip it; h11 refuses it).
                "headers": [
                    (name.lower().encode("latin-1"), value.strip().encode("latin-1"))
                    for name, value in headers
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    async def _spool(self, receive, body, loop) -> int | None:
        """Write the request's body to `body` as it arrives; its size, or None if the client left."""
        pending = bytearray()
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            pending += chunk
            more = message.get("more_body", False)
            if len(pending) >= SPOOL_WRITE_BYTES or (pending and not more):
                piece, pending = pending, bytearray()
                await loop.run_in_executor(self.executor, body.write, piece)
        return size
