"""An import steps aside while its web process's threads wait for a CPU (experiments/pacing.py): it
reads the kernel's per-thread counts (/proc/<pid>/task/*/schedstat), here files the test writes in
the same format, and once the real ones."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from experiments.pacing import SLICE_SECONDS, Pacer

PID = 4242


def _write_waits(proc, waited_seconds: list[float]) -> None:
    """schedstat of each thread of process PID: time on a CPU, time waiting for one (ns), slices."""
    for index, waited in enumerate(waited_seconds):
        task = proc / str(PID) / "task" / str(PID + index)
        task.mkdir(parents=True, exist_ok=True)
        (task / "schedstat").write_text(f"123456789 {int(waited * 1e9)} 42\n")


def _pacer(proc, **kwargs) -> Pacer:
    return Pacer(watch_pid=PID, proc=str(proc), **{"limit": 0.1, "min_duty": 0.25, **kwargs})


def _work(pacer: Pacer, seconds: float) -> None:
    """Busy work that calls the pacer as an import's loop does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pacer()


def test_while_the_pages_wait_for_a_cpu_the_work_runs_at_its_minimum_duty(tmp_path):
    _write_waits(tmp_path, [10.0, 5.0])
    pacer = _pacer(tmp_path)
    assert pacer.enabled
    started = time.monotonic()
    end = started + 1.0
    while time.monotonic() < end:
        waited = (time.monotonic() - started) * 0.5  # each thread waits half of the time
        _write_waits(tmp_path, [10.0 + waited, 5.0 + waited])
        pacer()
    wall = time.monotonic() - started
    # Working a quarter of the time: three times as long asleep as at work.
    assert pacer.paused_seconds > 0.5
    assert 0.6 < pacer.paused_seconds / wall < 0.85


def test_without_waiting_pages_the_work_runs_at_full_speed(tmp_path):
    _write_waits(tmp_path, [10.0, 5.0])
    pacer = _pacer(tmp_path)
    _work(pacer, 5 * SLICE_SECONDS)
    _write_waits(tmp_path, [10.0 + 0.02 * SLICE_SECONDS, 5.0])  # under the limit
    _work(pacer, 3 * SLICE_SECONDS)
    _write_waits(tmp_path, [10.0])  # a thread that ended takes its waits with it: not a negative wait
    _work(pacer, 3 * SLICE_SECONDS)
    assert pacer.paused_seconds == 0
    assert pacer.enabled


def test_a_zero_limit_or_a_full_duty_turns_pacing_off(tmp_path):
    _write_waits(tmp_path, [1.0])
    assert not _pacer(tmp_path, limit=0).enabled
    assert not _pacer(tmp_path, min_duty=1.0).enabled


def test_without_the_kernels_counts_nothing_is_paced(tmp_path):
    pacer = _pacer(tmp_path / "no-proc")
    assert not pacer.enabled
    _work(pacer, 2 * SLICE_SECONDS)
    assert pacer.paused_seconds == 0


def test_the_watched_process_going_away_turns_pacing_off(tmp_path):
    _write_waits(tmp_path, [1.0])
    pacer = _pacer(tmp_path)
    (tmp_path / str(PID) / "task" / str(PID) / "schedstat").unlink()
    (tmp_path / str(PID) / "task" / str(PID)).rmdir()
    (tmp_path / str(PID) / "task").rmdir()
    _work(pacer, 2 * SLICE_SECONDS)
    assert not pacer.enabled and pacer.paused_seconds == 0


def test_the_kernels_own_counts_of_a_real_process_are_read():
    if not os.path.exists(f"/proc/{os.getpid()}/task"):
        pytest.skip("no /proc here")
    pacer = Pacer(watch_pid=os.getpid(), limit=0.1, min_duty=0.25)
    before = pacer._waited_seconds()
    assert before is not None and before >= 0 and pacer.enabled
    # Two busy threads and this one on a machine of few CPUs: someone waits for a CPU at some point.
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=spin) for _ in range(2 * (os.cpu_count() or 1))]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    after = pacer._waited_seconds()
    stop.set()
    for thread in threads:
        thread.join()
    assert after >= before


def test_waits_while_no_page_is_served_do_not_pace_the_work(tmp_path):
    """A web process busy with uploads alone waits for the CPU because of the uploads: no reason to
    slow them down. Once it serves pages again, its waits count."""
    pages = multiprocessing.get_context("spawn").RawValue("Q", 0)  # what the web process shares
    _write_waits(tmp_path, [10.0])
    pacer = _pacer(tmp_path, pages=pages)
    started = time.monotonic()

    def waiting_work(seconds: float, *, serving: bool) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            _write_waits(tmp_path, [10.0 + (time.monotonic() - started)])  # always waiting
            if serving:
                pages.value += 1
            pacer()

    waiting_work(5 * SLICE_SECONDS, serving=False)
    assert pacer.paused_seconds == 0
    waiting_work(5 * SLICE_SECONDS, serving=True)
    assert pacer.paused_seconds > 0
