"""Governance state in memory: tenants, cohorts, quotas and leases, as loaded from the store.

Pure data with the questions every user of it asks (which leases are in force, which nodes
a tenant holds, the quota tree of a resource). The command line builds one per command from
a :class:`~collector.store.reader.StoreReader`; the collector builds one at start and again
whenever the store's governance generation changes (:mod:`collector.governance.job`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from collector.governance.lease import (
    LeaseStatus,
    LeaseTerms,
    effective_end,
    instants,
    status,
    today_in,
)
from collector.governance.periods import Period
from collector.governance.quota import RESOURCES, Quota, QuotaTree

__all__ = [
    "HOLDING",
    "Governance",
    "Lease",
    "TenantQuota",
]

HOLDING: Final = frozenset({"active", "notice_given"})
"""Lease statuses in which the tenant holds the nodes."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One stored lease: its identity, its nodes and its dates."""

    id: int
    name: str
    tenant: str
    pool: str | None
    nodes: tuple[str, ...]
    terms: LeaseTerms
    forced: bool = False
    force_reason: str | None = None
    comment: str = ""
    created: float | None = None
    """When it was booked (``lease add``, Unix seconds); ``None``: not known here."""

    def status(self, now: float) -> LeaseStatus:
        """The lease's status at the instant ``now`` (its own zone's calendar date)."""
        return status(self.terms, today_in(self.terms.tz, now))

    def end(self) -> dt.date | None:
        """Its effective end date (exclusive), ``None`` when open-ended."""
        return effective_end(self.terms)

    def interval(self) -> tuple[float, float | None]:
        """The instants it holds its nodes between (:func:`~.lease.instants`)."""
        return instants(self.terms)


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """One tenant's quota on one resource."""

    quota: Quota
    period: Period | None = None
    """For ``gpu_hours``: the calendar period the hours are counted over (UTC)."""


@dataclass(slots=True)
class Governance:
    """Everything the store says about tenants, cohorts, quotas and leases."""

    tenants: dict[str, str | None] = field(default_factory=dict)
    """Tenant -> its cohort (``None``: in no cohort)."""
    priorities: dict[str, int] = field(default_factory=dict)
    cohorts: set[str] = field(default_factory=set)
    cohort_quotas: dict[tuple[str, str], Quota] = field(default_factory=dict)
    """(cohort, resource) -> the cohort's own quota (limits: towards its parent)."""
    quotas: dict[tuple[str, str], TenantQuota] = field(default_factory=dict)
    """(tenant, resource) -> quota."""
    leases: list[Lease] = field(default_factory=list)
    generation: str = ""
    """The store's ``governance_generation`` this state was loaded at."""
    cohort_parents: dict[str, str] = field(default_factory=dict)
    """Cohort -> its parent cohort (Kueue's hierarchical cohorts); absent: a root."""

    def leases_of(self, tenant: str) -> list[Lease]:
        """``tenant``'s leases, in id order."""
        return [lease for lease in self.leases if lease.tenant == tenant]

    def holding(self, now: float) -> Iterator[Lease]:
        """The leases in force at ``now`` (active or under notice)."""
        return (lease for lease in self.leases if lease.status(now) in HOLDING)

    def tenant_nodes(self, now: float) -> dict[str, set[str]]:
        """Tenant -> the nodes its leases in force hold at ``now`` (every tenant listed)."""
        out: dict[str, set[str]] = {t: set() for t in self.tenants}
        for lease in self.holding(now):
            out.setdefault(lease.tenant, set()).update(lease.nodes)
        return out

    def has_quota(self, resource: str) -> bool:
        """Whether any tenant has a quota on ``resource``."""
        return any(r == resource for _, r in self.quotas)

    def tree(self, resource: str) -> QuotaTree:
        """The quota tree of ``resource``, of the tenants with a quota on it.

        A tenant without a quota row on a resource is not governed on it: it neither counts
        against its cohort nor borrows (give it ``nominal = 0`` to let it use only what its
        cohort lends, as in Kueue).
        """
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}: one of {', '.join(RESOURCES)}")
        tenants = {
            t: (self.quotas[(t, resource)].quota, c)
            for t, c in self.tenants.items()
            if (t, resource) in self.quotas
        }
        cohorts = {c: self.cohort_quotas.get((c, resource), Quota(0.0)) for c in self.cohorts}
        return QuotaTree(tenants, cohorts, self.cohort_parents)

    def period_of(self, tenant: str) -> Period:
        """The GPU-hours period of ``tenant`` (``month`` unless its quota says otherwise)."""
        q = self.quotas.get((tenant, "gpu_hours"))
        return q.period if q is not None and q.period is not None else "month"

    def node_leases(self, nodes: Iterable[str]) -> dict[str, list[Lease]]:
        """Node -> the leases naming it (any status)."""
        wanted = set(nodes)
        out: dict[str, list[Lease]] = {}
        for lease in self.leases:
            for n in lease.nodes:
                if n in wanted:
                    out.setdefault(n, []).append(lease)
        return out
