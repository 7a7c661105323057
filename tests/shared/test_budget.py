"""A node's ingest budget (shared.budget): the allowance both sides compute."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.budget import PACE_SHARE, Allowance, NodeBudget
from shared.schema import MAX_PAYLOAD_BYTES

BUDGET = NodeBudget(messages_per_s=10, bytes_per_s=1_000_000, burst_s=2.0)


def test_a_burst_of_rate_times_burst_s_messages_passes_then_one_a_period() -> None:
    """10 messages/s with 2 s of burst: 20 at once pass, the 21st not; 0.1 s later one more."""
    a = Allowance(100.0)
    assert [a.take(BUDGET, 100, 100.0, 100.0) for _ in range(21)] == [True] * 20 + [False]
    assert not a.take(BUDGET, 100, 100.05, 100.05)
    assert a.take(BUDGET, 100, 100.1, 100.1)
    assert not a.take(BUDGET, 100, 100.1, 100.1)


def test_bytes_are_budgeted_apart_from_messages() -> None:
    """1 MB/s with 2 s of burst: two 1 MB messages pass at once, a third waits a second."""
    a = Allowance(0.0)
    big = 1_000_000
    assert a.take(BUDGET, big, 0.0, 0.0)
    assert a.take(BUDGET, big, 0.0, 0.0)
    assert not a.take(BUDGET, big, 0.0, 0.0)
    assert a.wait_s(BUDGET, big, 0.0) == pytest.approx(1.0)
    assert a.take(BUDGET, big, 1.0, 1.0)


def test_idle_time_earns_at_most_the_burst() -> None:
    """After an hour idle a node still gets only its burst, not an hour of budget."""
    a = Allowance(0.0)
    now = 3600.0
    passed = sum(a.take(BUDGET, 10, now, now) for _ in range(1000))
    assert passed == 20


def test_a_floor_in_the_past_credits_the_budget_since_then() -> None:
    """Counting from 60 s ago (the collector was away): 60 s of budget plus the burst pass."""
    a = Allowance(0.0)
    now = 1000.0
    passed = sum(a.take(BUDGET, 10, now, now - 60) for _ in range(1000))
    assert passed == 620


def test_a_refused_message_spends_nothing() -> None:
    """Refusals do not push the node further behind: a flood's refused messages are free."""
    a = Allowance(0.0)
    for _ in range(20):
        assert a.take(BUDGET, 10, 0.0, 0.0)
    for _ in range(10_000):
        assert not a.take(BUDGET, 10, 0.0, 0.0)
    assert a.take(BUDGET, 10, 0.1, 0.1)


def test_the_pace_is_a_share_of_the_budget_with_the_same_burst() -> None:
    """What an agent replays at."""
    pace = BUDGET.paced()
    assert pace.messages_per_s == BUDGET.messages_per_s * PACE_SHARE
    assert pace.bytes_per_s == BUDGET.bytes_per_s * PACE_SHARE
    assert pace.burst_s == BUDGET.burst_s


def test_a_budget_that_cannot_pass_the_largest_message_is_refused() -> None:
    """bytes_per_s x burst_s below MAX_PAYLOAD_BYTES: the error names both and the fix."""
    with pytest.raises(ValidationError, match=r"raise bytes_per_s or burst_s"):
        NodeBudget(bytes_per_s=MAX_PAYLOAD_BYTES / 10, burst_s=5)
    with pytest.raises(ValidationError, match=r"less than one message"):
        NodeBudget(messages_per_s=0.5, bytes_per_s=2 * MAX_PAYLOAD_BYTES, burst_s=1)


def test_a_budget_whose_pace_cannot_pass_the_largest_message_is_refused() -> None:
    """The agent paces at half the budget: a budget whose half cannot hold the largest
    message (or one message) is refused where it is read, as one line naming the fix; it
    was accepted, and the agent then died at start with a traceback (paced() refused it)."""
    with pytest.raises(ValidationError, match=r"agents replay at 0.5 of it"):
        NodeBudget(bytes_per_s=MAX_PAYLOAD_BYTES * 0.15, burst_s=10)  # 1.5 MB, half 0.75
    with pytest.raises(ValidationError, match=r"less than one message"):
        NodeBudget(messages_per_s=0.1, bytes_per_s=MAX_PAYLOAD_BYTES, burst_s=10)
    edge = NodeBudget(messages_per_s=0.2, bytes_per_s=MAX_PAYLOAD_BYTES * 0.2, burst_s=10)
    pace = edge.paced()  # any budget accepted has a pace
    a = Allowance(0.0)
    assert a.take(pace, MAX_PAYLOAD_BYTES, 0.0, 0.0)  # a largest message fits its burst
    assert a.wait_s(pace, MAX_PAYLOAD_BYTES, 0.0) == pytest.approx(10.0)
    with pytest.raises(ValidationError, match=r"greater than 0"):
        NodeBudget(messages_per_s=0)
