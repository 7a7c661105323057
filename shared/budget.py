"""Each node's ingest budget: what the collector accepts from one node, and what its agent
paces itself under. One definition for both sides.

Measured (``bench/bench_fairness.py``): the collector validates a sample at roughly a
microsecond per 100 bytes, and up to ~12 us per KB for the costliest valid content (GPU
processes with every field); a node sending 65 of the largest valid samples (~1 MB) a
second took ~0.75 s of CPU a second and made every other node's samples wait seconds. A
real node sends one 2-16 KB sample per interval (5 s by default), plus its status and
inventory now and then. So each node gets a budget, in messages and in bytes a second, with
a burst: the collector refuses a message over it before decoding it (``rate_limited``,
counted and quarantined, acknowledged: a few microseconds), and the agent replays a
backlog at :data:`PACE_SHARE` of it, so a legitimate replay is never refused.

The budget is a token bucket, written as the Generic Cell Rate Algorithm (ITU-T I.371,
"virtual scheduling": one theoretical arrival time per dimension instead of a token count
and a refill timer): a message that would push a node's theoretical arrival time more than
``burst_s`` past now is over the budget. Idle time earns at most ``burst_s`` of credit.

Defaults: 50 messages and 512 KiB a second, 10 s of burst (500 messages, 5 MiB). An agent
replays at half of that, 25 samples a second: a day of backlog at the default 5 s interval
(17,280 samples) takes ~12 minutes, and its live samples, status and inventory still fit.
A node at the budget costs the collector at most ~6 ms of CPU a second.
"""

from __future__ import annotations

from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.schema import MAX_PAYLOAD_BYTES

__all__ = [
    "NODE_BURST_S",
    "NODE_BYTES_PER_S",
    "NODE_MESSAGES_PER_S",
    "PACE_SHARE",
    "Allowance",
    "NodeBudget",
]

NODE_MESSAGES_PER_S: Final = 50.0
"""Messages a second one node may send the collector, on average (all its topics)."""
NODE_BYTES_PER_S: Final = 512 * 1024
"""Payload bytes a second one node may send the collector, on average."""
NODE_BURST_S: Final = 10.0
"""Seconds of budget a node may send at once (after as long idle)."""
_SLACK_S: Final = 1e-9
"""Rounding room: twenty steps of 0.1 s must fit a 2 s burst (they sum to 2.0000000000000004)."""
PACE_SHARE: Final = 0.5
"""The share of the budget an agent replays its spool at: the rest leaves room for its live
samples, status and inventory, and for messages that the network bunches on their way."""


class NodeBudget(BaseModel):
    """One node's ingest budget (``ingest_budget`` in both the collector's and the agent's
    settings: give both the same values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages_per_s: float = Field(default=NODE_MESSAGES_PER_S, gt=0, le=1e6)
    """Messages a second, on average."""
    bytes_per_s: float = Field(default=NODE_BYTES_PER_S, gt=0, le=1e12)
    """Payload bytes a second, on average."""
    burst_s: float = Field(default=NODE_BURST_S, gt=0, le=86_400)
    """Seconds of budget a node may spend at once."""

    @model_validator(mode="after")
    def _largest_message_fits(self) -> Self:
        # The agent's pace (paced(): PACE_SHARE of this) must hold one largest message in
        # its burst too: a pace that could not, the agent refused at start with a traceback.
        paced_bytes = self.bytes_per_s * PACE_SHARE * self.burst_s
        if paced_bytes < MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"bytes_per_s x burst_s is {self.bytes_per_s * self.burst_s:,.0f} bytes, and "
                f"agents replay at {PACE_SHARE:g} of it ({paced_bytes:,.0f}), less than the "
                f"largest message a node may send ({MAX_PAYLOAD_BYTES:,}): raise bytes_per_s "
                "or burst_s"
            )
        if self.messages_per_s * PACE_SHARE * self.burst_s < 1:
            raise ValueError(
                f"messages_per_s x burst_s x {PACE_SHARE:g} (agents replay at that share) is "
                "less than one message: raise messages_per_s or burst_s"
            )
        return self

    def paced(self) -> NodeBudget:
        """What an agent replays at: :data:`PACE_SHARE` of this budget, the same burst (not
        checked again: the check of this budget is that its pace holds a largest message)."""
        return NodeBudget.model_construct(
            messages_per_s=self.messages_per_s * PACE_SHARE,
            bytes_per_s=self.bytes_per_s * PACE_SHARE,
            burst_s=self.burst_s,
        )


class Allowance:
    """One node's standing under a :class:`NodeBudget` (see the module docstring).

    ``floor``: the earliest time credit may be counted from; ``now`` normally, earlier after
    a time the collector was not reading (what the broker queued meanwhile arrives all at
    once, and was sent at its own pace).
    """

    __slots__ = ("_bytes_at", "_messages_at")

    def __init__(self, start: float) -> None:
        self._messages_at = start
        self._bytes_at = start

    def take(self, budget: NodeBudget, nbytes: int, now: float, floor: float) -> bool:
        """Spend one message of ``nbytes``; ``False`` (nothing spent) when over the budget."""
        m = max(self._messages_at, floor) + 1.0 / budget.messages_per_s
        b = max(self._bytes_at, floor) + nbytes / budget.bytes_per_s
        limit = now + budget.burst_s + _SLACK_S
        if m > limit or b > limit:
            return False
        self._messages_at, self._bytes_at = m, b
        return True

    def wait_s(self, budget: NodeBudget, nbytes: int, now: float) -> float:
        """Seconds until one message of ``nbytes`` fits the budget (0: now)."""
        m = max(self._messages_at, now) + 1.0 / budget.messages_per_s
        b = max(self._bytes_at, now) + nbytes / budget.bytes_per_s
        return max(0.0, max(m, b) - now - budget.burst_s - _SLACK_S)

    def idle(self, now: float) -> bool:
        """Whether a new allowance would be the same (all credit earned back)."""
        return self._messages_at <= now and self._bytes_at <= now
