"""The built wheel runs the whole app on its own: installed into a fresh virtualenv, started with the
`rftweb` console command on the embedded defaults, from a directory that is not the checkout and
without the checkout on the path, it serves the login page and a static file.

The fresh virtualenv gets the dependencies by a .pth line naming the shared virtualenv's
site-packages (installing torch & co. again would take minutes and the network); that line adds the
directory only, so the shared virtualenv's editable install of this checkout stays inactive.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _source_copy(target: Path) -> Path:
    """The checkout's tracked and new (not ignored) files: what a clean clone would build from."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            ".",
        ],
        cwd=source,
        check=True,
        timeout=300,
    )
    [built] = (work / "dist").glob("rftweb-*.whl")
    return built


def test_the_wheel_carries_templates_static_files_and_the_console_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "rftweb/templates/base.html" in names and "rftweb/templates/registration/login.html" in names
    assert "rftweb/static/css/app.css" in names and "rftweb/static/vendor/htmx.min.js" in names
    assert "rftweb/examples/calculator_lookup/train.jsonl" in names  # the demo's data
    assert "trainer/graders/spec.py" in names and "experiments/api/hosted_graders.py" in names
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "rftweb = rftweb.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_serves_login_and_static_with_the_console_command(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        timeout=300,
    )
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    shared_site = sysconfig.get_paths()["purelib"]
    assert shared_site in site.getsitepackages()
    (fresh_site / "shared_dependencies.pth").write_text(shared_site + "\n")

    home = tmp_path / "home"  # the embedded defaults keep their data under ~/.local/share/rftweb
    home.mkdir()
    environment = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    where = subprocess.run(
        [str(python), "-c", "import rftweb, sys; print(rftweb.__file__); print(sys.path)"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(fresh_site / "rftweb")), where
    # The checkout is nowhere on the path (the shared dependencies' site-packages may lie inside it,
    # as a checkout's own .venv does).
    path_entries = [Path(entry) for entry in ast.literal_eval(where.splitlines()[1]) if entry]
    assert not [
        entry
        for entry in path_entries
        if entry.is_relative_to(ROOT) and not entry.is_relative_to(Path(shared_site))
    ], where

    port = _free_port()
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "rftweb"), "up", "--port", str(port), "--no-demo"],
        cwd=tmp_path,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, body, _ = _get(f"http://127.0.0.1:{port}/accounts/login/")
                break
            except OSError:
                time.sleep(1)
        output = (tmp_path / "up.log").read_text(errors="replace")
        assert status == 200, f"no login page (exit {process.poll()}):\n{output[-4000:]}"
        assert b'name="password"' in body and b"csrfmiddlewaretoken" in body
        static_status, css, content_type = _get(f"http://127.0.0.1:{port}/static/css/app.css")
        assert static_status == 200 and content_type.startswith("text/css") and len(css) > 1000
        assert (home / ".local" / "share" / "rftweb" / "rftweb.sqlite3").is_file()  # the embedded default
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
