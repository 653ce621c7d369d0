"""A web process's upload helper: a spawned process of its own, at a lower OS priority, with its own
database connection and its own GIL, that serves the process's uploads.

- `serve`: the whole of an upload request (Django's middleware, authentication, the view, parsing the
  multipart body, hashing, importing), its body read from the file the upload lane spooled it to
  (rftweb/upload_lane.py);
- `run`: the import of a file already stored, for an upload that reached Django in the web process
  itself (a chunked body; experiments/services/datasets.py).

`pool()` is the web process's helper pool (RFT_IMPORT_PROCESSES processes, started with the server
by `warm`, or at the first upload). A module without Django imports at its top: the helper unpickles
these functions before Django is set up.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

PARENT_CHECK_SECONDS = 1.0

IN_HELPER = False  # True in a helper process: what it is asked to import, it imports itself

_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
# Page and API requests this web process has started, in memory its helpers read
# (experiments/pacing.py); made with the pool.
_pages = None


def page_started() -> None:
    """Count a page or API request (the event loop's thread is the only writer)."""
    if _pages is not None:
        _pages.value += 1


def pool() -> ProcessPoolExecutor:
    """This web process's helper pool, started on first use."""
    global _pool, _pages
    with _pool_lock:
        if _pool is None:
            from django.conf import settings
            from django.db import connection

            if _pages is None:
                _pages = multiprocessing.get_context("spawn").RawValue("Q", 0)

            _pool = ProcessPoolExecutor(
                max_workers=max(1, settings.RFT_IMPORT_PROCESSES),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start,
                initargs=(
                    connection.settings_dict["NAME"],
                    settings.RFT_UPLOAD_NICE,
                    settings.RFT_IMPORT_PRESSURE_LIMIT,
                    settings.RFT_IMPORT_MIN_DUTY,
                    _pages,
                ),
            )
        return _pool


def warm() -> None:
    """Start the helpers now (the server is starting), not at the first upload: a helper's start (a
    new interpreter setting Django up) is a second of CPU, and a burst of uploads should not wait for
    it or pay it on a busy machine."""
    from django.conf import settings

    helpers = pool()
    for _ in range(max(1, settings.RFT_IMPORT_PROCESSES)):
        helpers.submit(os.getpid)


def discard(broken: ProcessPoolExecutor) -> None:
    """Forget a pool whose process died (killed, out of memory): the next upload starts a new one."""
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    global _pool
    with _pool_lock:
        current, _pool = _pool, None
    if current is not None:
        current.shutdown()


def start(
    database_name: str, nice: int, pressure_limit: float = 0.0, min_duty: float = 1.0, pages=None
) -> None:
    """The helper's initializer: a lower OS priority than the web process's, pacing while the web
    process's threads wait for a CPU (experiments/pacing.py), Django, the web process's database
    (under tests, the test database it was switched to), and a watch on the web process: a helper
    whose web process is gone (killed, or exited without shutting its pool down) ends instead of
    waiting for work forever."""
    global IN_HELPER
    IN_HELPER = True
    parent = os.getppid()
    _exit_with_parent(parent)
    if nice > 0:
        os.nice(min(19, nice))
    from . import pacing

    pacing.configure(watch_pid=parent, limit=pressure_limit, min_duty=min_duty, pages=pages)
    import django
    from django.conf import settings

    django.setup()
    settings.DATABASES["default"]["NAME"] = database_name


def run(stored: str, owner_id: int, arguments: dict) -> tuple[int, int | None]:
    """Import one stored upload; answer the ids of its dataset and of its carved eval split."""
    from pathlib import Path

    from django.db import connection

    from .services.datasets import _import_items

    fields = {**arguments.pop("fields"), "owner_id": owner_id}
    try:
        result = _import_items(Path(stored), fields=fields, **arguments)
    finally:
        connection.close()
    return result.dataset.pk, result.eval_dataset.pk if result.eval_dataset else None


_django = None


def serve(environ: dict, body_path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """One whole upload request, run by Django's WSGI handler in this helper."""
    from django.core.wsgi import get_wsgi_application

    global _django
    if _django is None:
        _django = get_wsgi_application()
    return call_wsgi(_django, environ, body_path)


def call_wsgi(app, environ: dict, body_path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Call a WSGI app with a request whose body is in a file; answer its status, headers and body
    (an upload's answer is small: JSON, a page or a redirect)."""
    chunks: list[bytes] = []
    started: list = []

    def start_response(status: str, headers: list, exc_info=None):
        started[:] = [status, headers]  # nothing is sent before the app returns: it may start again
        return chunks.append

    with open(body_path, "rb") as body:
        result = app({**environ, "wsgi.input": body, "wsgi.errors": sys.stderr}, start_response)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    status, headers = started
    return (
        int(status.split(" ", 1)[0]),
        [(str(name), str(value)) for name, value in headers],
        b"".join(chunks),
    )


def _exit_with_parent(parent: int) -> None:
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)  # the web process is gone: nobody waits for this helper's answers

    threading.Thread(target=watch, name="rftweb-import-parent-watch", daemon=True).start()
