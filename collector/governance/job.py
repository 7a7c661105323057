"""Governance state inside the collector: loaded from the store, usage kept from the live view.

:class:`GovernanceJob` is a cycle of the evaluator (:mod:`collector.evaluate`), in a lane of
its own beside the alert rules (its first run comes before theirs), every governance
evaluation interval. It reads one meta row (``governance_generation``,
bumped by every command that writes tenants, quotas or leases) and reloads the whole state
only when it moved; otherwise it touches no table. Usage on both bases comes from a snapshot
of the live view, computed in a worker thread: inventories for the allocated basis, the
latest samples for the measured one.

Measured GPU-hours (utilisation-weighted) of a tenant's current period are the usage
ledger's up to its last run (``ledger_at``: the ledger's daily sums, read again only when
the ledger moved) plus what this job integrated from the live view since then. So a restart
or an outage loses nothing the rollups hold: the ledger recomputes the hours they moved
(an agent's spool replayed after an outage lands in its hours), and the integral only
bridges the few minutes since its last run. Samples stamped in the last fold interval
before a ledger run (not folded yet when it ran) count at its next run. Without a ledger
(rollups off) the integral alone counts.

A leader's every term starts afresh (:meth:`GovernanceJob.new_term`), from what the store
holds, as a new process does: the state loaded again, and the GPU-hours taken back from the
last usage snapshot, whichever leader wrote it (another collector's, after its term): the
integral's hours, or with a ledger the integral's part since the ledger's run the snapshot
built on, while the ledger has not run since. What a term kept is never carried into the
next (the hours of the other leader's term would be missed), and a computation of an ended
term, still running in its worker thread, works on that term's state only.

The result is a :class:`GovernanceView` the governance rules read (:mod:`.rules`), and a
snapshot of both usages in meta ``governance_usage`` (a :class:`UsageRecord` the writer
stores), which ``collector quota show`` reads while it is fresh instead of recomputing the
measured basis from the stored samples.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from collector.cooperate import YIELD_EVERY, yield_gil
from collector.governance.periods import period_start
from collector.governance.report import CohortStanding, QuotaStanding, overcommitted, standings
from collector.governance.state import Governance
from collector.governance.usage import (
    FactsCache,
    Usage,
    allocated_usage,
    history_since,
    measured_usage,
    node_facts,
    nodes_leases_held,
)
from collector.live import LiveView, NodeState
from collector.nodefacts import (
    DEFAULT_BUSY_UTIL_PCT,
    DEFAULT_STALENESS,
    Hardware,
    NodeMeasure,
    Staleness,
)
from collector.store.governance import (
    USAGE_KEY,
    generation,
    governance,
    usage_snapshot,
)
from collector.store.ledger import LeaseHistory, lease_history, ledger_at, tenant_used_hours
from collector.store.usage import declared_hardware
from shared.clock import Clock
from shared.errors import StoreError
from shared.logging import get_logger

if TYPE_CHECKING:
    from collector.store.db import Store

__all__ = ["GovernanceJob", "GovernanceView", "UsageRecord"]

log = get_logger("governance")

_MAX_STEP_S: Final = 300.0
"""Integrate at most this long between evaluations (a paused collector learns nothing)."""


@dataclass(slots=True)
class GovernanceView:
    """What the governance rules read: the state, both usages and the quota standings."""

    gov: Governance = field(default_factory=Governance)
    measures: dict[str, NodeMeasure] = field(default_factory=dict)
    """Measured state of the nodes some lease names (fresh samples only)."""
    allocated: Usage = field(default_factory=lambda: Usage("allocated"))
    measured: Usage = field(default_factory=lambda: Usage("measured"))
    standings: list[QuotaStanding] = field(default_factory=list)
    cohorts: list[CohortStanding] = field(default_factory=list)
    """Cohorts whose members hold more than they have (``CohortOvercommitted``)."""
    at: float = float("-inf")
    """When this view was computed (collector clock)."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """The usage snapshot for ``collector quota show``: one meta row, for the writer."""

    text: str
    name: str = "governance"

    async def write(self, store: Store) -> None:
        """Store the snapshot."""
        await store.write_batch([], meta=[(USAGE_KEY, self.text)])


def _cooperating(states: Iterable[NodeState]) -> Iterator[NodeState]:
    """``states``, handing the GIL to the event loop every few hundred (a worker thread)."""
    for i, st in enumerate(states, 1):
        if not i % YIELD_EVERY:
            yield_gil()  # runs in the evaluator's thread: see collector.cooperate
        yield st


@dataclass(slots=True, eq=False)
class _Term:
    """What the job keeps from one evaluation to the next, for one term of leadership: a new
    term starts from a new one (:meth:`GovernanceJob.new_term`), and an evaluation works on
    the one it began with, so a computation of an ended term, still running in its worker
    thread, writes only into that term's (see :meth:`GovernanceJob.new_term`)."""

    gov: Governance = field(default_factory=Governance)
    """The state as last loaded; published in :attr:`GovernanceJob.view` with the usage made
    from it, never alone: the alert rules read the view from their own lane, at any turn."""
    generation: str | None = None
    declared: dict[str, Hardware] = field(default_factory=dict)
    """Hardware of declared inventories (`inventory import` moves the generation)."""
    members: LeaseHistory = field(default_factory=LeaseHistory)
    """The leases' node moves since the earliest quota period began, at the last load
    (a move is a command's: it moves the generation), for allocated GPU-hours."""
    hours: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Tenant -> (start of its current GPU-hours period, utilisation-weighted GPU-hours
    its nodes did in it so far)."""
    ledger_at: float | None = None
    """When the usage ledger last ran (``None``: never; the integral alone counts)."""
    ledger_key: tuple[float | None, tuple[tuple[str, float], ...]] | None = None
    ledger_hours: dict[str, float] = field(default_factory=dict)
    """Tenant -> GPU-hours of its current period in the ledger (up to ``ledger_at``)."""
    steps: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Tenant -> (when, GPU-hours) integrated at each evaluation, kept while after
    ``ledger_at``."""
    restored: bool = False
    """Whether the term took back the GPU-hours of the last usage snapshot yet."""
    last: float | None = None
    """When the term's last evaluation integrated (``None``: none yet)."""
    facts: FactsCache = field(default_factory=FactsCache)


class GovernanceJob:
    """Keeps :attr:`view` current; an evaluator cycle (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        *,
        interval_s: float = 5.0,
        first_interval_s: float | None = None,
        busy_util_pct: float = DEFAULT_BUSY_UTIL_PCT,
        staleness: Staleness = DEFAULT_STALENESS,
    ) -> None:
        self.name = "governance"
        # The writer schedules each run ``interval_s`` after the last, reading it anew: the
        # first view comes after ``first_interval_s`` (an alert evaluation), well inside the
        # hold of alerts restored after a restart, then every ``interval_s``.
        self.interval_s = interval_s if first_interval_s is None else first_interval_s
        self._interval_s = interval_s
        self.view = GovernanceView()
        self._term = _Term()
        self.loads = 0
        """How many times the state was (re)loaded from the store (tests wait on it)."""
        self.unreadable = 0
        """How many store changes left the state unreadable (a hand-edited row)."""
        self._clock = clock
        self._busy = busy_util_pct
        self._staleness = staleness

    def new_term(self) -> None:
        """A term of leadership begins: start from what the store holds, as a new process
        would (the state loaded again, the GPU-hours taken back from the newest usage
        snapshot, whichever leader wrote it), not from what this job kept in its last term.

        A computation of the last term that its end cancelled goes on in its worker thread
        (a thread cannot be stopped): it works on the last term's state, and its view is
        never published (:meth:`__call__` publishes only its own term's)."""
        last = self._term
        # Loaded again at its first evaluation; kept only in case the store's state cannot
        # be read then (a row edited by hand: the last good state stays in force).
        self._term = _Term(gov=last.gov, declared=last.declared, members=last.members)

    async def __call__(self, store: Store, view: LiveView) -> UsageRecord | None:
        """Reload if the store's governance changed; recompute usage and standings from
        ``view`` (a snapshot) in a worker thread."""
        now = self._clock.time()
        self.interval_s = self._interval_s
        term = self._term  # this evaluation's, to the end: see new_term
        stored = await store.run(generation())
        if stored != term.generation:
            try:
                loaded = await store.run(governance())
                # Declared inventories are decoded in a worker thread: one by one, 12,500
                # are ~80 ms of CPU the event loop need not spend.
                term.declared = await store.run(declared_hardware(), build_in_thread=True)
                term.members = await store.run(lease_history(history_since(now)))
            except StoreError as exc:
                if exc.fatal:
                    raise
                # A row a command did not write (edited by hand): said once per change of
                # the store, not at every evaluation; the last good state stays in force.
                term.generation = stored
                self.unreadable += 1
                log.error("governance_unreadable", error=str(exc), kept="the last good state")
                loaded = term.gov
            term.gov = loaded
            term.generation = stored
            self.loads += 1
            log.info(
                "governance_loaded",
                tenants=len(loaded.tenants),
                leases=len(loaded.leases),
                quotas=len(loaded.quotas),
            )
        gov = term.gov
        if not gov.leases:
            term.last = now
            if term is self._term:  # (as below)
                self.view = GovernanceView(gov=gov, at=now)
            return None
        await self._read_ledger(store, term, now)
        if not term.restored:
            await self._restore_hours(store, term)
        computed, text = await asyncio.to_thread(self._usage, term, view, now)
        if term is not self._term:  # a new term began meanwhile: this one's view is past
            return None
        self.view = computed
        return UsageRecord(text)

    async def _read_ledger(self, store: Store, term: _Term, now: float) -> None:
        """The ledger's GPU-hours of each tenant's current period, read again only when the
        ledger ran since (or a period began)."""
        gov = term.gov
        at = await store.run(ledger_at())
        starts = tuple(sorted((t, period_start(gov.period_of(t), now)) for t in gov.tenants))
        key = (at, starts)
        if at is None or key == term.ledger_key:
            term.ledger_at = at
            return
        hours: dict[str, float] = {}
        for start in sorted({s for _, s in starts}):
            used = await store.run(tenant_used_hours(start, math.inf))
            for tenant, s in starts:
                if s == start:
                    hours[tenant] = used.get(tenant, (0.0, 0.0))[0]
        term.ledger_key, term.ledger_at, term.ledger_hours = key, at, hours

    def _usage(self, term: _Term, live: LiveView, now: float) -> tuple[GovernanceView, str]:
        """The pure part, on ``term``'s state: usage and standings; returns the view to
        publish and the snapshot's text."""
        gov = term.gov
        holder = {n: t for t, nodes in gov.tenant_nodes(now).items() for n in nodes}
        for tenant in gov.tenants:
            start = period_start(gov.period_of(tenant), now)
            if term.hours.get(tenant, (None, 0.0))[0] != start:
                term.hours[tenant] = (start, 0.0)  # a new period starts from zero
        leased = nodes_leases_held(gov, term.members)
        if len(term.facts.measured) > len(leased):  # leases gave nodes back: drop them
            term.facts.keep(leased)
        held, measures = node_facts(
            _cooperating(st for st in map(live.get, leased) if st is not None),
            now,
            staleness=self._staleness,
            busy_util_pct=self._busy,
            cache=term.facts,
            declared={n: hw for n, hw in term.declared.items() if n in leased},
        )
        step = 0.0 if term.last is None else min(max(now - term.last, 0.0), _MAX_STEP_S)
        did: dict[str, float] = {}
        for node, m in measures.items() if step > 0 else ():
            owner = holder.get(node)
            if m.util_pct is not None and owner is not None and owner in term.hours:
                did[owner] = did.get(owner, 0.0) + m.gpus * m.util_pct / 100.0 * step / 3600.0
        for owner, h in did.items():
            since, hours = term.hours[owner]
            term.hours[owner] = (since, hours + h)
        term.last = now
        allocated = allocated_usage(gov, held, now, term.members)
        tenant_hours = _tenant_hours(term, did, now)
        measured = measured_usage(gov, measures, tenant_hours, now)
        view = GovernanceView(
            gov=gov,
            measures=measures,
            allocated=allocated,
            measured=measured,
            standings=standings(gov, [allocated, measured]),
            cohorts=overcommitted(gov, [allocated, measured]),
            at=now,
        )
        # For `collector quota show`: the figures the rules judged, without re-deriving them
        # from 12,500 stored samples (a few hundred bytes per tenant, one meta row); and for
        # the next term's leader, the ledger's time they build on.
        snapshot = {
            "at": now,
            "generation": term.generation,
            "busy_util_pct": self._busy,
            "usage": {u.basis: u.by_resource for u in (allocated, measured)},
            "gpu_hours": {
                t: [start, tenant_hours.get(t, h)] for t, (start, h) in term.hours.items()
            },
            "ledger_at": term.ledger_at,
        }
        return view, json.dumps(snapshot)

    async def _restore_hours(self, store: Store, term: _Term) -> None:
        """Take back the measured GPU-hours of the current periods from the last snapshot,
        whichever leader wrote it (a restart or a take-over loses only the time between that
        snapshot and now; no sample is re-read). Without a ledger, its hours; with one, the
        part since the ledger's last run, when the ledger has not run since (else the ledger
        holds them)."""
        term.restored = True
        text = await store.run(usage_snapshot())
        if text is None:
            return
        try:
            saved = json.loads(text)
            hours = {
                str(t): (float(v[0]), max(0.0, float(v[1]))) for t, v in saved["gpu_hours"].items()
            }
            # The ledger's time the hours were built on (none in a snapshot from before it
            # was recorded: then the ledger's next run brings the part since back).
            built_on = saved.get("ledger_at")
            bridged = built_on is not None and float(built_on) == term.ledger_at
            at = float(saved["at"]) if bridged else 0.0
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            log.warning("governance_usage_unreadable", hint="measured GPU-hours start at 0")
            return
        if term.ledger_at is None:
            term.hours = hours
        elif bridged:
            # The snapshot's hours are the ledger's (of the same run) and the integral since.
            for tenant, (_, h) in hours.items():
                bridge = h - term.ledger_hours.get(tenant, 0.0)
                if bridge > 0:
                    term.steps[tenant] = [(at, bridge)]


def _tenant_hours(term: _Term, did: dict[str, float], now: float) -> dict[str, float]:
    """Each tenant's measured GPU-hours this period: the ledger's plus the integral since
    it ran (see the module docstring); without a ledger, the integral's."""
    at = term.ledger_at
    if at is None:
        return {t: h for t, (_, h) in term.hours.items()}
    out: dict[str, float] = {}
    for tenant, (since, _) in term.hours.items():
        steps = [(t, h) for t, h in term.steps.get(tenant, ()) if t > at and t > since]
        if did.get(tenant):
            steps.append((now, did[tenant]))
        term.steps[tenant] = steps
        out[tenant] = term.ledger_hours.get(tenant, 0.0) + sum(h for _, h in steps)
    return out
