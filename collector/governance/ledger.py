"""The usage ledger: per hour and node, who held it (lease, tenant, pool) and what it did.

:func:`ledger_rows` is pure: from one hour's 1-hour rollups (:mod:`collector.store.rollups`),
the leases (:class:`~collector.governance.state.Governance`, as the store's governance read
returns them) and each node's GPUs, it makes the hour's rows. A lease that held a node for
part of the hour (leases start and end at midnight in their own zone; a node joins or
leaves a lease at the instant of the command, :class:`~collector.store.ledger.LeaseHistory`)
gets that fraction of the hour: of the allocated GPU-hours exactly, and of what the node
measured in the hour (busy and utilisation-weighted GPU-hours, energy) in proportion; the
rest of the hour is a row of no lease (``tenant`` NULL), so the tenants' rows and the
unleased rows add up to the fleet's. A row's pool is the lease's pool, else the pool the
node was in at the start of the hour (:class:`~collector.store.ledger.PoolHistory`: a node
moved at 10:20 counts in its new pool from 11:00), not its pool now.

* allocated GPU-hours: the node's GPUs (:func:`collector.nodefacts.gpu_count`: its
  inventory's, else what its samples reported in that hour, or for an hour it was silent
  in, in its last report before: :class:`~collector.store.ledger.GpuHistory`) x the hours
  the lease held it, whether the node reported or not, in the hours this job
  computed (``collector usage`` bills each lease's whole contract instead, hours no
  collector ran included: :func:`collector.governance.billing.allocated_days`);
* busy GPU-hours: GPUs at or above ``governance.busy_util_pct`` x their time, as rolled up;
* used GPU-hours: GPUs x mean utilisation x time (the quotas' measured basis);
* GPU energy from the GPUs' interval power (energy counter), CPU energy from RAPL;
* node energy: ``measured`` where the node reported its input power (BMC/PSUs,
  ``Sample.node_power_w``) in every sample of the hour: the rollups' power x interval.
  Else the fallback: ``model``, the capacity plan's model of the node type
  (:meth:`collector.capacity.node.NodeModel.draw_of`, the same as the live picture) at
  the hour's mean GPU and CPU power, or without one ``gpu+cpu``, the two measured parts
  alone. An hour the node reported its power for only part of (a BMC that stopped
  answering, a new agent) is measured over the seconds it covered plus the fallback over
  the rest (the fallback's hour scaled by the share not covered), labelled
  ``measured+model`` or ``measured+gpu+cpu``.

:class:`LedgerJob` is an evaluator cycle: every ``rollups.ledger_interval_s`` it recomputes
the hours the writer marked dirty (their rollups moved) and those since its last run, and
returns a record that replaces their rows, a few hundred at a time
(:class:`~collector.store.ledger.LedgerPart`: what a reader may see meanwhile is said
there; a stop between parts leaves the hour marked). So a collector outage loses nothing
the rollups hold: an agent's spool replayed late lands in its hours, which are then
recomputed; the hours leased nodes were silent in are caught up a few runs at a time
(:class:`LedgerJob` says how); a restart recomputes what was marked and not yet done.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.governance.billing import in_force
from collector.governance.state import Governance
from collector.governance.usage import nodes_leases_held
from collector.nodefacts import gpu_count
from collector.store.ledger import (
    PART_ROWS,
    LeaseHistory,
    LedgerPart,
    LedgerRow,
    dirty_hours,
    gpu_history,
    lease_history,
    ledger_at,
    ledger_parts,
    pool_history,
    write_ledger_part,
)
from collector.store.rollups import HOUR, hour_rows
from collector.store.usage import node_hardware
from shared.clock import Clock
from shared.logging import get_logger
from shared.units import J_PER_KWH

if TYPE_CHECKING:
    from collector.capacity.node import NodeModel
    from collector.live import LiveView
    from collector.store.db import Store
    from collector.store.reader import StoreReader

__all__ = ["LedgerJob", "LedgerRecord", "NodeHour", "ledger_rows", "node_energy", "node_hours"]

log = get_logger("ledger")

FREE: Final = "free"
"""The pool of a node in none (:data:`collector.store.pools.FREE`)."""


class NodeHour(NamedTuple):
    """One node's 1-hour rollup, as the ledger reads it (a named tuple: :func:`node_hours`
    makes one per node and hour read, 12,500 an hour at the stall bench's scale, each
    through ``tuple.__new__``; a frozen dataclass set its 13 fields one by one, ~40 % of
    the ledger's CPU)."""

    node: str
    hour: int
    seconds: float
    gpus: int
    gpu_s: float
    util_gpu_s: float
    busy_gpu_s: float
    gpu_energy_j: float
    cpu_energy_j: float
    gpu_w: float | None
    """Mean GPU power (all GPUs) over its samples."""
    cpu_w: float | None
    node_s: float = 0.0
    """Seconds of the hour covered by samples with the node's input power."""
    node_energy_j: float = 0.0
    """The node's input power x interval over those seconds."""


def node_hours(rows: Iterable[Any]) -> list[NodeHour]:
    """:class:`NodeHour` of the rows of :func:`collector.store.rollups.hour_rows`."""
    make = NodeHour._make
    return [
        make(
            (
                r[0],
                int(r[1]),
                float(r[2]),
                int(r[3]),
                float(r[4]),
                float(r[5]),
                float(r[6]),
                float(r[7]),
                float(r[8]),
                r[9] / r[10] if r[10] else None,
                r[11] / r[12] if r[12] else None,
                float(r[14]),
                float(r[15]),
            )
        )
        for r in rows
    ]


_COVERED: Final = 0.999
"""Input power over this share of an hour's seconds counts as the whole hour measured
(rounding of float sums, not a missing sample: one missing 5 s sample is 0.14 %)."""


def node_energy(r: NodeHour, model: NodeModel | None) -> tuple[float, str]:
    """(kWh, basis) a node drew in its hour (see the module docstring)."""
    if model is not None:
        draw_w, _ = model.draw_of(r.gpu_w or 0.0, r.gpus, r.cpu_w)
        fallback, basis = draw_w * r.seconds / J_PER_KWH, "model"
    else:
        fallback, basis = (r.gpu_energy_j + r.cpu_energy_j) / J_PER_KWH, "gpu+cpu"
    if r.node_s <= 0 or r.seconds <= 0:
        return fallback, basis
    measured = r.node_energy_j / J_PER_KWH
    covered = min(r.node_s / r.seconds, 1.0)
    if covered >= _COVERED:
        return measured, "measured"
    return measured + fallback * (1.0 - covered), f"measured+{basis}"


_NO_MOVES: Final = LeaseHistory()
_Share = tuple[str, str | None, str | None, float]
"""(lease name or '', tenant, the lease's pool, hours held)."""


def _holders(
    gov: Governance, start: float, end: float, members: LeaseHistory
) -> dict[str, list[_Share]]:
    """Node -> (lease, tenant, pool, hours held) of each lease holding it in [start, end):
    while the lease was in force and the node in it (``members``)."""
    out: dict[str, list[_Share]] = {}
    for lease in gov.leases:
        lo, hi = in_force(lease.interval(), start, end)
        if hi <= lo:
            continue
        if not members.moved(lease.name):  # most leases: their nodes now, all along
            share = (lease.name, lease.tenant, lease.pool, (hi - lo) / 3600.0)
            for node in lease.nodes:
                out.setdefault(node, []).append(share)
            continue
        now = set(lease.nodes)
        for node in members.nodes(lease.name, lease.nodes):
            held = sum(b - a for a, b in members.spans(lease.name, node, node in now, lo, hi))
            if held > 0:
                out.setdefault(node, []).append(
                    (lease.name, lease.tenant, lease.pool, held / 3600.0)
                )
    return out


def ledger_rows(
    hour: int,
    rollups: Sequence[NodeHour],
    gov: Governance,
    *,
    gpus: Mapping[str, int],
    reported: Mapping[str, int] | None = None,
    pools: Mapping[str, str],
    model: Callable[[str], NodeModel | None] | None = None,
    now: float = math.inf,
    members: LeaseHistory | None = None,
) -> list[LedgerRow]:
    """The ledger rows of ``hour`` (see the module docstring). ``gpus``: node -> its GPUs
    by its inventory; ``reported``: node -> the GPUs it counts in the hour by its samples,
    for nodes with no inventory (:meth:`~collector.store.ledger.GpuHistory.at_hour`: an
    hour it was silent in too; a node in neither: its rollup's in the hour); ``pools``:
    node -> its pool during the hour (its pool at the hour's start,
    :class:`~collector.store.ledger.PoolHistory`); ``model``: node -> its type's power
    model (``None``: no capacity plan, or its type is unknown); ``now``: the hour counts
    only up to it (the current hour is allocated as far as it has gone); ``members``: the
    leases' node moves during the hour (``None``: none, each lease held the nodes it holds
    now)."""
    end = min(hour + HOUR, now)
    span = max(end - hour, 0.0) / 3600.0
    holders = _holders(gov, hour, end, members or _NO_MOVES)
    by_node = {r.node: r for r in rollups}
    out: list[LedgerRow] = []
    counted = reported or {}
    for node in sorted(by_node.keys() | holders.keys()):
        r = by_node.get(node)
        n_gpus = gpu_count(gpus.get(node), counted.get(node, r.gpus if r is not None else None))
        shares = list(holders.get(node, ()))
        rest = span - sum(s[3] for s in shares)
        if r is not None and (rest > 1e-9 or not shares):
            shares.append(("", None, None, max(rest, 0.0)))
        measured_span = sum(s[3] for s in shares) or 1.0
        if r is not None:  # the node's hour, shared below
            node_kwh_all, basis = node_energy(r, None if model is None else model(node))
        for lease, tenant, pool, held in shares:
            f = held / measured_span
            if r is None:
                measured = (0.0, 0.0, 0.0, 0.0, 0.0)
                node_kwh, basis = None, "none"
            else:
                gpu_kwh = r.gpu_energy_j / J_PER_KWH * f
                cpu_kwh = r.cpu_energy_j / J_PER_KWH * f
                measured = (
                    r.busy_gpu_s / 3600.0 * f,
                    r.util_gpu_s / 3600.0 * f,
                    r.gpu_s / 3600.0 * f,
                    gpu_kwh,
                    cpu_kwh,
                )
                node_kwh = node_kwh_all * f
            out.append(
                LedgerRow(
                    hour,
                    node,
                    lease,
                    tenant,
                    pool or pools.get(node, FREE),
                    n_gpus,
                    held,
                    n_gpus * held if lease else 0.0,
                    *measured,
                    node_kwh,
                    basis,
                )
            )
    return out


def _hour_rows(
    hour: int,
    stored: Iterable[Any],
    gov: Governance,
    *,
    gpus: Mapping[str, int],
    reported: Mapping[str, int],
    pools: Mapping[str, str],
    model: Callable[[str], NodeModel | None] | None,
    now: float,
    members: LeaseHistory,
) -> list[LedgerRow]:
    """:func:`ledger_rows` of the hour's stored rollup rows (in the job's worker thread)."""
    return ledger_rows(
        hour,
        node_hours(stored),
        gov,
        gpus=gpus,
        reported=reported,
        pools=pools,
        model=model,
        now=now,
        members=members,
    )


@dataclass(slots=True)
class LedgerRecord:
    """Recomputed ledger hours, for the writer: written a part at a time
    (:class:`~collector.store.ledger.LedgerPart`), sample batches committed between parts."""

    parts: list[LedgerPart]
    name: str = "ledger"
    written: int = 0
    """Parts committed so far."""

    async def write(self, store: Store) -> bool:
        """Write the next part (replace some nodes' rows of an hour; with an hour's last,
        clear its mark); return whether parts remain. A part refused or unavailable is
        written again whole (its transaction rolled back), and writing one twice changes
        nothing."""
        if self.written < len(self.parts):
            await write_ledger_part(store, self.parts[self.written])
            self.written += 1
        return self.written < len(self.parts)


class LedgerJob:
    """Recomputes dirty ledger hours every ``interval_s``; an evaluator cycle.

    Each run computes the hours the writer marked dirty and every hour since the ledger's
    time (``ledger_at``), marked or not: a lease holds its nodes, and is allocated their
    GPU-hours, whether any node reported in the hour or not. After an outage that is many
    hours, as far back as the 1-hour rollups go (``retention_s``: older hours have nothing
    left to read, and the ledger's retention deletes them). A run computes at most
    ``max_hours`` of them: those since the ledger's time first, oldest first, then the marked
    hours before it, in turn (each run goes on where the last one left them), and moves
    ``ledger_at`` only through the hours it wrote (to the end of the last one, or to now
    when it wrote all of them); while hours since the ledger's time remain, the next run
    comes after ``catch_up_s``, once this run's record is written (or, should the writer
    drop it, after ``interval_s``); marked hours left over wait for the next run as usual.
    So a restart or a collector outage loses nothing while the rollups hold the hours, and
    a node whose late samples mark old hours again and again holds nothing back, nor makes
    the job run more often.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        retention_s: float,
        interval_s: float = 300.0,
        first_interval_s: float | None = None,
        catch_up_s: float = 5.0,
        governance: Callable[[], Governance],
        model: Callable[[str], NodeModel | None] | None = None,
        max_hours: int = 48,
    ) -> None:
        """``retention_s``: how long the 1-hour rollups are kept (``rollups.retention_1h_s``),
        the oldest hour a catch-up goes back to."""
        self.name = "ledger"
        self._first_interval_s = interval_s if first_interval_s is None else first_interval_s
        self.interval_s = self._first_interval_s
        self._interval_s = interval_s
        self._catch_up_s = min(catch_up_s, interval_s)
        self._retention_s = retention_s
        self._clock = clock
        self._governance = governance
        self._model = model
        self._max_hours = max_hours
        """Hours recomputed per run at most (oldest first): a long replay or outage is
        caught up over several runs, each short."""
        self._next_marked = 0
        """The marked hour before the ledger's time whose turn is next (see :meth:`_hours`)."""
        self._behind: tuple[LedgerRecord, float] | None = None
        """The record of a run that left hours to do, and when it was made (monotonic)."""
        self.progressed_at: float | None = None
        """When the running run last read or computed something (clock monotonic): the
        evaluator's liveness (:class:`collector.evaluate.Progressing`): a catch-up run of
        many hours is busy, not stuck, while its hours keep coming."""
        self.runs = 0

    def new_term(self) -> None:
        """A term of leadership begins: start afresh, as a new process would (as the
        governance job does, :meth:`~collector.governance.job.GovernanceJob.new_term`). The
        last term's record of a run that left hours to do is no longer being written (that
        term's writer is gone): waited for, the first run of this one computed nothing for a
        whole ``interval_s``. The hours come from the store (``ledger_at``, the marks). The
        term's first run comes after ``first_interval_s``, as a new process's (a term's
        evaluator waits ``interval_s`` first), not after the last term's last interval."""
        self._behind = None
        self._next_marked = 0
        self.interval_s = self._first_interval_s

    def _hours(
        self, dirty: Sequence[tuple[int, int]], last: float | None, now: float
    ) -> tuple[list[int], float | None, bool]:
        """(the hours this run computes, the ledger's time once they are written or
        ``None`` if it stays, whether hours remain for the next runs)."""
        current = int(now) // HOUR * HOUR
        # The oldest hour the rollups' retention keeps: it deletes the buckets that began
        # before now - retention_s (Store.delete_rollups_older_than), the ledger's hours too.
        oldest = math.ceil((now - self._retention_s) / HOUR) * HOUR
        # A ledger time ahead of the clock (the clock set back) starts again from now.
        first = current if last is None else min(max(int(last) // HOUR * HOUR, oldest), current)
        run = range(first, current + 1, HOUR)
        # The hours since the ledger's time first, oldest first: those written are the run's
        # start, so the ledger holds them and the next run begins after the last. Nothing a
        # node sends makes the run longer.
        since = list(run[: self._max_hours])
        until = None if not since else now if since[-1] == current else since[-1] + HOUR
        # Then the marked hours before it, in turn from where the last run left them: a node
        # whose late samples mark the same old hours before every run cannot keep the
        # ledger's time, or the other marked hours, from their turn.
        marked = sorted({h for h, _ in dirty if h < first})
        turn = bisect.bisect_left(marked, self._next_marked)
        others = (marked[turn:] + marked[:turn])[: self._max_hours - len(since)]
        if others:
            self._next_marked = others[-1] + HOUR
        # Only the ledger's time being behind hurries the next run: marked hours left over
        # wait for the next run in interval_s, so that a node marking more old hours than a
        # run computes cannot keep the job computing a run's worth every few seconds.
        return sorted(since + others), until, len(run) > len(since)

    def _waiting(self) -> bool:
        """Whether the record of a run that left hours to do is still being written (the
        next run would compute the same hours again)."""
        if self._behind is None:
            return False
        record, made = self._behind
        if record.written < len(record.parts) and (
            self._clock.monotonic() - made < self._interval_s
        ):
            return True
        self._behind = None
        return False

    def _rows(
        self,
        reader: StoreReader,
        hours: Sequence[int],
        gov: Governance,
        now: float,
        stop: threading.Event,
    ) -> list[LedgerRow]:
        """The ledger rows of ``hours`` from one snapshot of the store (a worker thread); cut
        short once ``stop`` is set (the run was cancelled: nobody waits for the rows)."""
        since = min(hours)
        mono = self._clock.monotonic
        hardware = reader.run(node_hardware(reader.dialect))
        self.progressed_at = mono()
        pools = reader.run(pool_history(since))
        members = reader.run(lease_history(since))
        inventory = {n: h.gpus for n, h in hardware.items()}
        leased = nodes_leases_held(gov, members)
        reported = reader.run(
            gpu_history(sorted(leased - inventory.keys()), since, max(hours) + HOUR)
        )
        rows: list[LedgerRow] = []
        for hour in hours:
            self.progressed_at = mono()
            if stop.is_set():
                break
            rows.extend(
                _hour_rows(
                    hour,
                    reader.run(hour_rows(hour, hour + HOUR)),
                    gov,
                    gpus=inventory,
                    reported=reported.at_hour(hour),
                    pools=pools.at_hour(hour),
                    model=self._model,
                    now=now,
                    members=members,
                )
            )
        return rows

    async def __call__(self, store: Store, view: LiveView) -> LedgerRecord | None:
        """Recompute the dirty hours and those since the ledger's time from ``store``
        (read-only) and the leases."""
        if self._waiting():
            self.interval_s = self._catch_up_s
            return None
        now = self._clock.time()
        self.runs += 1
        dirty = await store.run(dirty_hours())
        last = await store.run(ledger_at())
        hours, until, behind = self._hours(dirty, last, now)
        self.interval_s = self._catch_up_s if behind else self._interval_s
        gov = self._governance()
        # Read and computed in a worker thread, on a connection of its own (one snapshot):
        # at 12,500 nodes the hardware alone (an inventory decoded per node) was ~170 ms of
        # CPU on the event loop, and its rows read on the writer's connection held every
        # commit for up to 1.24 s during a drain (:meth:`Store.read_aside`).
        stop = threading.Event()
        try:
            rows = await store.read_aside(lambda r: self._rows(r, hours, gov, now, stop))
        except asyncio.CancelledError:
            # The thread goes on after the await is cancelled, and the process's exit waits
            # for it: a catch-up run of many hours at 12,500 nodes would hold a stop that long.
            stop.set()
            raise
        log.info("ledger_computed", hours=len(hours), rows=len(rows), behind=behind)
        computed = set(hours)
        done = [d for d in dirty if d[0] in computed]
        record = LedgerRecord(
            ledger_parts(hours, rows, done, now, until=until, most_rows=PART_ROWS[store.dialect])
        )
        if behind:
            self._behind = (record, self._clock.monotonic())
        return record
