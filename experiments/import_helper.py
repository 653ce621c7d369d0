"""The entry points of a web process's upload import helper (experiments/services/datasets.py).

A module without Django imports at its top: the helper is a spawned process, and it unpickles these
functions before Django is set up.
"""

from __future__ import annotations

import os

PARENT_CHECK_SECONDS = 1.0


def start(database_name: str, nice: int) -> None:
    """The helper's initializer: a lower OS priority than the web process's, Django, the web
    process's database (under tests, the test database it was switched to), and a watch on the web
    process: a helper whose web process is gone (killed, or exited without shutting its pool down)
    ends instead of waiting for work forever."""
    _exit_with_parent(os.getppid())
    if nice > 0:
        os.nice(min(19, nice))
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


def _exit_with_parent(parent: int) -> None:
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)  # the web process is gone: nobody waits for this helper's answers

    threading.Thread(target=watch, name="rftweb-import-parent-watch", daemon=True).start()
