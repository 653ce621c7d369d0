"""The `rftweb` console command (installed with the package).

    rftweb up [--host H] [--port P] [--no-demo]   everything on one machine until Ctrl-C
    rftweb web [--host H] [--port P]              the ASGI server only
    rftweb worker [--queue train|default] [...]   one Celery worker (extra arguments go to Celery)
    rftweb <django command> [...]                 e.g. migrate, createsuperuser, check, shell

Settings default to `rftweb.settings.local` (SQLite and an embedded Redis in the data directory,
secrets generated on first start); DJANGO_SETTINGS_MODULE and the environment override them.
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__

# Per queue: concurrency, and whether it also runs the beat scheduler (as `rftweb up` does).
WORKER_QUEUES = {"train": (1, False), "default": (2, True)}


def _django_command(arguments: list[str]) -> None:
    from django.core.management import execute_from_command_line

    execute_from_command_line(["rftweb", *arguments])


def _worker(arguments: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="rftweb worker", description="Run one Celery worker.")
    parser.add_argument("--queue", choices=sorted(WORKER_QUEUES), default="default")
    options, extra = parser.parse_known_args(arguments)
    import django

    django.setup()
    from django.conf import settings

    from rftweb.celery import app

    concurrency, with_beat = WORKER_QUEUES[options.queue]
    command = [
        "worker",
        "-Q",
        options.queue,
        "-c",
        str(concurrency),
        "-n",
        f"{options.queue}-{os.getpid()}@%h",
    ]
    if with_beat:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        command += ["--beat", "--schedule", str(settings.DATA_DIR / "celerybeat-schedule")]
    app.worker_main([*command, "--loglevel", "INFO", *extra])


def _web(arguments: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="rftweb web", description="Run the ASGI server (daphne).")
    parser.add_argument("--host", default=os.environ.get("RFTWEB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("RFTWEB_PORT", "8000")))
    options = parser.parse_args(arguments)
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(["-b", options.host, "-p", str(options.port), "rftweb.asgi:application"])


def main(argv: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rftweb.settings.local")
    if not arguments or arguments[0] in ("-h", "--help"):
        print(USAGE.strip())  # `rftweb help` lists Django's commands
        return
    command, rest = arguments[0], arguments[1:]
    if command == "worker":
        _worker(rest)
    elif command == "web":
        _web(rest)
    else:  # `up` is a management command too
        _django_command([command, *rest])


if __name__ == "__main__":
    main()
