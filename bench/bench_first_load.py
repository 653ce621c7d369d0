"""Benchmark: first load of the chart pages (run page, readiness report, compare) in Chromium.

Seeds a scratch PostgreSQL database with one user's site (`tests/ui/seed.py`: runs with metrics and
rollouts, readiness reports, a comparison), then serves it twice with Daphne: from this checkout and
from a baseline commit (exported with `git archive`, default: the commit this work started from),
both on the same database. Each round opens every page in a fresh browser context (empty cache)
from each server, alternating, and records from the navigation's start:

- `load`: the load event (HTML, CSS and every script fetched and run),
- `paint`: the first contentful paint (text and boxes on screen),
- `drawn`: every chart in the window (1280x800, not scrolled) showing its data: as the still first
  frame that static/js/first_frame.js draws before Plotly is there (`svg.first-frame`), or by Plotly
  (`.main-svg`); the load event on pages without charts in view,
- `interactive`: every chart in the window drawn by Plotly (hover, zoom, live updates).

    .venv/bin/python bench/bench_first_load.py [--baseline 8d541d7] [--rounds 5]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres), Redis
(REDIS_URL, default redis://127.0.0.1:6379/0) and Chromium at /usr/bin/chromium. Goal: < 500 ms each.
The machine is shared: the load average is printed with the figures; compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from bench_metric_series import drop_database, scratch_database, setup_django  # noqa: E402

PAGES = ("run", "readiness", "compare")
DB_NAME = "bench_first_load"
PASSWORD = "correct horse battery staple"  # tests/factories.py's UserFactory

# Installed before the page's own scripts: at every animation frame from the navigation's start (each
# rendering opportunity), whether every chart in the window shows its data, as the still first frame
# (static/js/first_frame.js, `svg.first-frame`) or already by Plotly (`.main-svg`): `drawn`; and
# whether Plotly has drawn them all: `interactive`. The first frame at which each holds is kept.
# Pages without a chart in the window count the load event for both.
WATCH = """(() => {
  const shown = window.__chartsShown = {};
  const selectors = {drawn: '.main-svg, svg.first-frame', interactive: '.main-svg'};
  const inView = box => { const r = box.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; };
  const check = now => {
    const boxes = [...document.querySelectorAll('.chart')].filter(box => box.offsetParent !== null && inView(box));
    const loaded = (performance.getEntriesByType('navigation')[0] || {}).loadEventEnd;
    for (const [name, selector] of Object.entries(selectors)) {
      if (shown[name] !== undefined) continue;
      if (boxes.length && boxes.every(box => box.querySelector(selector))) shown[name] = now;
      else if (!boxes.length && loaded) shown[name] = loaded;
    }
    if (shown.drawn === undefined || shown.interactive === undefined) requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();"""


def export_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def baseline_packages(packages: list[str], into: Path) -> str:
    """The baseline's imports that this checkout no longer installs (e.g. httpx), put in a folder of
    their own that only the baseline server has on its path."""
    if packages:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(into),
                *packages,
            ],
            check=True,
            capture_output=True,
        )
    return str(into)


def start_daphne(tree: Path, env: dict, log: Path, extra_path: str = "") -> tuple[subprocess.Popen, str]:
    from tests.conftest import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "rftweb.asgi:application"],
        cwd=tree,
        env={**env, "PYTHONPATH": os.pathsep.join(p for p in (str(tree), extra_path) if p)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"daphne in {tree} did not start:\n{log.read_text()}")


def log_in(browser, base: str, username: str) -> dict:
    """A session made through the login form; each measured context starts from its cookies only."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    state = context.storage_state()
    context.close()
    return state


def measure(browser, url: str, session: dict) -> tuple[float, float, int, float, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, storage_state=session)
    context.add_init_script(WATCH)
    page = context.new_page()
    transferred, errors = [], []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.url}: {r.text()[:300]}"))
    page.on("response", lambda response: transferred.append(int(response.headers.get("content-length") or 0)))
    page.goto(url, wait_until="load")
    load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    paint = page.evaluate(
        "(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: NaN}).startTime"
    )
    try:
        page.wait_for_function(
            "window.__chartsShown && window.__chartsShown.interactive !== undefined", timeout=30000
        )
    except Exception:
        missing = page.evaluate(
            "[...document.querySelectorAll('.chart')].filter(b => b.offsetParent && !b.querySelector('.main-svg')).map(b => b.id)"
        )
        raise RuntimeError(f"{url}: charts never drawn: {missing}; errors: {errors}") from None
    shown = page.evaluate("window.__chartsShown")
    # A frame's callbacks run before it is painted: nothing is on screen before the first paint.
    times = [max(shown["drawn"], paint), max(shown["interactive"], paint)]
    context.close()
    return load, times[0], sum(transferred), paint, times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="8d541d7", help="git ref to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--baseline-packages",
        nargs="*",
        default=["httpx", "httpcore"],
        help="packages the baseline imports that this checkout no longer installs",
    )
    args = parser.parse_args()

    os.environ.setdefault("RFTWEB_TEST_NAMESPACE", f"bench-first-load-{os.getpid()}")
    admin_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    database_url = scratch_database(admin_url, DB_NAME)
    setup_django(database_url)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from tests.ui.seed import seed_site

    user, paths = seed_site()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DJANGO_ALLOW_ASYNC_UNSAFE", "PYTHONPATH")},
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "rftweb.settings.test",
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench-first-load-"))
    servers = {}
    try:
        (scratch / "baseline").mkdir()
        baseline_tree = export_tree(args.baseline, scratch / "baseline")
        extra = {"baseline": baseline_packages(args.baseline_packages, scratch / "baseline-packages")}
        for name, tree in (("baseline", baseline_tree), ("this checkout", ROOT)):
            log = scratch / f"{name.replace(' ', '-')}.log"
            servers[name] = start_daphne(tree, env, log, extra.get(name, ""))
        from playwright.sync_api import sync_playwright

        results: dict[tuple[str, str], list[tuple[float, float, int, float]]] = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            sessions = {name: log_in(browser, base, user.username) for name, (_, base) in servers.items()}
            for name, (_, base) in servers.items():  # warm the servers (templates, imports), not measured
                for page in PAGES:
                    measure(browser, base + paths[page], sessions[name])
            loads = []
            for _ in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for page in PAGES:
                    for name, (_, base) in servers.items():
                        results.setdefault((name, page), []).append(
                            measure(browser, base + paths[page], sessions[name])
                        )
            browser.close()
        print(
            f"bench_first_load: {platform.node()}, {os.cpu_count()} CPUs, Chromium headless, 1280x800, cold cache"
        )
        print(
            f"load average (1 min) during the rounds: {min(loads):.2f}-{max(loads):.2f}; now {os.getloadavg()}"
        )
        print(f"baseline: {args.baseline}; {args.rounds} rounds, medians (min-max)")
        print(
            f"{'page':<10} {'server':<14} {'paint ms':>8} {'load ms':>20} {'charts in view ms':>22} "
            f"{'interactive ms':>22} {'bytes':>10}"
        )
        for page in PAGES:
            for name in servers:
                rows = results[(name, page)]
                load = [r[0] for r in rows]
                drawn = [r[1] for r in rows]
                interactive = [r[4] for r in rows]
                paint = statistics.median(r[3] for r in rows)
                print(
                    f"{page:<10} {name:<14} {paint:>8.0f} {statistics.median(load):>8.0f} ({min(load):.0f}-{max(load):.0f})"
                    f"{statistics.median(drawn):>12.0f} ({min(drawn):.0f}-{max(drawn):.0f})"
                    f"{statistics.median(interactive):>12.0f} ({min(interactive):.0f}-{max(interactive):.0f})"
                    f"{rows[0][2]:>10}"
                )
            before = statistics.median(r[1] for r in results[("baseline", page)])
            after = statistics.median(r[1] for r in results[("this checkout", page)])
            print(f"{page:<10} {'ratio':<14} charts in view: {after / before:.2f} of the baseline's time")
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=15)
        if sys.exc_info()[0] is None:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"server logs kept in {scratch}", file=sys.stderr)
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, DB_NAME)


if __name__ == "__main__":
    main()
