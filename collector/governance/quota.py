"""Quota arithmetic with Kueue's semantics: nominal quota, borrowing and lending limits, cohorts.

Pure: quotas and usage in, figures out. One resource at a time (GPUs, power kW, GPU-hours);
a tenant is Kueue's ClusterQueue, a cohort its Cohort. The arithmetic is Kueue's own
(kubernetes-sigs/kueue ``pkg/cache/scheduler/resource_node.go``), for a flat cohort (no
cohort of cohorts):

* a tenant's **local quota** is ``max(0, nominal - lendingLimit)`` when it has a lending
  limit, else 0: capacity only it can use, never lent;
* a cohort's **subtree quota** is its own nominal plus, per member, ``nominal - local``
  (what the member puts in the cohort); its **usage** is, per member, the usage beyond the
  member's local quota;
* a member's **available** is ``max(0, local - usage) + parent``, where ``parent`` is the
  cohort's ``subtree - usage``, capped when the member has a borrowing limit at
  ``(nominal - local) - max(0, usage - local) + borrowingLimit``; a tenant in no cohort has
  ``nominal - usage``. Never below 0, as Kueue's ``ClusterQueueSnapshot.Available``: a
  member whose neighbour was let over (``--force``, a quota lowered under running use) has
  nothing available, not a debt.
* a member's **limit** (:meth:`QuotaTree.limit`) is what it may hold given the others' use:
  its nominal quota (guaranteed: Kueue's ``reclaimWithinCohort`` gives back what others
  borrowed of it) or, if more, what ``available`` would leave it were it idle; a member
  holding more is over its nominal plus what it may borrow (``QuotaExceeded``);
* a cohort is **overcommitted** (:meth:`QuotaTree.overcommit`) when its members' usage
  beyond their local quotas exceeds its subtree quota.

So, with one resource (the cases of Kueue's documentation, all tests): A 9 and B 12 in a
cohort, B idle: A may use 21; with A's borrowing limit 1, A may use 10; with B's lending
limit 1, A may use 10 while B uses at most 11; a cohort's own 12 serve a member of nominal 0.

**Who lends** (:meth:`QuotaTree.check`): Kueue does not say from whose quota a borrower
takes; capwatch attributes new borrowing to the cohort's own unused quota first, then to the
members with the most unused lendable quota (ties by name): a statement of where the room
came from, not a reservation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["MAX_QUOTA", "RESOURCES", "Admission", "Figures", "Quota", "QuotaTree"]

RESOURCES: Final = ("gpus", "power_kw", "gpu_hours")
"""The resources a quota can bound: GPUs, live power in kW, GPU-hours per period."""
MAX_QUOTA: Final = 1e12
"""Largest quota or limit a command accepts: sums over a cohort stay finite (two tenants
at 1e308 made `available` infinite and `--json` print `Infinity`, which is not JSON)."""


@dataclass(frozen=True, slots=True)
class Quota:
    """One tenant's (or cohort's) quota on one resource; ``None`` limits are unbounded."""

    nominal: float
    borrowing_limit: float | None = None
    lending_limit: float | None = None

    def __post_init__(self) -> None:
        for name in ("nominal", "borrowing_limit", "lending_limit"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be a number >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class Figures:
    """A tenant's standing on one resource at the given usage."""

    tenant: str
    nominal: float
    usage: float
    borrowed: float
    """Usage beyond the nominal quota (taken from the cohort)."""
    lendable: float
    """The tenant's unused quota that its cohort may borrow (within its lending limit),
    whether or not someone borrows it at the moment."""
    available: float
    """How much more it may take now (Kueue's ``Available``, never below 0)."""
    potential: float
    """How much it could use with every other member idle (Kueue's potentialAvailable)."""
    borrowing_limit: float | None
    cohort: str | None
    limit: float = 0.0
    """What it may hold given the others' use: its nominal plus what it may borrow."""

    @property
    def exceeded(self) -> bool:
        """Whether it holds more than its nominal plus what it may borrow."""
        return self.usage > self.limit + 1e-9


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may ``tenant`` take ``amount`` more?"."""

    tenant: str
    amount: float
    admitted: bool
    available: float
    from_own: float
    """Of ``amount``, what fits in the tenant's own nominal quota."""
    borrowed: float
    """Of ``amount``, what it takes beyond its nominal quota."""
    lenders: list[tuple[str, float]] = field(default_factory=list)
    """Whose unused quota the borrowed part comes from (``<cohort>``: the cohort's own)."""
    reclaimable: float = 0.0
    """When refused: how much of the tenant's own nominal quota others borrow now, which
    Kueue's ``reclaimWithinCohort`` preemption would give back."""


@dataclass(frozen=True, slots=True)
class _Member:
    quota: Quota
    cohort: str | None

    @property
    def local(self) -> float:
        """Kueue's localQuota: guaranteed, never lent."""
        ll = self.quota.lending_limit
        return 0.0 if ll is None else max(0.0, self.quota.nominal - ll)

    @property
    def stored(self) -> float:
        """What the member puts in its cohort (``subtree - local``)."""
        return self.quota.nominal - self.local


class QuotaTree:
    """Tenants' quotas on one resource, grouped in flat cohorts (each with its own nominal).

    ``tenants``: name -> (quota, cohort name or ``None``); ``cohorts``: name -> the cohort's
    own nominal quota. A tenant naming an unknown cohort is in a cohort of nominal 0.
    """

    def __init__(
        self,
        tenants: Mapping[str, tuple[Quota, str | None]],
        cohorts: Mapping[str, float] | None = None,
    ) -> None:
        self._members = {name: _Member(q, c) for name, (q, c) in tenants.items()}
        self._cohorts: dict[str, float] = dict(cohorts or {})
        for m in self._members.values():
            if m.cohort is not None:
                self._cohorts.setdefault(m.cohort, 0.0)
        self._by_cohort: dict[str, list[str]] = {c: [] for c in self._cohorts}
        for name, m in sorted(self._members.items()):
            if m.cohort is not None:
                self._by_cohort[m.cohort].append(name)

    @property
    def tenants(self) -> list[str]:
        """Tenant names, sorted."""
        return sorted(self._members)

    def members(self, cohort: str) -> list[str]:
        """The tenants of ``cohort``, sorted."""
        return list(self._by_cohort.get(cohort, ()))

    def _member(self, tenant: str) -> _Member:
        m = self._members.get(tenant)
        if m is None:
            raise KeyError(tenant)
        return m

    def _used_in_parent(self, name: str, usage: Mapping[str, float]) -> float:
        m = self._members[name]
        return max(0.0, _use(usage, name) - m.local)

    def cohort_subtree(self, cohort: str) -> float:
        """The cohort's subtree quota: its own nominal plus what its members put in."""
        own = self._cohorts.get(cohort, 0.0)
        return own + sum(self._members[n].stored for n in self._by_cohort.get(cohort, ()))

    def cohort_usage(self, cohort: str, usage: Mapping[str, float]) -> float:
        """Members' usage beyond their local quotas, which counts against the cohort."""
        return sum(self._used_in_parent(n, usage) for n in self._by_cohort.get(cohort, ()))

    def available(self, tenant: str, usage: Mapping[str, float]) -> float:
        """Kueue's ``ClusterQueueSnapshot.Available``: how much more ``tenant`` may take now,
        never below 0."""
        return max(0.0, self._available(tenant, usage))

    def limit(self, tenant: str, usage: Mapping[str, float]) -> float:
        """What ``tenant`` may hold given the others' use in ``usage``: the more of its
        nominal quota and what it could take were it idle."""
        idle = dict(usage)
        idle[tenant] = 0.0
        return max(self._member(tenant).quota.nominal, self._available(tenant, idle))

    def overcommit(self, cohort: str, usage: Mapping[str, float]) -> tuple[float, float] | None:
        """(subtree quota, usage) of ``cohort`` when its members hold more than it has."""
        subtree = self.cohort_subtree(cohort)
        used = self.cohort_usage(cohort, usage)
        return (subtree, used) if used > subtree + 1e-9 else None

    def cohorts(self) -> list[str]:
        """Cohort names, sorted."""
        return sorted(self._cohorts)

    def _available(self, tenant: str, usage: Mapping[str, float]) -> float:
        """Kueue's ``available(node)``, unclamped: negative when over-admitted."""
        m = self._member(tenant)
        used = _use(usage, tenant)
        if m.cohort is None:
            return m.quota.nominal - used
        parent = self.cohort_subtree(m.cohort) - self.cohort_usage(m.cohort, usage)
        bl = m.quota.borrowing_limit
        if bl is not None:
            parent = min(parent, m.stored - max(0.0, used - m.local) + bl)
        return max(0.0, m.local - used) + parent

    def potential(self, tenant: str) -> float:
        """Kueue's ``potentialAvailable``: the most ``tenant`` could use, others idle."""
        m = self._member(tenant)
        if m.cohort is None:
            return m.quota.nominal
        most = m.local + self.cohort_subtree(m.cohort)
        bl = m.quota.borrowing_limit
        if bl is not None:
            most = min(most, m.quota.nominal + bl)
        return most

    def lendable(self, tenant: str, usage: Mapping[str, float]) -> float:
        """The part of ``tenant``'s quota in its cohort that it does not use now."""
        m = self._member(tenant)
        if m.cohort is None:
            return 0.0
        return max(0.0, m.stored - self._used_in_parent(tenant, usage))

    def figures(self, tenant: str, usage: Mapping[str, float]) -> Figures:
        """``tenant``'s nominal, usage, borrowed, lendable, available and potential."""
        m = self._member(tenant)
        used = _use(usage, tenant)
        return Figures(
            tenant=tenant,
            nominal=m.quota.nominal,
            usage=used,
            borrowed=max(0.0, used - m.quota.nominal),
            lendable=self.lendable(tenant, usage),
            available=self.available(tenant, usage),
            potential=self.potential(tenant),
            borrowing_limit=m.quota.borrowing_limit,
            cohort=m.cohort,
            limit=self.limit(tenant, usage),
        )

    def check(self, tenant: str, amount: float, usage: Mapping[str, float]) -> Admission:
        """Would ``amount`` more be admitted for ``tenant``, and from whose unused quota."""
        m = self._member(tenant)
        used = _use(usage, tenant)
        available = self.available(tenant, usage)
        admitted = amount <= available
        own_room = max(0.0, m.quota.nominal - used)
        from_own = min(amount, own_room)
        borrowed = amount - from_own
        lenders: list[tuple[str, float]] = []
        if admitted and borrowed > 0 and m.cohort is not None:
            lenders = self._lenders(tenant, m.cohort, borrowed, usage)
        reclaimable = 0.0
        if not admitted and m.cohort is not None and own_room > 0:
            others_borrow = sum(
                max(0.0, _use(usage, n) - self._members[n].quota.nominal)
                for n in self._by_cohort[m.cohort]
                if n != tenant
            )
            reclaimable = min(own_room, others_borrow)
        return Admission(
            tenant, amount, admitted, available, from_own, borrowed, lenders, reclaimable
        )

    def _lenders(
        self, tenant: str, cohort: str, borrowed: float, usage: Mapping[str, float]
    ) -> list[tuple[str, float]]:
        names = self._by_cohort[cohort]
        free = self.cohort_subtree(cohort) - self.cohort_usage(cohort, usage)
        lend = {n: self.lendable(n, usage) for n in names if n != tenant}
        own_lent = self.lendable(tenant, usage)
        cohort_own = max(0.0, free - sum(lend.values()) - own_lent)
        out: list[tuple[str, float]] = []
        left = borrowed
        take = min(left, cohort_own)
        if take > 0:
            out.append((f"<{cohort}>", take))
            left -= take
        for name, room in sorted(lend.items(), key=lambda kv: (-kv[1], kv[0])):
            if left <= 0:
                break
            take = min(left, room)
            if take > 0:
                out.append((name, take))
                left -= take
        return out


def _use(usage: Mapping[str, float], tenant: str) -> float:
    return max(0.0, float(usage.get(tenant, 0.0)))
