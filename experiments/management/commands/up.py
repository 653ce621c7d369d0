"""`manage.py up`: everything on one machine, in the foreground, until Ctrl-C.

Starts the embedded Redis (unless REDIS_URL is set), migrates, makes sure an admin account exists,
seeds the demo, then runs the ASGI server, two Celery workers (the `train` queue, one run at a time,
and the `default` queue with the beat scheduler) and the bundled demo tool/grader server. Ctrl-C (or
SIGTERM) stops every one of them, process groups included, and leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from rftweb.embedded_redis import start_embedded_redis

STOP_GRACE_S = 10.0


class Command(BaseCommand):
    help = "Run the whole app locally (server, workers, embedded Redis, demo servers) until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("RFTWEB_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("RFTWEB_PORT", "8000")))
        parser.add_argument("--demo-port", type=int, default=int(os.environ.get("RFTWEB_DEMO_PORT", "8765")))
        parser.add_argument("--no-demo", action="store_true", help="Do not start the demo tool server.")

    def handle(self, *args, **options) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.model_builder: threading.Thread | None = None
        stopped_as_asked = False
        try:
            self._start_all(options)
            self._supervise()
            stopped_as_asked = True
        finally:
            self._stop_all()
            if stopped_as_asked:  # (an error goes on to be reported, with its exit status)
                self._leave_if_the_model_is_building()

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:  # a second Ctrl-C: no more grace
            for _, process in self.children:
                _kill_group(process, signal.SIGKILL)
        self.stopping = True

    def _start_all(self, options) -> None:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        if settings.REDIS_IS_EMBEDDED:
            socket_path = Path(settings.REDIS_URL.removeprefix("unix://"))
            redis_process = start_embedded_redis(socket_path)
            if redis_process is not None:
                self.children.append(("redis", redis_process))
                self._announce("redis", redis_process, f"embedded, unix socket {socket_path}")
        call_command("migrate", interactive=False, verbosity=0)
        admin = self._ensure_admin()
        host, port = options["host"], options["port"]
        with_demo = (
            not options["no_demo"] and importlib.util.find_spec("experiments.demo_servers") is not None
        )
        if with_demo:
            from experiments.services.demo import seed_demo

            seed_demo(
                owner=admin,
                tool_base_url=f"http://127.0.0.1:{options['demo_port']}",
                # The demo's workspace tools as an MCP server, on the next port.
                mcp_url=f"http://127.0.0.1:{options['demo_port'] + 1}/mcp",
            )
            self._prepare_quick_demo_model()
            self.stdout.write(
                "Demo datasets, tools and graders are ready: press “Start quick demo” (a tiny model, "
                "about two minutes) or “Start demo run” (SmolLM2-135M) on the dashboard."
            )
        python = sys.executable
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
            "PYTHONUNBUFFERED": "1",
        }
        processes = [
            # The same server command as in production (README): uvicorn, streaming request bodies.
            ("web", [python, "-m", "django", "serve", "--host", host, "--port", str(port)]),
            (
                "worker-train",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "rftweb",
                    "worker",
                    "-Q",
                    "train",
                    "-c",
                    "1",
                    "-n",
                    f"train-{os.getpid()}@%h",
                    "--loglevel",
                    "INFO",
                ],
            ),
            (
                "worker-default",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "rftweb",
                    "worker",
                    "-Q",
                    "default",
                    "-c",
                    "2",
                    "-n",
                    f"default-{os.getpid()}@%h",
                    "--loglevel",
                    "INFO",
                    "--beat",
                    "--schedule",
                    str(settings.DATA_DIR / "celerybeat-schedule"),
                ],
            ),
        ]
        if with_demo:
            processes.append(
                (
                    "demo-tools",
                    [
                        python,
                        "-m",
                        "experiments.demo_servers",
                        "--port",
                        str(options["demo_port"]),
                        "--mcp-port",
                        str(options["demo_port"] + 1),
                    ],
                )
            )
        for name, command in processes:
            process = subprocess.Popen(
                command, env=environment, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self.children.append((name, process))
            self._announce(name, process, " ".join(command[1:4]))
        self._wait_for_web(host, port, dict(self.children)["web"])
        self.stdout.write(
            self.style.SUCCESS(f"rftweb is up: http://{host}:{port}/  (Ctrl-C stops everything)")
        )

    def _wait_for_web(
        self, host: str, port: int, web: subprocess.Popen, notice_every_s: float = 60.0
    ) -> None:
        """Say "up" only once the server answers: a click on the printed address must not be refused.
        A slow start (a busy machine) is waited for, with a word now and then; a server that exits is
        an error."""
        import socket

        address = (host if host not in ("0.0.0.0", "::") else "127.0.0.1", port)
        started = time.monotonic()
        next_notice = started + notice_every_s
        while web.poll() is None:
            try:
                with socket.create_connection(address, 1):
                    return
            except OSError:
                time.sleep(0.2)
            if time.monotonic() >= next_notice:
                self.stderr.write(
                    f"the web server does not answer on {host}:{port} after "
                    f"{time.monotonic() - started:.0f} s; still waiting"
                )
                next_notice += notice_every_s
        raise CommandError(f"the web server exited with code {web.returncode}; see its output above")

    def _prepare_quick_demo_model(self) -> None:
        """Build the quick demo's warm-started model in the background (once; cached in DATA_DIR), so
        that the quick demo's two minutes are spent on RL, not on building its starting point."""
        from experiments.services.training import toy_model_dir

        def build() -> None:
            started = time.monotonic()
            try:
                path = toy_model_dir()
            except Exception as exc:  # the quick demo's worker tries again; say why here
                self.stderr.write(f"the quick demo's model could not be prepared: {exc}")
                return
            self.stdout.write(f"quick demo model ready in {time.monotonic() - started:.0f} s: {path}")

        self.model_builder = threading.Thread(target=build, name="quick-demo-model", daemon=True)
        self.model_builder.start()

    def _announce(self, name: str, process: subprocess.Popen, what: str) -> None:
        self.stdout.write(f"started {name} pid={process.pid} ({what})")
        self.stdout.flush()

    def _ensure_admin(self):
        users = get_user_model()
        existing = users.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            return existing
        username = os.environ.get("RFTWEB_ADMIN_USER", "admin")
        password = os.environ.get("RFTWEB_ADMIN_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        admin = users.objects.create_superuser(username=username, email="", password=password)
        if generated:
            # Shown once; only the hash is stored. Set RFTWEB_ADMIN_PASSWORD to choose it instead.
            self.stdout.write(
                self.style.WARNING(f"Created admin account  username: {username}  password: {password}")
            )
        else:
            self.stdout.write(
                f"Created admin account {username!r} with the password from RFTWEB_ADMIN_PASSWORD."
            )
        return admin

    def _supervise(self) -> None:
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    raise CommandError(
                        f"{name} exited unexpectedly (code {process.returncode}); stopping everything."
                    )
            time.sleep(0.3)
        self.stdout.write("Stopping…")

    def _stop_all(self) -> None:
        # Redis last: the workers hand unfinished tasks back to it while they shut down.
        services = [process for name, process in self.children if name != "redis"]
        redis = [process for name, process in self.children if name == "redis"]
        for group in (services, redis):
            for process in group:
                _kill_group(process, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for process in group:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for process in group:
                _kill_group(process, signal.SIGKILL)  # stragglers, and any child left in the group
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if self.children:
            self.stdout.write("Stopped.")

    def _leave_if_the_model_is_building(self) -> None:
        """Ctrl-C while the quick demo's model is still being built: the interpreter's teardown under
        that thread's torch work aborted the command ("terminate called without an active exception",
        exit 134) after everything had stopped. The build writes to a staging folder that is renamed
        only once complete, so leaving at once loses just the unfinished build, which the next start
        (or the quick demo's worker) does again."""
        if self.model_builder is None or not self.model_builder.is_alive():
            return
        self.stdout.write("The quick demo's model was still being built; the next start builds it.")
        for stream in (self.stdout, self.stderr, sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def _kill_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the child's whole process group (celery's pool processes, daphne's, ...)."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
