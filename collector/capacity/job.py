"""The collector's capacity cycle: live picture, fixed-fleet solve, one snapshot row.

:class:`CapacityJob` is a cycle of the evaluator (:mod:`collector.evaluate`, like the alert
job), every ``interval_s`` (default 30 s) when a site plan is configured: it computes the
:class:`Picture` from a snapshot of the live view (never the store) in a worker thread, keeps
it and a short history of IT draw in a :class:`CapacityState` that the capacity alert rules
read, and hands the writer one ``capacity_snapshots`` row (a :class:`SnapshotRecord`; rows
older than ``keep_s`` go in the same transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from collector.capacity.compute import compute_picture
from collector.capacity.config import CapacityPlan
from collector.capacity.node import TypeMatcher
from collector.capacity.picture import (
    Picture,
    RestBasis,
    StaleBasis,
    picture_from_dict,
    picture_to_dict,
)
from collector.counters import value
from collector.live import LiveView, NodeState
from collector.nodefacts import DEFAULT_STALENESS, Staleness
from collector.store.capacity import (
    SnapshotRow,
    known_nodes,
    recent_snapshots,
    write_snapshot,
)
from collector.store.db import Store
from shared.clock import Clock
from shared.errors import SchemaError
from shared.logging import get_logger
from shared.schema import Inventory, decode_inventory

__all__ = [
    "CapacityJob",
    "CapacityJobMetrics",
    "CapacityReading",
    "CapacityState",
    "SnapshotRecord",
    "snapshot_row",
]

log = get_logger("capacity")

_HISTORY: Final = 720
"""IT draw points kept for the rising-draw rule (6 h at the default 30 s)."""


@dataclass(frozen=True, slots=True)
class CapacityReading:
    """One generation of what the capacity alert rules read: a picture and the IT draw
    history that ends with it, published together (:attr:`CapacityState.latest`)."""

    picture: Picture | None = None
    history: tuple[tuple[float, float], ...] = ()
    """(collector time, IT draw W) per cycle, oldest first, the last :data:`_HISTORY`."""


@dataclass(slots=True)
class CapacityState:
    """The latest reading: what the capacity alert rules read.

    The capacity cycle, in an evaluator lane of its own, replaces :attr:`latest` on the loop
    while the alert rules read it in their worker thread: a rule reads the attribute once
    and judges that reading alone, so it never weighs one generation's picture by another's
    age or history (the picture and the history were two attributes: a rule that read the
    picture, then the picture again to judge its age, could take an hour-old picture for
    fresh because a new one replaced it in between)."""

    latest: CapacityReading = CapacityReading()

    def update(self, picture: Picture) -> None:
        """Publish ``picture`` as the latest, its draw appended to the history."""
        held = self.latest.history
        self.latest = CapacityReading(picture, (*held, (picture.at, picture.it_w))[-_HISTORY:])

    def restore(self, points: Iterable[tuple[float, float]], picture: Picture | None) -> None:
        """Publish ``points`` as the history, in place of the one held, with ``picture`` (or,
        when ``None``, the picture held)."""
        held = self.latest.picture if picture is None else picture
        self.latest = CapacityReading(held, tuple(points)[-_HISTORY:])


def snapshot_row(p: Picture) -> SnapshotRow:
    """The store row of a picture."""
    return SnapshotRow(
        p.at,
        p.cap_w,
        p.it_w,
        p.facility_w,
        p.headroom_w,
        p.worst_it_w,
        p.nodes,
        p.stale_nodes,
        p.unmatched_nodes,
        p.clamped_nodes,
        p.binding,
        json.dumps(picture_to_dict(p), separators=(",", ":")),
    )


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One cycle's picture, for the writer: its snapshot row, then the log line."""

    picture: Picture
    row: SnapshotRow
    keep_s: float
    name: str = "capacity"

    async def write(self, store: Store) -> None:
        """Store the row (and delete the rows past ``keep_s``)."""
        deleted = await write_snapshot(store, self.row, keep_s=self.keep_s)
        p = self.picture
        log.info(
            "capacity_snapshot",
            it_w=round(p.it_w),
            cap_w=round(p.cap_w),
            headroom_pct=round(p.headroom_pct, 2),
            nodes=p.nodes,
            stale=p.stale_nodes,
            unmatched=p.unmatched_nodes,
            clamped=p.clamped_nodes,
            binding=p.binding,
            deleted=deleted,
            ms=round(p.compute_ms, 1),
        )


class CapacityJobMetrics:
    """What the capacity job counts, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.snapshots = Counter(
            "capacity_snapshots",
            "Capacity pictures recorded in the store.",
            namespace="capwatch_collector",
            registry=registry,
        )

    def counter_rows(self) -> dict[str, int]:
        """``capacity_snapshots``."""
        return {"capacity_snapshots": value(self.snapshots)}


class CapacityJob:
    """Computes the live picture every ``interval_s``; see the module."""

    def __init__(
        self,
        cplan: CapacityPlan,
        clock: Clock,
        *,
        state: CapacityState | None = None,
        interval_s: float = 30.0,
        keep_s: float = 30 * 86_400.0,
        staleness: Staleness = DEFAULT_STALENESS,
        stale_basis: StaleBasis = "nameplate",
        rest_basis: RestBasis = "calibrated",
        metrics: CapacityJobMetrics | None = None,
    ) -> None:
        self.name = "capacity"
        self.interval_s = interval_s
        self.state = state if state is not None else CapacityState()
        self._cplan = cplan
        self.cplan = cplan
        """The site plan it was built with (the usage ledger models node energy by it)."""
        self._clock = clock
        self._keep_s = keep_s
        self._staleness = staleness
        self._stale_basis: StaleBasis = stale_basis
        self._rest_basis: RestBasis = rest_basis
        self._matcher = TypeMatcher(cplan)
        self._known: dict[str, NodeState] = {}
        """Nodes the store knew at start (status, inventory): counted until they report.
        Changed on the event loop only (a cycle's worker thread reads a copy): a cycle that
        a term's end cancelled goes on in its thread while the next term restores."""
        self._inventories: Mapping[str, Inventory] = {}
        """The stored inventories, replaced whole by :meth:`restore`, never changed: a
        cycle's thread reads the ones it was handed."""
        self.metrics = CapacityJobMetrics(CollectorRegistry()) if metrics is None else metrics
        self.cpu_ms = 0.0
        """CPU time of the last cycle's picture and solves (its worker thread), ms."""

    def _still_unseen(self, view: LiveView) -> tuple[NodeState, ...]:
        """Those of the nodes known from the store that ``view`` has not seen (one that
        reported is the view's from then on, and forgotten here); on the event loop."""
        for node in [n for n in self._known if n in view]:
            del self._known[node]
        return tuple(self._known.values())

    def compute(self, view: LiveView) -> Picture:
        """The picture of ``view`` now (no store write)."""
        return self._picture(view, self._still_unseen(view), self._inventories)

    def _picture(
        self,
        view: LiveView,
        unseen: Iterable[NodeState],
        inventories: Mapping[str, Inventory],
    ) -> Picture:
        return compute_picture(
            self._cplan,
            itertools.chain(view.nodes(), unseen),
            self._clock.time(),
            staleness=self._staleness,
            stale_basis=self._stale_basis,
            rest_basis=self._rest_basis,
            matcher=self._matcher,
            inventories=inventories,
            rack_power=view.rack_power,
        )

    async def restore(self, store: Store, *, window_s: float) -> int:
        """Take back the draw history of the last ``window_s`` and the newest picture (what
        the rules read until the first cycle), so a restart neither forgets a rising draw
        nor resolves a capacity alert for want of a picture; return the points restored.

        Also the nodes the store knows with their inventories: a resumed MQTT session does
        not bring retained inventories again, so without them every node would be unmatched,
        and a node that stays offline would not be counted at all."""
        known: dict[str, NodeState] = {}
        inventories: dict[str, Inventory] = {}
        for node, status, inventory in await known_nodes(store):
            st = NodeState(node)
            if status in ("online", "offline"):
                st.status = "offline" if status == "offline" else "online"
            if inventory is not None:
                with contextlib.suppress(SchemaError):
                    st.inventory = inventories[node] = decode_inventory(inventory)
            known[node] = st
        # What the store knows now, whole (at a later term, in place of the last term's:
        # the store knows those nodes too, unless forgotten since).
        self._known, self._inventories = known, inventories
        points, newest = await recent_snapshots(store, self._clock.time() - window_s)
        # In place of the history held: at a leader's later term it is an earlier term's,
        # whose points the store holds too (those it does not were never written).
        picture = None if newest is None else picture_from_dict(json.loads(newest))
        self.state.restore(points, picture)
        if points or self._known:
            log.info("capacity_restored", points=len(points), nodes=len(self._known))
        return len(points)

    async def __call__(self, store: Store, view: LiveView) -> SnapshotRecord:
        """One cycle on ``view`` (a snapshot): picture and row in a worker thread, the state
        for the rules; the row is for the writer.

        The thread changes nothing of the job's: it computes from what it is handed, and
        what it made is published here, after it. A cycle cancelled (the term ended) goes on
        in its thread (a thread cannot be stopped), while the next term's :meth:`restore`
        and cycles run: it can neither publish nor change what they use."""
        unseen = self._still_unseen(view)
        picture, row, cpu_ms = await asyncio.to_thread(self._cycle, view, unseen, self._inventories)
        self.cpu_ms = cpu_ms
        self.state.update(picture)
        self.metrics.snapshots.inc()
        return SnapshotRecord(picture, row, self._keep_s)

    def _cycle(
        self,
        view: LiveView,
        unseen: tuple[NodeState, ...],
        inventories: Mapping[str, Inventory],
    ) -> tuple[Picture, SnapshotRow, float]:
        cpu0 = time.thread_time()
        picture = self._picture(view, unseen, inventories)
        row = snapshot_row(picture)
        return picture, row, (time.thread_time() - cpu0) * 1000
