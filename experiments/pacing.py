"""Background work that steps aside while the CPU is contended (Linux pressure stall information).

An upload's import is throughput work; the pages are latency work. An OS priority alone does not keep
an import from slowing the pages down: the import's rows are parsed again by PostgreSQL, whose backend
runs at the database's own priority (and, where the kernel groups processes by session, gets as large
a share of the CPU as the whole web server). So the import helper (experiments/import_helper.py) also
paces itself, as PostgreSQL's own autovacuum does with its cost delay, but on a measured signal: the
kernel's count of the time some runnable task waited for a CPU (/proc/pressure/cpu, "some"). While
that share, over the last moment, is above RFT_IMPORT_PRESSURE_LIMIT, the import sleeps after each
slice of work so that it runs RFT_IMPORT_MIN_DUTY of the time (0.2: five times slower at worst, never
stopped); on an idle machine it runs at full speed. Where the kernel has no such count (not Linux,
or a kernel without PSI), nothing is paced.

No Django here: the helper sets it up with `configure` as it starts.
"""

from __future__ import annotations

import time

PRESSURE_PATH = "/proc/pressure/cpu"
SLICE_SECONDS = 0.05  # work between two looks at the pressure


class Pacer:
    def __init__(self, *, limit: float, min_duty: float, path: str = PRESSURE_PATH) -> None:
        self.limit = limit
        self.min_duty = min(1.0, max(0.01, min_duty))
        self.path = path
        self.paused_seconds = 0.0  # in all, for the logs and the tests
        self._last_time = time.monotonic()
        self._last_stalled = self._stalled_seconds()
        self.enabled = self._last_stalled is not None and limit > 0 and self.min_duty < 1

    def __call__(self) -> None:
        """Call often from the work's loop: cheap until a slice has passed; then it may sleep."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self._last_time
        if elapsed < SLICE_SECONDS:
            return
        stalled = self._stalled_seconds()
        if stalled is None:
            self.enabled = False
            return
        share = (stalled - self._last_stalled) / elapsed
        if share > self.limit:
            # Sleep for as long as the work ran since the last sleep, times (1/duty - 1), capped so that
            # one late look (a slow line) does not stop the work for long.
            pause = min(elapsed, 4 * SLICE_SECONDS) * (1 / self.min_duty - 1)
            time.sleep(pause)
            self.paused_seconds += pause
            after = self._stalled_seconds()
            stalled = stalled if after is None else after
        self._last_time = time.monotonic()
        self._last_stalled = stalled

    def _stalled_seconds(self) -> float | None:
        """The kernel's total of time some task waited for a CPU (seconds), or None without PSI."""
        try:
            with open(self.path, "rb") as pressure:
                first = pressure.readline()
        except OSError:
            return None
        for field in first.split():
            if field.startswith(b"total="):
                return int(field[6:]) / 1e6
        return None


_pacer: Pacer | None = None


def configure(*, limit: float, min_duty: float) -> None:
    global _pacer
    _pacer = Pacer(limit=limit, min_duty=min_duty)


def step_aside() -> None:
    """Pace the calling work if this process was configured to (the import helper); else nothing."""
    if _pacer is not None:
        _pacer()


def paused_seconds() -> float:
    return _pacer.paused_seconds if _pacer is not None else 0.0
