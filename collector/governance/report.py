"""Quota figures per tenant, resource and basis: what ``collector quota show`` prints and the
quota rules judge.

Pure. A :class:`QuotaStanding` is one tenant's standing on one resource on one basis: its
nominal quota, what it uses, what it borrows, what it lends, what it may still take, and the
band the quota rules alert on (:func:`band`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from collector.governance.quota import RESOURCES
from collector.governance.state import Governance
from collector.governance.usage import Usage

__all__ = ["Band", "QuotaStanding", "band", "standings"]

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
        for key in ("in_use", "borrowed", "lendable", "available", "potential"):
            d[key] = round(d[key], 3)
        return d


def band(s: QuotaStanding, *, high_pct: float = 90.0) -> Band:
    """``exceeded``: beyond its borrowing limit or what the cohort lends (available < 0);
    ``full``: at or past its nominal (borrowing from here on); ``high``: at ``high_pct`` %
    of its nominal or more; ``ok`` otherwise."""
    if s.available < -1e-9:
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
                    )
                )
    return out
