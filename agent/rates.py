"""Rates from cumulative counters over a monotonic clock.

The interval is measured on ``time.monotonic`` (``CLOCK_MONOTONIC``), never the wall clock: an
NTP step or an operator setting the date would make it negative or huge.

A rate needs two readings, so the first update returns ``None`` ("unknown", never ``0``).
A counter that went backwards was reset (reboot, driver reload, hot-plug): that interval is
skipped, also ``None``. Counters with a known range (RAPL energy) wrap instead: add the range.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

__all__ = ["CounterRate", "KeyedCounterRate", "WrappingCounterRate"]

K = TypeVar("K", bound=Hashable)


class CounterRate:
    """Per-second rate of one monotonically increasing counter.

    Integer counters stay integers until the division, so 64-bit byte counters lose no
    precision in the delta.
    """

    __slots__ = ("_last_t", "_last_value")

    def __init__(self) -> None:
        self._last_value: float | None = None
        self._last_t = 0.0

    def update(self, value: float, now_mono: float) -> float | None:
        """Record ``value`` read at ``now_mono``; return units per second since the last read.

        ``None`` on the first reading, when the counter went backwards, and when no time
        passed (a zero or negative interval cannot give a rate).
        """
        last_value, last_t = self._last_value, self._last_t
        self._last_value, self._last_t = value, now_mono
        if last_value is None:
            return None
        dt = now_mono - last_t
        if dt <= 0:
            return None
        delta = self._delta(value - last_value)
        if delta is None:
            return None
        return delta / dt

    def _delta(self, raw: float) -> float | None:
        return raw if raw >= 0 else None


class WrappingCounterRate(CounterRate):
    """A counter that wraps to zero after ``max_range`` (RAPL's ``max_energy_range_uj``).

    A negative delta is taken as one wrap. A reading that is still negative after adding the
    range (or a value beyond the range) cannot be explained by a wrap and gives ``None``.
    """

    __slots__ = ("_max_range",)

    def __init__(self, max_range: float) -> None:
        if max_range <= 0:
            raise ValueError(f"max_range must be positive, got {max_range}")
        super().__init__()
        self._max_range = max_range

    def _delta(self, raw: float) -> float | None:
        if raw >= 0:
            return raw if raw <= self._max_range else None
        wrapped = raw + self._max_range
        return wrapped if wrapped >= 0 else None


class KeyedCounterRate(Generic[K]):
    """One :class:`CounterRate` per key (per NIC, per disk), created on first sight.

    Keys missing from an update are forgotten, so an interface that comes back starts over
    with ``None`` instead of producing a rate across its absence.
    """

    __slots__ = ("_rates",)

    def __init__(self) -> None:
        self._rates: dict[K, CounterRate] = {}

    def update(self, values: Mapping[K, float], now_mono: float) -> dict[K, float | None]:
        """Update every key in ``values``; return each key's rate (``None`` for new keys)."""
        rates = self._rates
        if rates.keys() - values.keys():
            self._rates = rates = {k: r for k, r in rates.items() if k in values}
        out: dict[K, float | None] = {}
        for key, value in values.items():
            rate = rates.get(key)
            if rate is None:
                rates[key] = rate = CounterRate()
            out[key] = rate.update(value, now_mono)
        return out
