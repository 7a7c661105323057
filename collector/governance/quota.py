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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "COUNTED",
    "FIGURES",
    "MAX_QUOTA",
    "RESOURCES",
    "Admission",
    "Figures",
    "Quota",
    "QuotaTree",
    "check_figure",
    "find_cycle",
]

RESOURCES: Final = ("gpus", "power_kw", "gpu_hours")
"""The resources a quota can bound: GPUs, live power in kW, GPU-hours per period."""
MAX_QUOTA: Final = 1e12
"""Largest quota or limit a command accepts: sums over a cohort stay finite (two tenants
at 1e308 made `available` infinite and `--json` print `Infinity`, which is not JSON)."""
FIGURES: Final = ("nominal", "borrowing_limit", "lending_limit")
"""A quota's figures, as :class:`Quota` names them (Kueue's ``nominalQuota``,
``borrowingLimit``, ``lendingLimit``): what :func:`check_figure` judges, each."""
COUNTED: Final = frozenset({"gpus"})
"""Resources counted in whole units: a GPU quota is Kueue's ``nominalQuota`` of
``nvidia.com/gpu``, an extended resource, which Kubernetes allows only in whole numbers
(a ClusterQueue with ``nominalQuota: '1.5'`` for it is refused)."""


def check_figure(resource: str, value: float) -> None:
    """Refuse ``value`` as a quota figure (nominal, borrowing or lending limit) of
    ``resource``: ``ValueError`` saying what it must be (the caller names the flag or key).
    The one rule for ``collector quota set`` and ``collector apply`` files."""
    if not math.isfinite(value) or not 0 <= value <= MAX_QUOTA:
        raise ValueError(f"must be a number from 0 to {MAX_QUOTA:g}, got {value:g}")
    if resource in COUNTED and not float(value).is_integer():
        raise ValueError(
            f"must be a whole number of {resource} (Kubernetes counts them in whole units), "
            f"got {value:g}"
        )


@dataclass(frozen=True, slots=True)
class Quota:
    """One tenant's (or cohort's) quota on one resource; ``None`` limits are unbounded."""

    nominal: float
    borrowing_limit: float | None = None
    lending_limit: float | None = None

    def __post_init__(self) -> None:
        for name in FIGURES:
            value = getattr(self, name)
            if value is not None and not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be a number >= 0, got {value}")
            if value == 0:  # -0 is 0 (it printed as "-0")
                object.__setattr__(self, name, 0.0)


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


@dataclass(slots=True)
class _Node:
    """A tenant (Kueue's ClusterQueue) or a cohort in the tree, with its fixed quantities."""

    name: str
    quota: Quota
    parent: str | None
    is_tenant: bool
    children: list[str] = field(default_factory=list)
    """Child cohorts, then tenants (keys of the tree's node table)."""
    subtree: float = 0.0
    local: float = 0.0

    @property
    def stored(self) -> float:
        """What the node puts in its parent (``subtree - local``)."""
        return self.subtree - self.local


def _key(name: str, is_tenant: bool) -> str:
    # Tenants and cohorts have separate name spaces (a tenant may share a cohort's name).
    return f"t:{name}" if is_tenant else f"c:{name}"


def find_cycle(parents: Mapping[str, str | None]) -> list[str] | None:
    """The first cohort cycle in ``parents`` (cohort -> parent), as the cohorts along it
    with the first repeated at the end (``a -> b -> a``), or ``None``."""
    for start in sorted(parents):
        seen: list[str] = []
        node: str | None = start
        while node is not None and node not in seen:
            seen.append(node)
            node = parents.get(node)
        if node is not None:
            return [*seen[seen.index(node) :], node]
    return None


class QuotaTree:
    """Tenants' quotas on one resource in a tree of cohorts (Kueue's hierarchical cohorts).

    ``tenants``: name -> (quota, cohort name or ``None``); ``cohorts``: name -> the cohort's
    own quota (a :class:`Quota`, or a number: its nominal); ``parents``: cohort -> its
    parent cohort. A name used as a cohort or parent without an entry is a cohort of
    nominal 0. A cohort's borrowing and lending limits apply only when it has a parent, as
    in Kueue. Cohorts on a cycle of parents are cut loose from their parents (Kueue disables
    them until the cycle is removed; the commands refuse to write one, :func:`find_cycle`).
    """

    def __init__(
        self,
        tenants: Mapping[str, tuple[Quota, str | None]],
        cohorts: Mapping[str, float | Quota] | None = None,
        parents: Mapping[str, str | None] | None = None,
    ) -> None:
        own = {
            c: q if isinstance(q, Quota) else Quota(float(q)) for c, q in (cohorts or {}).items()
        }
        links = dict(parents or {})
        names = set(own) | set(links) | {p for p in links.values() if p is not None}
        names |= {c for _, c in tenants.values() if c is not None}
        cycle = find_cycle(links)
        while cycle is not None:
            for c in cycle:
                links[c] = None
            cycle = find_cycle(links)
        self._nodes: dict[str, _Node] = {}
        for name in sorted(names):
            self._nodes[_key(name, False)] = _Node(
                name, own.get(name, Quota(0.0)), links.get(name), False
            )
        for t, (q, cohort) in sorted(tenants.items()):
            self._nodes[_key(t, True)] = _Node(t, q, cohort, True)
        for k, n in self._nodes.items():
            if n.parent is not None:
                self._nodes[_key(n.parent, False)].children.append(k)
        self._roots = [k for k, n in self._nodes.items() if n.parent is None]
        for k in self._roots:
            self._settle(k)

    def _settle(self, key: str) -> None:
        """Kueue's ``updateCohortResourceNode``: subtree and local quota, bottom up."""
        n = self._nodes[key]
        n.subtree = n.quota.nominal
        for child in n.children:
            self._settle(child)
            n.subtree += self._nodes[child].stored
        ll = n.quota.lending_limit
        # A root's lending limit has nowhere to lend to: everything stays local to it.
        n.local = 0.0 if ll is None or n.parent is None else max(0.0, n.subtree - ll)

    # -- structure

    @property
    def tenants(self) -> list[str]:
        """Tenant names, sorted."""
        return sorted(n.name for n in self._nodes.values() if n.is_tenant)

    def cohorts(self) -> list[str]:
        """Cohort names, sorted."""
        return sorted(n.name for n in self._nodes.values() if not n.is_tenant)

    def parent(self, cohort: str) -> str | None:
        """``cohort``'s parent cohort."""
        return self._cohort(cohort).parent

    def children(self, cohort: str) -> tuple[list[str], list[str]]:
        """``cohort``'s child cohorts and tenants, each sorted."""
        kids = [self._nodes[k] for k in self._cohort(cohort).children]
        return (
            sorted(n.name for n in kids if not n.is_tenant),
            sorted(n.name for n in kids if n.is_tenant),
        )

    def roots(self) -> tuple[list[str], list[str]]:
        """The cohorts without a parent and the tenants in no cohort, each sorted."""
        top = [self._nodes[k] for k in self._roots]
        return (
            sorted(n.name for n in top if not n.is_tenant),
            sorted(n.name for n in top if n.is_tenant),
        )

    def members(self, cohort: str) -> list[str]:
        """The tenants directly in ``cohort``, sorted."""
        return self.children(cohort)[1]

    def tenants_under(self, cohort: str) -> list[str]:
        """Every tenant in ``cohort``'s subtree, sorted."""
        out: list[str] = []
        stack = [_key(cohort, False)]
        while stack:
            n = self._nodes[stack.pop()]
            if n.is_tenant:
                out.append(n.name)
            stack.extend(n.children)
        return sorted(out)

    def _member(self, tenant: str) -> _Node:
        n = self._nodes.get(_key(tenant, True))
        if n is None:
            raise KeyError(tenant)
        return n

    def _cohort(self, cohort: str) -> _Node:
        n = self._nodes.get(_key(cohort, False))
        if n is None:
            raise KeyError(cohort)
        return n

    # -- usage

    def _usages(self, usage: Mapping[str, float], idle: str | None = None) -> dict[str, float]:
        """Node key -> Kueue's ``Usage``: a tenant's own, a cohort's its children's usage
        past their local quotas. ``idle``: a node key counted as using nothing."""
        out: dict[str, float] = {}

        def walk(key: str) -> float:
            n = self._nodes[key]
            if n.is_tenant:
                u = _use(usage, n.name)
            else:
                u = 0.0
                for child in n.children:
                    cu = walk(child)
                    u += max(0.0, cu - self._nodes[child].local)
            if key == idle:
                u = 0.0
            out[key] = u
            return u

        for root in self._roots:
            walk(root)
        return out

    def _avail(self, key: str, used: Mapping[str, float]) -> float:
        """Kueue's ``available(node)``, unclamped (negative: over-admitted)."""
        n = self._nodes[key]
        u = used[key]
        if n.parent is None:
            return n.subtree - u
        parent = self._avail(_key(n.parent, False), used)
        bl = n.quota.borrowing_limit
        if bl is not None:
            parent = min(parent, n.stored - max(0.0, u - n.local) + bl)
        return max(0.0, n.local - u) + parent

    def _potential(self, key: str) -> float:
        n = self._nodes[key]
        if n.parent is None:
            return n.subtree
        most = n.local + self._potential(_key(n.parent, False))
        bl = n.quota.borrowing_limit
        if bl is not None:
            most = min(most, n.subtree + bl)
        return most

    def cohort_subtree(self, cohort: str) -> float:
        """The cohort's subtree quota: its own nominal plus what its children put in."""
        return self._cohort(cohort).subtree

    def cohort_usage(self, cohort: str, usage: Mapping[str, float]) -> float:
        """Children's usage beyond their local quotas, which counts against the cohort."""
        return self._usages(usage)[_key(cohort, False)]

    def available(self, tenant: str, usage: Mapping[str, float]) -> float:
        """Kueue's ``ClusterQueueSnapshot.Available``: how much more ``tenant`` may take now,
        never below 0."""
        key = _key(self._member(tenant).name, True)
        return max(0.0, self._avail(key, self._usages(usage)))

    def _available(self, tenant: str, usage: Mapping[str, float]) -> float:
        key = _key(self._member(tenant).name, True)
        return self._avail(key, self._usages(usage))

    def limit(self, tenant: str, usage: Mapping[str, float]) -> float:
        """What ``tenant`` may hold given the others' use in ``usage``: the more of its
        nominal quota and what it could take were it idle."""
        key = _key(self._member(tenant).name, True)
        idle = self._avail(key, self._usages(usage, idle=key))
        return max(self._nodes[key].quota.nominal, idle)

    def cohort_available(self, cohort: str, usage: Mapping[str, float]) -> float:
        """What ``cohort``'s subtree may still take (Kueue's ``available`` of the cohort,
        never below 0)."""
        key = _key(cohort, False)
        self._cohort(cohort)
        return max(0.0, self._avail(key, self._usages(usage)))

    def overcommit(self, cohort: str, usage: Mapping[str, float]) -> tuple[float, float] | None:
        """(what ``cohort`` may hold, its usage) when its members hold more: its usage beyond
        the more of its subtree quota and what it could take were its subtree idle."""
        key = _key(cohort, False)
        n = self._cohort(cohort)
        used = self._usages(usage)[key]
        most = max(n.subtree, self._avail(key, self._usages(usage, idle=key)))
        return (most, used) if used > most + 1e-9 else None

    def potential(self, tenant: str) -> float:
        """Kueue's ``potentialAvailable``: the most ``tenant`` could use, others idle."""
        return self._potential(_key(self._member(tenant).name, True))

    def cohort_figures(self, cohort: str, usage: Mapping[str, float]) -> dict[str, float | None]:
        """A cohort's own quota and limits, subtree and local (guaranteed) quota, usage and
        available: what ``quota show --tree`` prints for it."""
        n = self._cohort(cohort)
        key = _key(cohort, False)
        used = self._usages(usage)
        return {
            "nominal": n.quota.nominal,
            "borrowing_limit": n.quota.borrowing_limit,
            "lending_limit": n.quota.lending_limit,
            "subtree": n.subtree,
            "guaranteed": n.local,
            "in_use": used[key],
            "available": max(0.0, self._avail(key, used)),
        }

    def lendable(self, tenant: str, usage: Mapping[str, float]) -> float:
        """The part of ``tenant``'s quota in its cohort that it does not use now."""
        m = self._member(tenant)
        if m.parent is None:
            return 0.0
        return max(0.0, m.stored - max(0.0, _use(usage, tenant) - m.local))

    def figures(self, tenant: str, usage: Mapping[str, float]) -> Figures:
        """``tenant``'s nominal, usage, borrowed, lendable, available, potential and limit."""
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
            cohort=m.parent,
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
        if admitted and borrowed > 0 and m.parent is not None:
            lenders = self._lenders(tenant, m.parent, borrowed, usage)
        reclaimable = 0.0
        if not admitted and m.parent is not None and own_room > 0:
            others_borrow = sum(
                max(0.0, _use(usage, n) - self._member(n).quota.nominal)
                for n in self.members(m.parent)
                if n != tenant
            )
            reclaimable = min(own_room, others_borrow)
        return Admission(
            tenant, amount, admitted, available, from_own, borrowed, lenders, reclaimable
        )

    def _lenders(
        self, tenant: str, cohort: str, borrowed: float, usage: Mapping[str, float]
    ) -> list[tuple[str, float]]:
        c = self._cohort(cohort)
        names = self.members(cohort)
        used = self._usages(usage)
        # The room inside the cohort itself (its own quota and what its children put in),
        # before anything comes from above it.
        free = max(0.0, c.subtree - used[_key(cohort, False)])
        lend = {n: self.lendable(n, usage) for n in names if n != tenant}
        own_lent = self.lendable(tenant, usage)
        cohort_own = max(0.0, min(c.quota.nominal, free - sum(lend.values()) - own_lent))
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
        if left > 1e-9 and c.parent is not None:
            out.append((f"<{c.parent}>", left))  # from above the cohort
        return out


def _use(usage: Mapping[str, float], tenant: str) -> float:
    return max(0.0, float(usage.get(tenant, 0.0)))
