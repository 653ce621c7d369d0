"""An import steps aside while tasks wait for the CPU (experiments/pacing.py): it reads the kernel's
pressure count (Linux PSI), here a file the test writes in the same format."""

from __future__ import annotations

import time

import pytest

from experiments.pacing import SLICE_SECONDS, Pacer


def _write_pressure(path, stalled_seconds: float) -> None:
    total = int(stalled_seconds * 1e6)
    path.write_text(
        f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )


def _work(pacer: Pacer, seconds: float) -> None:
    """Busy work that calls the pacer as an import's loop does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pacer()


def test_a_contended_cpu_slows_the_work_to_its_minimum_duty(tmp_path):
    pressure = tmp_path / "cpu"
    _write_pressure(pressure, 100.0)
    pacer = Pacer(limit=0.2, min_duty=0.25, path=str(pressure))
    assert pacer.enabled
    started = time.monotonic()
    # Every look at the pressure finds tasks waited all the time since the last one.
    end = started + 0.5
    while time.monotonic() < end:
        _write_pressure(pressure, 100.0 + (time.monotonic() - started) * 2)
        pacer()
    # Working a quarter of the time: about three times as long asleep as at work.
    assert pacer.paused_seconds == pytest.approx(0.5 * 0.75, abs=0.15)


def test_an_idle_cpu_leaves_the_work_alone(tmp_path):
    pressure = tmp_path / "cpu"
    _write_pressure(pressure, 100.0)
    pacer = Pacer(limit=0.2, min_duty=0.25, path=str(pressure))
    _work(pacer, 10 * SLICE_SECONDS)
    _write_pressure(pressure, 100.0 + 0.1 * SLICE_SECONDS)  # 10 % of one slice: under the limit
    _work(pacer, 3 * SLICE_SECONDS)
    assert pacer.paused_seconds == 0


def test_without_a_pressure_count_nothing_is_paced(tmp_path):
    pacer = Pacer(limit=0.2, min_duty=0.25, path=str(tmp_path / "missing"))
    assert not pacer.enabled
    _work(pacer, 2 * SLICE_SECONDS)
    assert pacer.paused_seconds == 0


def test_a_zero_limit_turns_pacing_off(tmp_path):
    pressure = tmp_path / "cpu"
    _write_pressure(pressure, 1.0)
    assert not Pacer(limit=0, min_duty=0.25, path=str(pressure)).enabled
    assert not Pacer(limit=0.2, min_duty=1.0, path=str(pressure)).enabled


def test_the_kernels_own_count_is_read_where_there_is_one():
    pacer = Pacer(limit=0.2, min_duty=0.25)
    stalled = pacer._stalled_seconds()
    try:
        open("/proc/pressure/cpu").close()
    except OSError:
        assert stalled is None and not pacer.enabled
    else:
        assert stalled is not None and stalled >= 0 and pacer.enabled
