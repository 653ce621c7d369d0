"""Big uploads yield the CPU to people's clicks (experiments/heavy_work.py): a web process imports at
most RFT_UPLOAD_CONCURRENCY at once, on a thread whose OS priority is lowered meanwhile and given
back afterwards."""

from __future__ import annotations

import os
import threading
import time

import pytest

from experiments import heavy_work


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.fixture
def slots(settings):
    settings.RFT_UPLOAD_CONCURRENCY = 2
    settings.RFT_UPLOAD_NICE = 10
    heavy_work._slots = None  # built from the settings at first use
    yield
    heavy_work._slots = None


def test_the_importing_thread_runs_at_a_lower_priority_and_gets_it_back(slots):
    if not heavy_work.priority_can_be_restored():
        pytest.skip("this process may not raise a priority back (no CAP_SYS_NICE / RLIMIT_NICE)")
    seen = {}

    def upload():
        seen["before"] = _nice()
        with heavy_work.heavy_upload():
            seen["inside"] = _nice()
        seen["after"] = _nice()

    thread = threading.Thread(target=upload)
    thread.start()
    thread.join()
    assert seen["inside"] == min(19, seen["before"] + 10)
    assert seen["after"] == seen["before"]


def test_at_most_the_configured_number_of_uploads_import_at_once(slots):
    inside = 0
    most = 0
    lock = threading.Lock()

    def upload():
        nonlocal inside, most
        with heavy_work.heavy_upload():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.1)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=upload) for _ in range(6)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2
    assert time.perf_counter() - started >= 0.3  # 6 uploads, 2 at a time, 0.1 s each


def test_a_failing_import_gives_its_slot_and_priority_back(slots):
    before = _nice()
    with pytest.raises(RuntimeError):
        with heavy_work.heavy_upload():
            raise RuntimeError("bad file")
    assert _nice() == before
    acquired = [heavy_work._semaphore().acquire(blocking=False) for _ in range(2)]
    assert acquired == [True, True]
    for _ in acquired:
        heavy_work._semaphore().release()
