"""The entry point of a rank process of a multi-device run (see training.py).

Ranks are spawned fresh interpreters: this module imports nothing of Django at import time, sets
Django up inside the function, then hands over to `training.train_rank`.
"""

from __future__ import annotations

import os
from typing import Any


def run_rank(arguments: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rftweb.settings.local")
    import django

    django.setup()
    from django.db import connection

    from .training import run_output_dir, train_rank

    # Who is who, for an operator (and the tests) looking at a run's processes.
    pid_dir = run_output_dir(arguments["run_id"]) / "ranks"
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"rank-{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
    try:
        return train_rank(**arguments)
    finally:
        connection.close()
