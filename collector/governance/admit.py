"""Admission over a lease's whole interval: may this allocation be added, at every instant?

Kueue admits a workload when it fits the quota now; a lease holds its nodes for months, so
capwatch asks the same question at every instant the change adds allocation: a new lease
(its whole span), ``lease extend``/``renew`` (the days added), a pool that grows while
leased (the nodes added, over the rest of the lease), a lease that a cluster file moves or
widens. At each instant the tenant's added amount must fit what Kueue's arithmetic
(:meth:`~collector.governance.quota.QuotaTree.available`, clamped at 0 as Kueue's
``ClusterQueueSnapshot.Available``) leaves it, given every other lease in force then.

Why this makes the answer independent of the order leases are added: ``amount <=
available`` from a state within quota holds exactly when the state after adding is within
quota along the tenant's path to the root (every node's usage past its local quota within
what its parent stores for it plus its borrowing limit, and the root's usage within its
subtree quota), and that is a property of the set of leases, not of their order. A subset
of a set within quota is within quota, so whatever order a set is added in, every lease
is admitted when the whole set fits, and some lease is refused when it does not.

The past is not admitted or refused: only the part of a change from ``now`` on is judged
(a lease recorded after the fact is not refused for what already happened).

The sweep visits only the instants where something changes (a lease starts or ends inside
the interval), not each day: 2,000 leases over two years are a few thousand points.

Resources judged: ``gpus`` (the leased nodes' GPUs) and ``power_kw`` (their GPUs' power
limits), each where the tenant has a quota on it; GPU-hours accrue over a period and are
judged by the alert rules, not at admission. Node hardware is
:func:`collector.nodefacts.hardware` of the node's inventory, an agent's or a declared one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from collector.governance.lease import LeaseTerms, effective_end, interval, today_in
from collector.governance.quota import Admission
from collector.governance.state import Governance, Lease
from collector.governance.usage import held

__all__ = ["ADMITTED_RESOURCES", "Refusal", "Verdict", "admit"]

ADMITTED_RESOURCES: Final = ("gpus", "power_kw")
"""The resources a lease holds for its whole span (GPU-hours accrue; see the docstring)."""
_EPS: Final = 1e-9
_DAY: Final = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first instant a change does not fit, with the figures of that instant."""

    tenant: str
    resource: str
    day: dt.date
    """The date of that instant in the lease's zone."""
    holding: float
    """What the tenant holds then without this change."""
    asked: float
    available: float
    """What Kueue's arithmetic leaves the tenant then (never below 0)."""
    nominal: float
    borrowing_limit: float | None
    cohort: str | None

    def text(self) -> str:
        """One sentence: day, tenant, resource and the figures."""
        unit = "GPUs" if self.resource == "gpus" else "kW of GPU power limits"
        limit = "none" if self.borrowing_limit is None else f"{self.borrowing_limit:g}"
        return (
            f"on {self.day.isoformat()} tenant {self.tenant} would exceed its {self.resource} "
            f"quota: it holds {self.holding:g} {unit} then and this asks {self.asked:g} more, "
            f"but only {self.available:g} available (nominal {self.nominal:g}, borrowing "
            f"limit {limit}, cohort {self.cohort or '-'})"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one change: refused (with the first failing instant) or admitted."""

    refusal: Refusal | None
    first: Admission | None
    """The GPU answer at the first instant the change adds GPUs (who lends what), for
    display; ``None`` when the tenant has no GPU quota or the change adds nothing."""

    @property
    def admitted(self) -> bool:
        """Whether the change fits at every instant."""
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class _Span:
    tenant: str
    nodes: frozenset[str]
    since: float
    until: float


def _lease_span(lease: Lease) -> _Span:
    since, until = interval(lease.terms)
    return _Span(lease.tenant, frozenset(lease.nodes), since, until)


def admit(
    gov: Governance,
    hardware: Mapping[str, tuple[int, float]],
    tenant: str,
    nodes: Collection[str],
    terms: LeaseTerms,
    *,
    now: float,
    old: Lease | None = None,
) -> Verdict:
    """Whether ``tenant`` may hold ``nodes`` over ``terms``, replacing ``old`` (the lease as
    stored, when this changes one; any lease in ``gov`` with its id is left out).

    Only the allocation the change adds is judged: nodes ``old`` did not hold over the new
    span, and ``old``'s nodes over days it did not cover. ``hardware``: node -> (GPUs, GPU
    power limits in W).
    """
    resources = [r for r in ADMITTED_RESOURCES if (tenant, r) in gov.quotas]
    if not resources:
        return Verdict(None, None)
    new_nodes = frozenset(nodes)
    s1, e1 = interval(terms)
    base: list[_Span] = []
    asked: list[_Span] = []
    if old is None:
        asked.append(_Span(tenant, new_nodes, s1, e1))
    else:
        s0, e0 = interval(old.terms)
        kept = new_nodes & frozenset(old.nodes)
        if kept and max(s0, s1) < min(e0, e1):
            base.append(_Span(tenant, kept, max(s0, s1), min(e0, e1)))
        asked.append(_Span(tenant, new_nodes - kept, s1, e1))
        asked.append(_Span(tenant, kept, s1, min(e1, s0)))
        asked.append(_Span(tenant, kept, max(s1, e0), e1))
    asked = [
        _Span(a.tenant, a.nodes, max(a.since, now), a.until)
        for a in asked
        if a.nodes and max(a.since, now) < a.until
    ]
    if not asked:
        return Verdict(None, None)
    w0 = min(a.since for a in asked)
    w1 = max(a.until for a in asked)
    # Dates first (a lease's instants are within a day of its dates in any zone): only the
    # leases near the window pay for their instants.
    first = dt.datetime.fromtimestamp(w0, dt.UTC).date() - _DAY
    last = None if w1 == float("inf") else dt.datetime.fromtimestamp(w1, dt.UTC).date() + _DAY
    for lease in gov.leases:
        if old is not None and lease.id == old.id:
            continue
        if last is not None and lease.terms.start > last:
            continue
        end = effective_end(lease.terms)
        if end is not None and end < first:
            continue
        base.append(_lease_span(lease))
    return _sweep(
        gov,
        hardware,
        tenant,
        resources=resources,
        base=base,
        asked=asked,
        window=(w0, w1),
        tz=terms.tz,
    )


def _sweep(
    gov: Governance,
    hardware: Mapping[str, tuple[int, float]],
    tenant: str,
    *,
    resources: list[str],
    base: list[_Span],
    asked: list[_Span],
    window: tuple[float, float],
    tz: str,
) -> Verdict:
    w0, w1 = window
    # Events inside the window: (instant, tenant or None for the asked amount, amounts, sign).
    usage = {r: dict.fromkeys(gov.tenants, 0.0) for r in resources}
    want = dict.fromkeys(resources, 0.0)
    events: list[tuple[float, int, str | None, dict[str, float]]] = []
    for spans, who in ((base, False), (asked, True)):
        for sp in spans:
            if sp.until <= w0 or sp.since >= w1 or not sp.nodes:
                continue
            amounts = held(sp.nodes, hardware)
            owner = None if who else sp.tenant
            if sp.since <= w0:
                _apply(usage, want, owner, amounts, 1)
            else:
                events.append((sp.since, 1, owner, amounts))
            if sp.until < w1:
                events.append((sp.until, -1, owner, amounts))
    events.sort(key=lambda e: e[0])
    trees = {r: gov.tree(r) for r in resources}
    first: Admission | None = None
    at = w0
    i = 0
    while True:
        for r in resources:
            if want[r] <= _EPS:
                continue
            use = usage[r]
            if r == "gpus" and first is None:
                first = trees[r].check(tenant, want[r], use)
            available = max(0.0, trees[r].available(tenant, use))
            if want[r] > available + _EPS:
                q = gov.quotas[(tenant, r)].quota
                refusal = Refusal(
                    tenant=tenant,
                    resource=r,
                    day=today_in(tz, at),
                    holding=use.get(tenant, 0.0),
                    asked=want[r],
                    available=available,
                    nominal=q.nominal,
                    borrowing_limit=q.borrowing_limit,
                    cohort=gov.tenants.get(tenant),
                )
                return Verdict(refusal, first)
        if i >= len(events):
            return Verdict(None, first)
        at = events[i][0]
        while i < len(events) and events[i][0] == at:
            _, sign, owner, amounts = events[i]
            _apply(usage, want, owner, amounts, sign)
            i += 1


def _apply(
    usage: dict[str, dict[str, float]],
    want: dict[str, float],
    owner: str | None,
    amounts: Mapping[str, float],
    sign: int,
) -> None:
    for r, per in usage.items():
        if owner is None:
            want[r] += sign * amounts[r]
        else:
            per[owner] = per.get(owner, 0.0) + sign * amounts[r]
