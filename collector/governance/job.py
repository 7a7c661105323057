"""Governance state inside the collector: loaded from the store, usage kept from the live view.

:class:`GovernanceJob` is a cycle of the evaluator (:mod:`collector.evaluate`), run before
the alert rules, every evaluation interval. It reads one meta row (``governance_generation``,
bumped by every command that writes tenants, quotas or leases) and reloads the whole state
only when it moved; otherwise it touches no table. Usage on both bases comes from a snapshot
of the live view, computed in a worker thread: inventories for the allocated basis, the
latest samples for the measured one. Measured GPU-hours are read
from the stored samples once per period kind (at start, or when a quota first asks for that
period) and then integrated from the live view at each evaluation, so no evaluation re-reads
samples.

The result is a :class:`GovernanceView` the governance rules read (:mod:`.rules`), and a
snapshot of both usages in meta ``governance_usage`` (a :class:`UsageRecord` the writer
stores), which ``collector quota show`` reads while it is fresh instead of recomputing the
measured basis from the stored samples.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from collector.cooperate import YIELD_EVERY, yield_gil
from collector.governance.report import QuotaStanding, standings
from collector.governance.state import Governance, period_start
from collector.governance.usage import (
    NodeMeasure,
    Usage,
    allocated_usage,
    measured_usage,
)
from collector.live import LiveView, NodeState
from collector.store.governance import (
    USAGE_KEY,
    generation_async,
    load_governance_async,
    usage_snapshot_async,
)
from shared.clock import Clock
from shared.errors import StoreError
from shared.logging import get_logger
from shared.schema import Inventory, Sample

if TYPE_CHECKING:
    from collector.store.db import Store

__all__ = ["GovernanceJob", "GovernanceView", "UsageRecord", "node_measure"]

log = get_logger("governance")

_MAX_STEP_S: Final = 300.0
"""Integrate at most this long between evaluations (a paused collector learns nothing)."""
_MAX_GPU_W: Final = 5_000.0
_MAX_CPU_W: Final = 20_000.0


@dataclass(slots=True)
class GovernanceView:
    """What the governance rules read: the state, both usages and the quota standings."""

    gov: Governance = field(default_factory=Governance)
    measures: dict[str, NodeMeasure] = field(default_factory=dict)
    """Measured state of the nodes some lease names (fresh samples only)."""
    allocated: Usage = field(default_factory=lambda: Usage("allocated"))
    measured: Usage = field(default_factory=lambda: Usage("measured"))
    standings: list[QuotaStanding] = field(default_factory=list)
    at: float = float("-inf")
    """When this view was computed (collector clock)."""


def node_measure(
    st: NodeState, view: LiveView, now: float, *, busy_util_pct: float, stale_intervals: float
) -> NodeMeasure | None:
    """``st``'s measured state from its latest sample; ``None`` when offline or stale."""
    sample = st.sample
    if sample is None or st.status == "offline" or view.is_stale(st, now, stale_intervals):
        return None
    return _sample_measure(sample, busy_util_pct)


def _sample_measure(sample: Sample, busy_util_pct: float) -> NodeMeasure:
    # One pass, few calls: this runs for every leased node at every evaluation. The schema
    # bounds each value already; the totals are clamped once more below.
    busy = 0
    n_util = 0
    util_sum = 0.0
    watts = 0.0
    known = False
    for g in sample.gpus:
        u = g.util_pct
        if u is not None:
            n_util += 1
            util_sum += u
            if u >= busy_util_pct:
                busy += 1
        w = g.power_interval_w
        if w is None:
            w = g.power_w
        if w is not None:
            watts += w
            known = True
    gpus = len(sample.gpus)
    watts = min(max(watts, 0.0), _MAX_GPU_W * gpus)
    if sample.cpu_power_w is not None:
        watts += min(max(sample.cpu_power_w, 0.0), _MAX_CPU_W)
        known = True
    return NodeMeasure(
        gpus=gpus,
        busy_gpus=busy,
        power_w=watts if known else None,
        util_pct=min(max(util_sum / n_util, 0.0), 100.0) if n_util else None,
    )


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """The usage snapshot for ``collector quota show``: one meta row, for the writer."""

    text: str
    name: str = "governance"

    async def write(self, store: Store) -> None:
        """Store the snapshot."""
        await store.write_batch([], meta=[(USAGE_KEY, self.text)])


class GovernanceJob:
    """Keeps :attr:`view` current; an evaluator cycle (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        *,
        interval_s: float = 5.0,
        first_interval_s: float | None = None,
        busy_util_pct: float = 10.0,
        stale_intervals: float = 3.0,
    ) -> None:
        self.name = "governance"
        # The writer schedules each run ``interval_s`` after the last, reading it anew: the
        # first view comes after ``first_interval_s`` (an alert evaluation), well inside the
        # hold of alerts restored after a restart, then every ``interval_s``.
        self.interval_s = interval_s if first_interval_s is None else first_interval_s
        self._interval_s = interval_s
        self.view = GovernanceView()
        self.loads = 0
        """How many times the state was (re)loaded from the store (tests wait on it)."""
        self.unreadable = 0
        """How many store changes left the state unreadable (a hand-edited row)."""
        self._clock = clock
        self._busy = busy_util_pct
        self._stale = stale_intervals
        self._generation: str | None = None
        self._hours: dict[str, tuple[float, float]] = {}
        """Tenant -> (start of its current GPU-hours period, utilisation-weighted GPU-hours
        its nodes did in it so far)."""
        self._restored = False
        self._last: float | None = None
        self._hardware: dict[str, tuple[Inventory, tuple[int, float]]] = {}
        """Per node: the inventory last read and its (GPUs, power limits); recomputed only
        when the live view holds another inventory object."""
        self._measured: dict[str, tuple[Sample, NodeMeasure]] = {}
        """Per node: the sample last measured, and its measure."""

    async def __call__(self, store: Store, view: LiveView) -> UsageRecord | None:
        """Reload if the store's governance changed; recompute usage and standings from
        ``view`` (a snapshot) in a worker thread."""
        now = self._clock.time()
        self.interval_s = self._interval_s
        generation = await generation_async(store.fetchall)
        if generation != self._generation:
            try:
                loaded = await load_governance_async(store.fetchall)
            except StoreError as exc:
                if exc.fatal:
                    raise
                # A row a command did not write (edited by hand): said once per change of
                # the store, not at every evaluation; the last good state stays in force.
                self._generation = generation
                self.unreadable += 1
                log.error("governance_unreadable", error=str(exc), kept="the last good state")
                loaded = self.view.gov
            self.view.gov = loaded
            self._generation = generation
            self.loads += 1
            log.info(
                "governance_loaded",
                tenants=len(self.view.gov.tenants),
                leases=len(self.view.gov.leases),
                quotas=len(self.view.gov.quotas),
            )
        gov = self.view.gov
        if not gov.leases:
            self.view = GovernanceView(gov=gov, at=now)
            self._last = now
            return None
        if not self._restored:
            await self._restore_hours(store)
        return UsageRecord(await asyncio.to_thread(self._usage, gov, view, now))

    def _usage(self, gov: Governance, live: LiveView, now: float) -> str:
        """The pure part: usage, standings and :attr:`view`; returns the snapshot's text."""
        holder = {n: t for t, nodes in gov.tenant_nodes(now).items() for n in nodes}
        for tenant in gov.tenants:
            start = period_start(gov.period_of(tenant), now)
            if self._hours.get(tenant, (None, 0.0))[0] != start:
                self._hours[tenant] = (start, 0.0)  # a new period starts from zero
        leased = {n for lease in gov.leases for n in lease.nodes}
        if len(self._measured) > len(leased):  # leases gave nodes back: drop their caches
            self._measured = {n: v for n, v in self._measured.items() if n in leased}
            self._hardware = {n: v for n, v in self._hardware.items() if n in leased}
        measures: dict[str, NodeMeasure] = {}
        hardware: dict[str, tuple[int, float]] = {}
        step = 0.0 if self._last is None else min(max(now - self._last, 0.0), _MAX_STEP_S)
        for i, node in enumerate(leased):
            if not i % YIELD_EVERY:
                yield_gil()  # runs in the evaluator's thread: see collector.cooperate
            st = live.get(node)
            if st is None:
                continue
            inv = st.inventory
            if inv is not None:
                cached = self._hardware.get(node)
                if cached is None or cached[0] is not inv:
                    limits = sum(
                        min(max(g.power_limit_w or 0.0, 0.0), _MAX_GPU_W) for g in inv.gpus
                    )
                    cached = self._hardware[node] = (inv, (len(inv.gpus), limits))
                hardware[node] = cached[1]
            sample = st.sample
            if sample is None or st.status == "offline" or live.is_stale(st, now, self._stale):
                continue
            seen = self._measured.get(node)
            if seen is not None and seen[0] is sample:
                m = seen[1]
            else:
                m = _sample_measure(sample, self._busy)
                self._measured[node] = (sample, m)
            measures[node] = m
            if node not in hardware:
                hardware[node] = (m.gpus, 0.0)
            owner = holder.get(node)
            if step > 0 and m.util_pct is not None and owner is not None and owner in self._hours:
                since, hours = self._hours[owner]
                self._hours[owner] = (since, hours + m.gpus * m.util_pct / 100.0 * step / 3600.0)
        self._last = now
        allocated = allocated_usage(gov, hardware, now)
        tenant_hours = {t: h for t, (_, h) in self._hours.items()}
        measured = measured_usage(gov, measures, tenant_hours, now)
        self.view = GovernanceView(
            gov=gov,
            measures=measures,
            allocated=allocated,
            measured=measured,
            standings=standings(gov, [allocated, measured]),
            at=now,
        )
        # For `collector quota show`: the figures the rules judged, without re-deriving them
        # from 12,500 stored samples (a few hundred bytes per tenant, one meta row).
        snapshot = {
            "at": now,
            "generation": self._generation,
            "busy_util_pct": self._busy,
            "usage": {u.basis: u.by_resource for u in (allocated, measured)},
            "gpu_hours": {t: [start, h] for t, (start, h) in self._hours.items()},
        }
        return json.dumps(snapshot)

    async def _restore_hours(self, store: Store) -> None:
        """Take back the measured GPU-hours of the current periods from the last snapshot
        (a restart loses only the time the collector was down; no sample is re-read)."""
        self._restored = True
        text = await usage_snapshot_async(store.fetchall)
        if text is None:
            return
        try:
            saved = json.loads(text)["gpu_hours"]
            self._hours = {str(t): (float(v[0]), max(0.0, float(v[1]))) for t, v in saved.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            log.warning("governance_usage_unreadable", hint="measured GPU-hours start at 0")
            self._hours = {}
