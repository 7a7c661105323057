"""Counter-to-rate helpers: first reading, resets, wraps, per-key state."""

from __future__ import annotations

import pytest

from agent.rates import CounterRate, KeyedCounterRate, WrappingCounterRate


def test_first_reading_has_no_rate() -> None:
    """One reading cannot make a rate: None, not 0."""
    assert CounterRate().update(1234, 10.0) is None


def test_rate_is_delta_over_monotonic_interval() -> None:
    """Units per second between consecutive readings."""
    rate = CounterRate()
    rate.update(1_000, 10.0)
    assert rate.update(1_500, 12.0) == 250.0
    assert rate.update(1_500, 13.0) == 0.0
    assert rate.update(4_500, 13.5) == 6_000.0


def test_counter_going_backwards_skips_one_interval() -> None:
    """A smaller value is a reset: that interval has no rate, the next one is measured from it."""
    rate = CounterRate()
    rate.update(10_000, 1.0)
    assert rate.update(200, 2.0) is None
    assert rate.update(700, 3.0) == 500.0


def test_no_elapsed_time_gives_no_rate() -> None:
    """Two readings at the same instant cannot give a rate."""
    rate = CounterRate()
    rate.update(100, 5.0)
    assert rate.update(200, 5.0) is None


def test_large_integer_counters_keep_precision() -> None:
    """64-bit byte counters near 2**63 still give exact deltas."""
    rate = CounterRate()
    rate.update(2**63, 0.0)
    assert rate.update(2**63 + 3, 1.0) == 3.0


def test_wrapping_counter_adds_the_range_on_wrap() -> None:
    """RAPL: a negative delta means the counter wrapped at max_range."""
    rate = WrappingCounterRate(max_range=1_000_000)
    rate.update(900_000, 0.0)
    assert rate.update(100_000, 2.0) == 100_000.0  # (1e6 - 9e5 + 1e5) / 2
    assert rate.update(300_000, 3.0) == 200_000.0


def test_wrapping_counter_rejects_impossible_deltas() -> None:
    """A value beyond the range cannot be a wrap or a count: None."""
    rate = WrappingCounterRate(max_range=1_000)
    rate.update(100, 0.0)
    assert rate.update(5_000, 1.0) is None


def test_wrapping_counter_needs_a_positive_range() -> None:
    """A zero range is a configuration error."""
    with pytest.raises(ValueError, match="max_range"):
        WrappingCounterRate(0)


def test_keyed_rates_track_each_key() -> None:
    """New keys start with None; known keys get their own rate."""
    rates = KeyedCounterRate[str]()
    assert rates.update({"eth0": 100, "eth1": 0}, 0.0) == {"eth0": None, "eth1": None}
    assert rates.update({"eth0": 300, "eth1": 50, "ib0": 7}, 2.0) == {
        "eth0": 100.0,
        "eth1": 25.0,
        "ib0": None,
    }


def test_keyed_rates_forget_missing_keys() -> None:
    """A key that disappears and comes back starts over instead of spanning the gap."""
    rates = KeyedCounterRate[str]()
    rates.update({"eth0": 100, "veth1": 100}, 0.0)
    rates.update({"eth0": 200}, 1.0)
    assert rates.update({"eth0": 300, "veth1": 10_000}, 2.0) == {"eth0": 100.0, "veth1": None}
