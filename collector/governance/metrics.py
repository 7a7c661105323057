"""Quota standings as Prometheus families for the collector's ``/metrics``.

One series per tenant, resource and basis (``allocated``: what the tenant's active leases
hold; ``measured``: what its nodes use), as ``collector quota show`` prints them: nominal
quota, in use, borrowed, lendable, available now (never below 0), and its limit (nominal plus
what it may borrow given the others' use); per cohort, resource and basis,
``capwatch_cohort_overcommitted`` (1 while its members hold more than it has, else 0) with
its quota and use. Tenants number in the tens to hundreds, never per node or GPU. Nothing
before the governance job's first evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.governance.report import CohortStanding, QuotaStanding

__all__ = ["cohort_families", "quota_families"]

_LABELS = ["tenant", "resource", "basis"]
_FIELDS = (
    ("nominal", "The tenant's nominal quota (Kueue's nominalQuota)."),
    ("in_use", "What the tenant uses, on the basis the label names."),
    ("borrowed", "Use beyond the nominal quota, taken from the cohort's unused quota."),
    ("lendable", "Unused quota the tenant can lend to its cohort."),
    ("available", "What the tenant may still take now, borrowing included (never below 0)."),
    ("limit", "What the tenant may hold given the others' use: nominal plus what it may borrow."),
)
_COHORT_LABELS = ["cohort", "resource", "basis"]


def quota_families(standings: Sequence[QuotaStanding]) -> list[Metric]:
    """``capwatch_quota_<field>{tenant,resource,basis}`` for each standing."""
    if not standings:
        return []
    families = {
        name: GaugeMetricFamily(f"capwatch_quota_{name}", doc, labels=_LABELS)
        for name, doc in _FIELDS
    }
    for s in standings:
        labels = [s.tenant, s.resource, s.basis]
        for name, family in families.items():
            family.add_metric(labels, float(getattr(s, name)))
    return list(families.values())


def cohort_families(
    standings: Sequence[QuotaStanding], overcommitted: Sequence[CohortStanding]
) -> list[Metric]:
    """``capwatch_cohort_overcommitted{cohort,resource,basis}`` for every cohort with a
    governed member (1 while overcommitted), and the overcommitted ones' quota and use."""
    seen = sorted({(s.cohort, s.resource, s.basis) for s in standings if s.cohort is not None})
    if not seen:
        return []
    flag = GaugeMetricFamily(
        "capwatch_cohort_overcommitted",
        "1 while the cohort's members hold more than its subtree quota, else 0.",
        labels=_COHORT_LABELS,
    )
    quota = GaugeMetricFamily(
        "capwatch_cohort_quota",
        "An overcommitted cohort's subtree quota (own nominal plus what members put in).",
        labels=_COHORT_LABELS,
    )
    used = GaugeMetricFamily(
        "capwatch_cohort_in_use",
        "An overcommitted cohort's usage (members' use beyond their local quotas).",
        labels=_COHORT_LABELS,
    )
    over = {(c.cohort, c.resource, c.basis): c for c in overcommitted}
    for key in seen:
        labels = [str(k) for k in key]
        c = over.get(key)
        flag.add_metric(labels, 0.0 if c is None else 1.0)
        if c is not None:
            quota.add_metric(labels, c.quota)
            used.add_metric(labels, c.in_use)
    return [flag, quota, used]
