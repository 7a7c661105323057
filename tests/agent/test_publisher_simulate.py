"""The agent's offline buffer and the fleet simulator (no broker needed)."""

from __future__ import annotations

import pytest

from agent.publisher import SampleBuffer
from agent.simulate import FleetSimulator, xname
from shared.schema import decode_sample


def test_buffer_drops_oldest_when_full_and_counts() -> None:
    """Capacity 3: the 4th and 5th samples push out the two oldest."""
    buf = SampleBuffer(3)
    items = [bytes([i]) for i in range(5)]
    for item in items:
        buf.put(item)
    assert len(buf) == 3
    assert buf.dropped == 2
    assert buf.peek() == items[2]
    assert buf.high_water == 3


def test_buffer_remove_only_takes_the_sample_that_was_sent() -> None:
    """If the sample being published was dropped meanwhile, remove() leaves the new oldest."""
    buf = SampleBuffer(2)
    first = b"first"
    buf.put(first)
    sent = buf.peek()
    buf.put(b"second")
    buf.put(b"third")  # drops "first" while it was in flight
    assert sent is first
    buf.remove(first)
    assert buf.peek() == b"second"
    assert len(buf) == 2


def test_buffer_rejects_zero_capacity() -> None:
    """A buffer must hold at least one sample."""
    with pytest.raises(ValueError, match="at least 1"):
        SampleBuffer(0)


def test_xnames_are_valid_cray_names_and_unique() -> None:
    """x<cabinet>c<chassis>s<slot>b<board>n<node>, no duplicates across 10k nodes."""
    names = [xname(i) for i in range(10_000)]
    assert names[0] == "x1000c0s0b0n0"
    assert names[1] == "x1000c0s0b0n1"
    assert names[2] == "x1000c0s0b1n0"
    assert names[256] == "x1001c0s0b0n0"
    assert len(set(names)) == 10_000


def test_simulator_is_deterministic_per_seed_and_valid() -> None:
    """Same seed, same fleet; samples pass the collector's validation; power tracks load."""
    a = FleetSimulator(4, seed=11, interval_s=5)
    b = FleetSimulator(4, seed=11, interval_s=5)
    c = FleetSimulator(4, seed=12, interval_s=5)
    ts = 1_800_000_000.0
    assert a.sample(2, ts, 0) == b.sample(2, ts, 0)
    assert a.sample(2, ts, 1) != c.sample(2, ts, 1)
    for _topic, payload in a.tick(ts):
        sample = decode_sample(payload)
        assert len(sample.gpus) == 8
        for g in sample.gpus:
            assert g.power_interval_w is not None
            assert g.util_pct is not None
            assert 70.0 <= g.power_interval_w <= 700.0
            expected = 70.0 + 630.0 * g.util_pct / 100
            assert g.power_interval_w == pytest.approx(expected)


def test_simulated_energy_counter_integrates_power() -> None:
    """Energy grows by power x interval between two ticks of the same GPU."""
    sim = FleetSimulator(1, seed=3, interval_s=5)
    first = sim.sample(0, 1.8e9, 0).gpus[0]
    second = sim.sample(0, 1.8e9 + 5, 1).gpus[0]
    assert first.energy_j is not None
    assert second.energy_j is not None
    assert second.power_interval_w is not None
    assert second.energy_j - first.energy_j == pytest.approx(second.power_interval_w * 5, abs=0.2)
