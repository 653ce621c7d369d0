"""Background work that steps aside while the pages wait for a CPU.

An upload's import is throughput work; the pages are latency work. An OS priority alone does not keep
an import from slowing the pages down: the import's rows are parsed again by PostgreSQL, whose backend
runs at the database's own priority (and, where the kernel groups processes by session, gets as large
a share of the CPU as the whole web server). So the upload helper (experiments/import_helper.py) also
paces itself, as PostgreSQL's autovacuum does with its cost delay, but on a measured signal: how long
the threads of its web process waited in the kernel's run queue for a CPU (/proc/<pid>/task/*/
schedstat). While they waited more than RFT_IMPORT_PRESSURE_LIMIT seconds per second over the last
moment, and pages are being served (the web process counts the requests it starts, in memory shared
with its helper), the import sleeps after each slice of work so that it runs RFT_IMPORT_MIN_DUTY of
the time (0.2: five times slower at worst, never stopped). Without page traffic an import runs at
full speed however busy the uploads themselves make the machine (the system-wide pressure count,
/proc/pressure/cpu, cannot tell those apart: twenty imports alone took twice as long under it).
Where the kernel gives no such count (not Linux), nothing is paced.

No Django here: the helper sets it up with `configure` as it starts.
"""

from __future__ import annotations

import os
import time

PROC = "/proc"
SLICE_SECONDS = 0.1  # work between two looks at the waits


class Pacer:
    """`pages`: a count the web process raises with every page or API request it starts; the work is
    paced only while it moves (the waits of a web process busy with uploads alone are the uploads')."""

    def __init__(
        self, *, watch_pid: int, limit: float, min_duty: float, pages=None, proc: str = PROC
    ) -> None:
        self.tasks = os.path.join(proc, str(watch_pid), "task")
        self.pages = pages
        self._last_pages = pages.value if pages is not None else 0
        self.limit = limit
        self.min_duty = min(1.0, max(0.01, min_duty))
        self.paused_seconds = 0.0  # in all
        self._last_time = time.monotonic()
        self._last_waited = self._waited_seconds()
        self.enabled = self._last_waited is not None and limit > 0 and self.min_duty < 1

    def __call__(self) -> None:
        """Call often from the work's loop: cheap until a slice has passed; then it may sleep."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self._last_time
        if elapsed < SLICE_SECONDS:
            return
        waited = self._waited_seconds()
        if waited is None:  # the watched process is gone
            self.enabled = False
            return
        served = self.pages is None or self.pages.value != self._last_pages
        if self.pages is not None:
            self._last_pages = self.pages.value
        # A thread that ended takes its waits with it: never less than nothing.
        if served and max(0.0, waited - self._last_waited) / elapsed > self.limit:
            # Sleep for as long as the work ran since the last look, times (1/duty - 1), capped so that
            # one late look (a slow line) does not stop the work for long.
            pause = min(elapsed, 4 * SLICE_SECONDS) * (1 / self.min_duty - 1)
            time.sleep(pause)
            self.paused_seconds += pause
            after = self._waited_seconds()
            waited = waited if after is None else after
        self._last_time = time.monotonic()
        self._last_waited = waited

    def _waited_seconds(self) -> float | None:
        """The watched process's threads' total time waiting for a CPU (seconds), or None."""
        try:
            threads = os.listdir(self.tasks)
        except OSError:
            return None
        total = 0
        for thread in threads:
            try:
                with open(os.path.join(self.tasks, thread, "schedstat"), "rb") as stats:
                    total += int(stats.read().split()[1])  # on a CPU, waiting for one (ns), slices
            except (OSError, IndexError, ValueError):
                continue  # the thread ended meanwhile
        return total / 1e9


_pacer: Pacer | None = None


def configure(*, watch_pid: int, limit: float, min_duty: float, pages=None) -> None:
    global _pacer
    _pacer = Pacer(watch_pid=watch_pid, limit=limit, min_duty=min_duty, pages=pages)


def step_aside() -> None:
    """Pace the calling work if this process was configured to (the upload helper); else nothing."""
    if _pacer is not None:
        _pacer()
