"""Quota figures per tenant, resource and basis: what ``collector quota show`` prints and the
quota rules judge.

Pure. A :class:`QuotaStanding` is one tenant's standing on one resource on one basis: its
nominal quota, what it uses, what it borrows, what it lends, what it may still take, what it
may hold given the others' use (its limit), and the band the quota rules alert on
(:func:`band`). A :class:`CohortStanding` is a cohort whose members hold more than it has
(:func:`overcommitted`): the ``CohortOvercommitted`` rule, ``quota show`` and ``/metrics``
read the same list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from collector.governance.quota import RESOURCES
from collector.governance.state import Governance
from collector.governance.usage import Usage

__all__ = ["Band", "CohortStanding", "QuotaStanding", "band", "overcommitted", "standings"]

Band = Literal["ok", "high", "full", "exceeded"]


@dataclass(frozen=True, slots=True)
class QuotaStanding:
    """One tenant, one resource, one basis."""

    tenant: str
    cohort: str | None
    resource: str
    basis: str
    nominal: float
    in_use: float
    borrowed: float
    lendable: float
    available: float
    potential: float
    borrowing_limit: float | None
    lending_limit: float | None
    period: str | None
    limit: float = 0.0
    """What it may hold given the others' use: nominal plus what it may borrow now."""

    @property
    def pct(self) -> float | None:
        """Use in percent of nominal (``None`` when the nominal is 0)."""
        return None if self.nominal <= 0 else 100.0 * self.in_use / self.nominal

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``pct`` and ``band``."""
        d = asdict(self)
        pct = self.pct
        d["pct"] = None if pct is None else round(pct, 1)
        d["band"] = band(self)
        for key in ("in_use", "borrowed", "lendable", "available", "potential", "limit"):
            d[key] = round(d[key], 3)
        return d


def band(s: QuotaStanding, *, high_pct: float = 90.0) -> Band:
    """``exceeded``: its own use is beyond its nominal plus what it may borrow (its
    :attr:`~QuotaStanding.limit`), never because a neighbour is over; ``full``: at or past
    its nominal; ``high``: at ``high_pct`` % of its nominal or more; ``ok`` otherwise."""
    if s.in_use > s.limit + 1e-9:
        return "exceeded"
    if s.in_use <= 0:
        return "ok"
    if s.in_use >= s.nominal:
        return "full"
    if s.in_use * 100.0 >= high_pct * s.nominal:
        return "high"
    return "ok"


def standings(
    gov: Governance,
    usages: Iterable[Usage],
    *,
    tenants: Iterable[str] | None = None,
    resources: Iterable[str] = RESOURCES,
) -> list[QuotaStanding]:
    """Standings of ``tenants`` (default all) on the resources they have a quota on."""
    wanted = sorted(gov.tenants) if tenants is None else list(tenants)
    out: list[QuotaStanding] = []
    usage_list = list(usages)
    for resource in resources:
        if not gov.has_quota(resource):
            continue
        tree = gov.tree(resource)
        for usage in usage_list:
            use: Mapping[str, float] = usage.of(resource)
            for tenant in wanted:
                q = gov.quotas.get((tenant, resource))
                if q is None:
                    continue  # not governed on this resource
                f = tree.figures(tenant, use)
                out.append(
                    QuotaStanding(
                        tenant=tenant,
                        cohort=f.cohort,
                        resource=resource,
                        basis=usage.basis,
                        nominal=f.nominal,
                        in_use=f.usage,
                        borrowed=f.borrowed,
                        lendable=f.lendable,
                        available=f.available,
                        potential=f.potential,
                        borrowing_limit=f.borrowing_limit,
                        lending_limit=None if q is None else q.quota.lending_limit,
                        period=(q.period or "month") if resource == "gpu_hours" and q else None,
                        limit=f.limit,
                    )
                )
    return out


@dataclass(frozen=True, slots=True)
class CohortStanding:
    """A cohort whose members hold more than it has, on one resource and basis."""

    cohort: str
    resource: str
    basis: str
    quota: float
    """Its subtree quota: its own nominal plus what its members put in."""
    in_use: float
    """Its members' usage beyond their local quotas."""
    over: tuple[str, ...]
    """The members over their own nominal plus what they may borrow."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["over"] = list(self.over)
        d["quota"], d["in_use"] = round(self.quota, 3), round(self.in_use, 3)
        return d


def overcommitted(gov: Governance, usages: Iterable[Usage]) -> list[CohortStanding]:
    """The cohorts whose members hold more than they have, per resource and basis."""
    out: list[CohortStanding] = []
    usage_list = list(usages)
    for resource in RESOURCES:
        if not gov.has_quota(resource):
            continue
        tree = gov.tree(resource)
        for usage in usage_list:
            use = usage.of(resource)
            for cohort in tree.cohorts():
                over = tree.overcommit(cohort, use)
                if over is None:
                    continue
                under = tree.tenants_under(cohort)
                members = tuple(t for t in under if tree.figures(t, use).exceeded)
                out.append(CohortStanding(cohort, resource, usage.basis, *over, members))
    return out
