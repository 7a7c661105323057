"""The agent's sampling schedule: a late tick is skipped, never made up in a burst."""

from __future__ import annotations

import pytest

from agent.service import next_tick
from agent.settings import AgentSettings


@pytest.mark.parametrize(
    ("scheduled", "now", "expected"),
    [
        (10.0, 9.2, (10.0, 0)),  # on time: wait for it
        (10.0, 10.0, (10.0, 0)),  # due now: take it now
        (10.0, 10.1, (15.0, 1)),  # a little late: the next grid tick, one skipped
        (10.0, 24.9, (25.0, 3)),  # suspended for three intervals: 10, 15, 20 skipped
        (10.0, 25.0, (30.0, 4)),  # exactly on a later grid tick: that one is past too
    ],
)
def test_a_late_tick_moves_to_the_next_grid_tick_in_the_future(
    scheduled: float, now: float, expected: tuple[float, int]
) -> None:
    """Ticks stay on the grid start + k x interval; the ones already past are skipped
    (counted) instead of sampled back to back to catch up."""
    assert next_tick(scheduled, now, 5.0) == expected


def test_after_a_long_stall_only_one_sample_is_due() -> None:
    """However long the stall, the loop takes one sample for it, then waits a full step."""
    tick, skipped = next_tick(100.0, 100.0 + 3600.0 + 0.5, 5.0)
    assert skipped == 721
    assert tick - (100.0 + 3600.0 + 0.5) == pytest.approx(4.5)
    assert next_tick(tick + 5.0, tick + 0.01, 5.0) == (tick + 5.0, 0)


@pytest.mark.parametrize(
    ("buffer_s", "interval_s", "samples"),
    [(3600.0, 5.0, 720), (3600.0, 10.0, 360), (60.0, 7.0, 8), (60.0, 30.0, 2), (7299.0, 3600.0, 2)],
)
def test_buffer_holds_buffer_s_of_sampling_at_the_configured_interval(
    buffer_s: float, interval_s: float, samples: int
) -> None:
    """buffer_samples is buffer_s / interval_s, rounded down (at least two: the floor of
    buffer_s)."""
    settings = AgentSettings(node_id="n1", buffer_s=buffer_s, interval_s=interval_s)
    assert settings.buffer_samples == samples
