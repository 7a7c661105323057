"""Per node, the highest contiguous sequence the store holds: what the agent may forget.

The writer feeds :meth:`Watermarks.note` the sample rows of every committed batch (a
duplicate the store ignored is stored too), so the state here is never ahead of the store.
Every ``interval_s`` the writer takes the nodes whose watermark changed
(:meth:`Watermarks.due`), writes them to the ``watermarks`` table, and only then publishes
them, retained, each on its node's topic (:func:`shared.topics.watermark_topic`): at most
one message per node per interval, whatever the sample rate. At start the table (and the
samples stored above a hole) are read back (:meth:`Watermarks.restore`).

Contiguity is counted within the node's newest agent epoch, from ``seq`` 0: ``seq`` is the
highest number such that every sample of the epoch up to it is stored (-1: not even 0 yet),
``top`` the highest stored. A node's newer epoch starts a new watermark (the agent sends an
older epoch's samples before the newer ones, so those arrived first). A jump past
``seq + 1`` leaves a hole: the samples above it are kept as ranges, and ``top > seq`` tells
the agent to send again what it has past ``seq``. A hole that is not filled within
``hole_s`` of the first sample stored above it is given up (the agent no longer has those
samples: dropped from its full spool, or cut short by a crash), so a lost sample holds a
node's watermark back for ``hole_s``, not forever. What a given-up hole counts as missing
(:attr:`Watermarks.missing_given_up`) is bounded as the live view's gaps are
(:func:`collector.nodefacts.gap_missing`): at most the intervals that passed on the node's
clock between the samples either side of it, so a node that sends ``seq`` 2**62 and then 0
adds what it could have numbered in that time, not 2**62; with no sample known below the
hole (an epoch's first samples lost, or a range read back at start) nothing bounds the time,
and the hole counts the one sample it surely lacks.

Each watermark also names the node's newest sample by ``(epoch, seq)``, the one at ``top``
(its time ``top_ts_ms``), and the newest time of any sample taken in (``seen_ts_ms``): the
store's reads show the node's newest sample from these (:mod:`collector.store.watermarks`),
decided by the rule the live view follows (the same epoch by ``seq``, another by
:func:`collector.nodefacts.agent_restarted`), in the order the samples were stored.

Bounded: at most ``max_nodes`` nodes and ``max_ranges`` ranges per node (past that the
lowest hole is given up at once).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from collector.live import DEFAULT_MAX_NODES
from collector.nodefacts import agent_restarted, gap_missing
from collector.store.db import SampleRow
from collector.store.watermarks import WatermarkRow

__all__ = ["Watermarks"]

_MAX_RANGES: Final = 64


@dataclass(slots=True)
class _Range:
    """A run of stored seqs above a hole."""

    first: int
    last: int
    since_ms: int
    """When the first of them was stored (collector clock)."""
    first_ts_ms: int | None
    last_ts_ms: int | None
    """Node clock: the samples at ``first`` and ``last`` (``None``: read back at start)."""
    interval_s: float
    """The interval of the sample at ``first``: the hole below it is counted in it."""


@dataclass(slots=True)
class _Mark:
    epoch: int
    seq: int
    top: int
    ts_ms: int
    """The newest sample's time of this epoch (node clock): a lower epoch with newer samples
    is an agent whose spool (and epoch counter) was wiped."""
    top_ts_ms: int | None
    """The time of the sample at ``top`` (node clock; ``None``: not known): the node's
    newest sample by ``(epoch, seq)``, which the store's reads show (:class:`WatermarkRow`)."""
    seen_ts_ms: int
    """The newest time of any sample taken in for the node, every epoch (node clock)."""
    seq_ts_ms: int | None = None
    """The time of the sample at ``seq`` (node clock; ``None``: not known)."""
    ranges: list[_Range] = field(default_factory=list)
    """Stored runs above a hole, ascending."""
    prior: tuple[int, int, int] | None = None
    """The run this one took over from, its epoch, top and newest time (in memory only):
    :func:`~collector.nodefacts.agent_restarted`'s ``prior``."""


class Watermarks:
    """Every node's watermark, fed by committed rows; see the module docstring."""

    def __init__(
        self,
        *,
        hole_s: float,
        max_ranges: int = _MAX_RANGES,
        max_nodes: int = DEFAULT_MAX_NODES,
    ) -> None:
        self.hole_ms = round(hole_s * 1000)
        self.max_ranges = max(1, max_ranges)
        self.max_nodes = max_nodes
        self._marks: dict[str, _Mark] = {}
        self._dirty: set[str] = set()
        self._round: list[str] = []
        """The nodes of the round being written and published, not yet taken."""
        self._holed: set[str] = set()
        self.holes_given_up = 0
        """Holes skipped because nothing filled them in ``hole_s`` (since start)."""
        self.missing_given_up = 0
        """Samples in those holes."""

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, node: str) -> tuple[int, int, int] | None:
        """``(epoch, seq, top)`` of ``node`` as it stands, or ``None``."""
        m = self._marks.get(node)
        return None if m is None else (m.epoch, m.seq, m.top)

    def restore(
        self, rows: Iterable[WatermarkRow], above: Iterable[tuple[str, int]], now: float
    ) -> None:
        """Start from the table (``rows``) and the seqs stored above their holes (``above``,
        ordered by node and seq). Nothing is due after this: the broker has them retained."""
        now_ms = round(now * 1000)
        for r in rows:
            # A row from before seen_ts_ms: its epoch's newest time is what is known.
            seen = r.ts_ms if r.seen_ts_ms is None else r.seen_ts_ms
            self._marks[r.node] = _Mark(
                r.epoch, r.seq, r.top, r.ts_ms, r.top_ts_ms, seen, _seq_ts(r)
            )
        for node, seq in above:
            m = self._marks.get(node)
            if m is not None and seq > m.seq + 1:
                self._add_range(node, m, seq, now_ms, ts_ms=None, interval_s=1.0)
            elif m is not None and seq == m.seq + 1:
                m.seq, m.seq_ts_ms = seq, None
                self._absorb(node, m)

    def note(self, rows: Sequence[SampleRow], now: float) -> None:
        """Sample rows just committed (stored, or already there)."""
        marks = self._marks
        dirty = self._dirty
        now_ms = -1
        for r in rows:
            epoch = r.epoch
            if epoch is None:  # an agent before epochs: it does not read watermarks either
                continue
            node, seq = r.node, r.seq
            m = marks.get(node)
            if m is not None and epoch == m.epoch:
                last = m.seq
                if seq == last + 1:
                    m.seq, m.seq_ts_ms = seq, r.ts_ms
                    if m.ranges:
                        self._absorb(node, m)
                elif seq > last + 1:
                    if now_ms < 0:
                        now_ms = round(now * 1000)
                    if not self._add_range(
                        node, m, seq, now_ms, ts_ms=r.ts_ms, interval_s=r.interval_s
                    ):
                        continue  # already stored above the hole: nothing new
                else:
                    continue  # a duplicate
                ts_ms = r.ts_ms
                if seq > m.top:
                    m.top, m.top_ts_ms = seq, ts_ms
                # Compares, not max(): this loop runs per stored sample; seen_ts_ms is never
                # below ts_ms.
                if ts_ms > m.ts_ms:
                    m.ts_ms = ts_ms
                    if ts_ms > m.seen_ts_ms:  # noqa: PLR1730
                        m.seen_ts_ms = ts_ms
                dirty.add(node)
            elif m is None or agent_restarted(
                epoch, r.ts_ms, m.epoch, m.ts_ms, seq=seq, prior=m.prior
            ):
                # A new node, the agent's next start, or an agent that counts epochs from 0
                # again (its spool was wiped): newer samples under a lower epoch.
                if m is None and len(marks) >= self.max_nodes:
                    continue
                seen = r.ts_ms if m is None else max(m.seen_ts_ms, r.ts_ms)
                prior = None if m is None else (m.epoch, m.top, m.ts_ms)
                m = marks[node] = _Mark(epoch, -1, seq, r.ts_ms, r.ts_ms, seen, prior=prior)
                self._holed.discard(node)
                if seq == 0:
                    m.seq, m.seq_ts_ms = 0, r.ts_ms
                else:
                    if now_ms < 0:
                        now_ms = round(now * 1000)
                    self._add_range(node, m, seq, now_ms, ts_ms=r.ts_ms, interval_s=r.interval_s)
                dirty.add(node)
            # else: a late sample of an older epoch (its watermark was sent with that epoch)

    def due(self, now: float, most: int | None = None) -> list[WatermarkRow]:
        """The nodes whose watermark changed, as rows to write and then publish.

        A round takes every node changed since the last round began (holes older than
        ``hole_s`` given up first); with ``most``, one call returns at most that many of
        them and the next calls the rest (:attr:`pending`), so the writer can commit them
        in short transactions with sample batches between; a node is in a round once."""
        if not self._round:
            now_ms = round(now * 1000)
            if self._holed:
                for node in list(self._holed):
                    m = self._marks[node]
                    while m.ranges and now_ms - m.ranges[0].since_ms >= self.hole_ms:
                        self._give_up(node, m)
                        self._dirty.add(node)
            self._round = list(self._dirty)
            self._dirty.clear()
        left = self._round
        cut = 0 if most is None else max(0, len(left) - most)
        taken = left[cut:]
        del left[cut:]
        marks = self._marks
        out = []
        for node in taken:
            mark = marks.get(node)
            if mark is not None:
                out.append(
                    WatermarkRow(
                        node,
                        mark.epoch,
                        mark.seq,
                        mark.top,
                        mark.ts_ms,
                        mark.top_ts_ms,
                        mark.seen_ts_ms,
                    )
                )
        return out

    @property
    def pending(self) -> int:
        """Nodes of the current round not yet taken by :meth:`due`."""
        return len(self._round)

    def retry(self, rows: Iterable[WatermarkRow]) -> None:
        """These could not be published: offer them again at the next :meth:`due`."""
        self._dirty.update(r.node for r in rows)

    def forget(self, node: str) -> None:
        """Drop ``node`` (decommissioned)."""
        self._marks.pop(node, None)
        self._dirty.discard(node)
        self._holed.discard(node)

    # -- internals

    def _add_range(
        self,
        node: str,
        m: _Mark,
        seq: int,
        now_ms: int,
        *,
        ts_ms: int | None,
        interval_s: float,
    ) -> bool:
        """Note ``seq`` (past ``m.seq + 1``; stamped ``ts_ms`` on the node's clock, its
        ``interval_s``) as stored; False if it already was."""
        ranges = m.ranges
        i = len(ranges)
        while i and ranges[i - 1].first > seq:
            i -= 1
        # ranges[i - 1] starts at or below seq, ranges[i] above it
        if i and ranges[i - 1].last >= seq:
            return False
        if i and ranges[i - 1].last == seq - 1:
            below = ranges[i - 1]
            below.last, below.last_ts_ms = seq, ts_ms
            if i < len(ranges) and ranges[i].first == seq + 1:
                below.last, below.last_ts_ms = ranges[i].last, ranges[i].last_ts_ms
                del ranges[i]
        elif i < len(ranges) and ranges[i].first == seq + 1:
            above = ranges[i]
            above.first, above.first_ts_ms, above.interval_s = seq, ts_ms, interval_s
        else:
            ranges.insert(i, _Range(seq, seq, now_ms, ts_ms, ts_ms, interval_s))
        self._holed.add(node)
        while len(ranges) > self.max_ranges:
            self._give_up(node, m)
        return True

    def _absorb(self, node: str, m: _Mark) -> None:
        """Move ``seq`` through the ranges that now touch it."""
        ranges = m.ranges
        while ranges and ranges[0].first <= m.seq + 1:
            if ranges[0].last > m.seq:
                m.seq, m.seq_ts_ms = ranges[0].last, ranges[0].last_ts_ms
            del ranges[0]
        if not ranges:
            self._holed.discard(node)

    def _give_up(self, node: str, m: _Mark) -> None:
        """Move ``seq`` past the lowest hole, counting what it held (see the module
        docstring)."""
        above = m.ranges[0]
        before, after = m.seq_ts_ms, above.first_ts_ms
        elapsed_s = 0.0 if before is None or after is None else (after - before) / 1000
        self.holes_given_up += 1
        self.missing_given_up += gap_missing(m.seq, above.first, elapsed_s, above.interval_s)
        m.seq = above.first - 1
        self._absorb(node, m)


def _seq_ts(row: WatermarkRow) -> int | None:
    """The node-clock time of the sample at ``row.seq``, as far as the row tells it: the
    sample at ``top`` when nothing is above ``seq`` (before ``top_ts_ms``, the epoch's newest
    time, the same unless the node's clock stepped back)."""
    if row.seq != row.top or row.seq < 0:
        return None
    return row.ts_ms if row.top_ts_ms is None else row.top_ts_ms
