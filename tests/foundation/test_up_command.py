"""The README's first command: the whole app comes up on the embedded default and Ctrl-C leaves nothing behind."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_groups_alive(group_ids: set[int]) -> set[int]:
    alive = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp in group_ids and state != "Z":
            alive.add(int(stat.parent.name))
    return alive


def test_up_serves_login_and_dashboard_and_ctrl_c_stops_every_process(tmp_path):
    port, demo_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="rftweb.settings.local",
        RFTWEB_DATA_DIR=str(tmp_path / "data"),
        RFTWEB_ADMIN_PASSWORD="a-local-admin-password",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(port), "--demo-port", str(demo_port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "rftweb is up" not in log_path.read_text():
            assert up.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        started = {int(pid) for pid in re.findall(r"started \S+ pid=(\d+)", log_path.read_text())}
        assert len(started) >= 4  # redis, web, two workers (+ the demo server when shipped)

        base = f"http://127.0.0.1:{port}"
        with httpx2.Client(base_url=base, timeout=10, follow_redirects=True) as browser:
            for _ in range(60):
                try:
                    login_page = browser.get("/accounts/login/")
                    break
                except httpx2.TransportError:
                    time.sleep(0.5)
            assert login_page.status_code == 200
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
            dashboard = browser.post(
                "/accounts/login/",
                data={
                    "username": "admin",
                    "password": "a-local-admin-password",
                    "csrfmiddlewaretoken": token,
                },
                headers={"Referer": f"{base}/accounts/login/"},
            )
            assert dashboard.status_code == 200
            assert "<h1>Dashboard</h1>" in dashboard.text
            assert browser.get("/static/vendor/plotly.min.js").status_code == 200
    finally:
        os.kill(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        up.wait(timeout=60)
    assert "Stopped." in log_path.read_text()
    time.sleep(0.5)
    assert process_groups_alive(started | {up.pid}) == set()
