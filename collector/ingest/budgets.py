"""Every node's ingest budget at the collector (:mod:`shared.budget`), and the credit it
gets back after a time the collector was not reading.

:meth:`NodeBudgets.take` runs before a message is decoded, so a node over its budget costs a
dictionary lookup and two comparisons a message.

Arrival times are what the budget measures, and they say when a message was *sent* only while
the collector keeps up with the broker. Whatever the broker queued for the collector's
persistent session while it was away (stopped, disconnected, or not reading because its
writer's queue was full) arrives at once when it reads again: an hour of a node's samples in
seconds. So the reader tells the budgets how long it was not reading (:meth:`credit`), and
for a while after (as long again, plus a minute, while the backlog drains) each node may
have sent that much more: its budget over the gap, which its agent paced itself under.
A node flooding gains that much once per gap, no more, and only within that while: each
gap's credit ends on its own time. (One window that every new gap extended, with all the
credit so far, never closed on a collector whose writer's queue filled for a moment every
minute or so; a week of 0.1 s waits every 30 s banked 2,016 s of credit, and a node could
then send 101,000 messages at once, not 500.)

The event loop held (a long garbage collection, a blocking write to a slow disk, the process
stopped with SIGSTOP: no disconnect) is such a time too: whatever the broker sent meanwhile
waits in the socket and the broker's queue, and arrives at once. A :class:`StallWatch` looks
at the clock every :data:`BEAT_S` (and its intake tells it each time it reads); a loop that
did not run for more than a beat longer than that was held, and the time past the beat is
credited like any other gap (so the credit is at most the stall, never more, and ends on
its own time). Shorter holds are left to the burst: ordinary work holds the loop for
milliseconds, and crediting them would open a credit for every busy second.

Nodes are kept while they have spent credit; an allowance that has earned everything back is
the same as a new one, and such are dropped whenever the table has doubled since the last
sweep and holds at least ``keep`` nodes (the validator's: the live view's ``max_nodes``), so
invented node names (those past ``max_nodes`` are refused before this) cannot grow it without
bound. Not below that: at the default budget a node's allowance earns its message back
1/50 s after it, so a fleet's allowances are nearly all idle between two of its samples;
swept at each doubling from 1,024 nodes, a drain of 12,500 nodes made a new allowance for
nearly every message and swept every ~1,000 (``NodeBudgets.take`` 11,500 instructions a
message instead of 8,000).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

from shared.budget import Allowance, NodeBudget
from shared.logging import get_logger

__all__ = ["BEAT_S", "NodeBudgets", "StallWatch"]

log = get_logger("budgets")

_DRAIN_EXTRA_S: Final = 60.0
"""How much longer than the gap itself its credit stays open while the backlog drains."""
_SWEEP_MIN: Final = 1024
"""No sweep of idle allowances below this many nodes."""
BEAT_S: Final = 0.5
"""How often a :class:`StallWatch` looks at the clock; and how much longer than that the loop
must have been held for the time to be credited."""
_MERGE_S: Final = 1.0
"""A credit that would end less than this after the newest one is added to it (a reader
waiting on a full queue credits each wait): a few dozen credits open at most, not one per
wait; each ends at most this much early."""


class NodeBudgets:
    """Each node's :class:`~shared.budget.Allowance` under one ``budget``; times are a
    monotonic clock's seconds."""

    def __init__(self, budget: NodeBudget, *, keep: int = _SWEEP_MIN) -> None:
        self.budget = budget
        self._nodes: dict[str, Allowance] = {}
        self._keep = max(keep, _SWEEP_MIN)
        """No sweep below this many nodes (see the module docstring)."""
        self._sweep_at = self._keep
        self._credit_s = 0.0
        """The credit of the gaps whose while is not over (seconds of budget)."""
        self._credits: list[list[float]] = []
        """Those gaps: a heap of ``[until, seconds]``."""
        self._credit_until = math.inf
        """When the first of them ends."""
        self._newest: list[float] | None = None
        """The credit given last (in the heap while its while is not over)."""

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def credit_s(self) -> float:
        """The credit open (seconds of budget each node may have sent more), as of the last
        take or credit."""
        return self._credit_s

    def take(self, node: str, nbytes: int, now: float) -> bool:
        """Spend one message of ``nbytes`` from ``node``'s budget; ``False``: over it."""
        if now >= self._credit_until:
            self._expire(now)
        floor = now - self._credit_s
        allowance = self._nodes.get(node)
        if allowance is None:
            if len(self._nodes) >= self._sweep_at:
                self._sweep(now)
            allowance = self._nodes[node] = Allowance(floor)
        return allowance.take(self.budget, nbytes, now, floor)

    def credit(self, gap_s: float, now: float) -> None:
        """The collector read nothing for ``gap_s`` until ``now``: every node may have sent
        its budget over that time more, while the backlog drains (see the module docstring)."""
        if gap_s <= 0:
            return
        self._expire(now)
        until = now + gap_s + _DRAIN_EXTRA_S
        credits, newest = self._credits, self._newest
        # Ending less than _MERGE_S after the newest, which is then open (a credit's while
        # is at least a minute): added to it, its end kept (a moving end would never come).
        if newest is not None and 0 <= until - newest[0] < _MERGE_S:
            newest[1] += gap_s
        else:
            self._newest = [until, gap_s]
            heapq.heappush(credits, self._newest)
        self._credit_s += gap_s
        self._credit_until = credits[0][0]

    def _expire(self, now: float) -> None:
        """Drop the credits whose while is over."""
        credits = self._credits
        while credits and credits[0][0] <= now:
            self._credit_s -= heapq.heappop(credits)[1]
        if not credits:
            self._credit_s, self._newest = 0.0, None  # no rounding left over
        self._credit_until = credits[0][0] if credits else math.inf

    def _sweep(self, now: float) -> None:
        self._nodes = {n: a for n, a in self._nodes.items() if not a.idle(now)}
        self._sweep_at = max(self._keep, 2 * len(self._nodes))


class StallWatch:
    """Credits ``budgets`` with each time the event loop was held (see the module docstring);
    ``intake`` names what reads into them, for the log."""

    def __init__(self, budgets: NodeBudgets, monotonic: Callable[[], float], intake: str) -> None:
        self._budgets = budgets
        self._monotonic = monotonic
        self._intake = intake
        self._seen = monotonic()
        self.credited_s = 0.0
        """Seconds of holds credited so far: an intake that credits a gap of its own (a lost
        connection, a wait) subtracts those credited within it, or they would count twice."""

    def seen(self) -> None:
        """The loop runs now: credit the time it did not, past a beat, if that was a stall."""
        now = self._monotonic()
        held_s = now - self._seen - BEAT_S
        self._seen = now
        if held_s >= BEAT_S:
            self._budgets.credit(held_s, now)
            self.credited_s += held_s
            log.info(
                "ingest_budget_credit",
                gap_s=round(held_s, 1),
                cause="loop_held",
                intake=self._intake,
            )

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Look at the clock every :data:`BEAT_S` while in the block."""
        self._seen = self._monotonic()
        beat = asyncio.ensure_future(self._beat())
        try:
            yield
        finally:
            beat.cancel()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            self.seen()
