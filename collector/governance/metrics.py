"""Quota standings as Prometheus families for the collector's ``/metrics``.

One series per tenant, resource and basis (``allocated``: what the tenant's active leases
hold; ``measured``: what its nodes use), as ``collector quota show`` prints them: nominal
quota, in use, borrowed, lendable, available now. Tenants number in the tens to hundreds,
never per node or GPU. Nothing before the governance job's first evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.governance.report import QuotaStanding

__all__ = ["quota_families"]

_LABELS = ["tenant", "resource", "basis"]
_FIELDS = (
    ("nominal", "The tenant's nominal quota (Kueue's nominalQuota)."),
    ("in_use", "What the tenant uses, on the basis the label names."),
    ("borrowed", "Use beyond the nominal quota, taken from the cohort's unused quota."),
    ("lendable", "Unused quota the tenant can lend to its cohort."),
    ("available", "What the tenant may still take now, borrowing included."),
)


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
