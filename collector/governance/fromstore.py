"""Tenants' usage as the store last saw it: what ``collector quota show --from-store`` prints.

The same computation as the collector's (:func:`collector.governance.usage.node_facts` on
node states), on states rebuilt from the store's newest rows
(:func:`collector.capacity.fromstore.nodes_from_store`) instead of the live view; measured
GPU-hours from the stored samples of each lease's window.
"""

from __future__ import annotations

from collector.capacity.fromstore import nodes_from_store
from collector.governance.state import Governance
from collector.governance.usage import (
    Usage,
    allocated_usage,
    history_since,
    lease_windows,
    measured_usage,
    node_facts,
    nodes_leases_held,
)
from collector.nodefacts import Staleness
from collector.store.ledger import lease_history
from collector.store.reader import StoreReader
from collector.store.usage import declared_hardware, gpu_hours_in

__all__ = ["usages_from_store"]


def usages_from_store(
    store: StoreReader,
    gov: Governance,
    now: float,
    *,
    busy_util_pct: float,
    staleness: Staleness,
) -> tuple[Usage, Usage]:
    """Allocated and measured use per tenant, from one snapshot of the store."""
    moved = gov.leases and store.has_table("lease_moves")
    members = store.run(lease_history(history_since(now))) if moved else None
    leased = nodes_leases_held(gov, members)
    states = nodes_from_store(store, nodes=leased) if leased else []
    held, measures = node_facts(
        states,
        now,
        staleness=staleness,
        busy_util_pct=busy_util_pct,
        declared=store.run(declared_hardware()) if leased else {},
    )
    hours: dict[str, float] = {}
    if gov.has_quota("gpu_hours"):
        for w in lease_windows(gov, now, members):
            hours[w.tenant] = hours.get(w.tenant, 0.0) + store.run(
                gpu_hours_in(w.nodes, w.since, w.until)
            )
    return allocated_usage(gov, held, now, members), measured_usage(gov, measures, hours, now)
