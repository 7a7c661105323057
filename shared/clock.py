"""Clocks as parameters: rates need a monotonic clock, samples need wall time.

Code that measures intervals or stamps samples takes a :class:`Clock` so tests can drive
time with :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Where time comes from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards: use for intervals and rates."""
        ...

    def time(self) -> float:
        """Wall-clock Unix seconds: use for timestamps, never for intervals."""
        ...


class SystemClock:
    """The real clocks: :func:`time.monotonic` and :func:`time.time`."""

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """:func:`time.time`."""
        return time.time()


class FakeClock:
    """A clock that moves only when told to; both readings advance together.

    Thread-safe, so a background thread (the XID watcher) may read it while a test advances it.
    """

    def __init__(self, *, start_wall: float = 1_700_000_000.0, start_mono: float = 1_000.0) -> None:
        self._lock = threading.Lock()
        self._wall = start_wall
        self._mono = start_mono

    def monotonic(self) -> float:
        """The fake monotonic reading."""
        with self._lock:
            return self._mono

    def time(self) -> float:
        """The fake wall-clock reading."""
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        with self._lock:
            self._wall += seconds
            self._mono += seconds
