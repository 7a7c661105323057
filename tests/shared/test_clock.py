"""Clocks: the system clock and the fake one tests drive."""

from __future__ import annotations

import time

import pytest

from shared.clock import Clock, FakeClock, SystemClock


def test_fake_clock_moves_only_when_advanced() -> None:
    """Both readings start where told and advance together."""
    clock = FakeClock(start_wall=1_700_000_000.0, start_mono=50.0)
    assert (clock.time(), clock.monotonic()) == (1_700_000_000.0, 50.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1_700_000_002.5, 52.5)


def test_fake_clock_cannot_go_back() -> None:
    """A monotonic clock never decreases, so a negative advance is refused."""
    with pytest.raises(ValueError, match="cannot go back"):
        FakeClock().advance(-1)


def test_system_clock_reads_the_real_clocks() -> None:
    """SystemClock is time.time / time.monotonic."""
    clock: Clock = SystemClock()
    before_wall, before_mono = time.time(), time.monotonic()
    wall, mono = clock.time(), clock.monotonic()
    assert before_wall <= wall <= time.time()
    assert before_mono <= mono <= time.monotonic()
