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


def free_ports() -> tuple[int, int]:
    """A port for the web server and one for the demo tools, whose MCP server takes the next port too.
    The kernel can hand the same free port out twice in a row, so the three are checked apart."""
    while True:
        with socket.socket() as web, socket.socket() as demo, socket.socket() as mcp:
            web.bind(("127.0.0.1", 0))
            demo.bind(("127.0.0.1", 0))
            try:
                mcp.bind(("127.0.0.1", demo.getsockname()[1] + 1))
            except OSError:
                continue
            return web.getsockname()[1], demo.getsockname()[1]


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
    port, demo_port = free_ports()
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
            login_page = None
            deadline = time.monotonic() + 120
            while login_page is None:
                try:
                    login_page = browser.get("/accounts/login/")
                except httpx2.TransportError as error:
                    assert up.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, f"{error!r}\n{log_path.read_text()}"
                    time.sleep(0.5)
            assert login_page.status_code == 200, log_path.read_text()
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
            assert browser.get("/static/vendor/plotly-basic.min.js").status_code == 200
    finally:
        os.kill(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        up.wait(timeout=60)
    log_text = log_path.read_text()
    assert "Stopped." in log_text
    # A clean exit, even while the quick demo's model is still being built in the background (the
    # interpreter's teardown under that thread used to abort: exit 134).
    assert up.returncode == 0, log_text[-3000:]
    time.sleep(0.5)
    assert process_groups_alive(started | {up.pid}) == set()
