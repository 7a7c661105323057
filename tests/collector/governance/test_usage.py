"""Tenants' usage: the allocated GPU-hours of a quota period are the contract's."""

from __future__ import annotations

import datetime as dt

from collector.governance.billing import allocated_days
from collector.governance.lease import LeaseTerms, instant
from collector.governance.periods import period_start
from collector.governance.state import Governance, Lease
from collector.governance.usage import allocated_usage, held
from collector.store.ledger import PoolHistory

D = dt.date
GPUS = {"n1": 8, "n2": 4, "n3": 2}


def _gov() -> Governance:
    notice = LeaseTerms(D(2026, 2, 1), 180, notice_given=D(2026, 3, 5), notice_days=7)
    leases = [
        # In Zurich's zone, started mid-month: held from its local midnight (23:00 UTC).
        Lease(1, "zurich", "a", None, ("n1",), LeaseTerms(D(2026, 3, 10), 90, tz="Europe/Zurich")),
        # Cancelled: ends with its notice, inside the month.
        Lease(2, "short", "a", None, ("n2",), notice),
        # Not started yet.
        Lease(3, "later", "b", None, ("n3",), LeaseTerms(D(2026, 4, 1), 30)),
    ]  # fmt: skip
    return Governance(tenants={"a": None, "b": None}, leases=leases)


def test_allocated_gpu_hours_are_what_the_ledger_bills_for_the_period() -> None:
    """quota show's allocated GPU-hours so far this month are the GPU-hours the usage
    ledger allocates each lease over the same hours: leases cut at their zone's midnights
    and at their notice's end, a lease not started holding none."""
    gov = _gov()
    now = instant(D(2026, 3, 20), "UTC") + 5 * 3600.0
    usage = allocated_usage(gov, {n: (g, 0.0) for n, g in GPUS.items()}, now)
    since = period_start("month", now)
    billed = allocated_days(gov.leases, GPUS, PoolHistory(), since, now)
    for tenant in ("a", "b"):
        ledger = sum(h for (_, t, _, _), h in billed.items() if t == tenant)
        assert usage.of("gpu_hours")[tenant] == ledger, tenant
    # By hand: n1 from Mar 9 23:00 UTC (10 days 6 hours), n2 from Mar 1 to Mar 12 (11 days).
    assert usage.of("gpu_hours")["a"] == 8 * (10 * 24 + 6) + 4 * 11 * 24
    assert usage.of("gpu_hours")["b"] == 0.0


def test_held_counts_each_nodes_gpus_and_power_limits_once_known() -> None:
    """What nodes hold: GPUs and kW of GPU power limits; an unknown node holds nothing."""
    assert held(["n1", "n2", "gone"], {"n1": (8, 5600.0), "n2": (4, 1400.0)}) == {
        "gpus": 12.0,
        "power_kw": 7.0,
    }
