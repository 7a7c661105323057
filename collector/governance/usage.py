"""Tenants' use of each quota resource, on the two bases capwatch reports.

* **allocated**: what the tenant holds by its leases in force, whether it uses it or not:
  the GPUs of the leased nodes' inventories, their GPUs' power limits (kW, GPU power only)
  and GPU-hours (leased GPUs x hours held so far in the quota's period: each node while
  a lease held it, to the second, as the bill counts it, :func:`lease_windows`).
* **measured**: what the tenant's nodes do: busy GPUs (utilisation at or above a threshold,
  fresh samples only), live power (GPU + CPU package, kW) and utilisation-weighted GPU-hours
  in the period (from the stored samples, or accumulated from the live view).

Pure: the caller brings per-node facts (:mod:`collector.nodefacts`, from the live view in the
collector, from node states rebuilt from the store for the command line). Every figure is
clamped: a node cannot report negative or absurd use into a tenant's total (its power is
within the wire schema's bounds, as :func:`~collector.nodefacts.measure` clamps it).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from collector.governance.billing import in_force
from collector.governance.periods import PERIODS, period_start
from collector.governance.state import Governance
from collector.nodefacts import Hardware, NodeMeasure, Staleness, hardware, measure
from shared.units import W_PER_KW

if TYPE_CHECKING:
    from collector.live import NodeState
    from collector.store.ledger import LeaseHistory
    from shared.schema import Inventory, Sample

__all__ = [
    "BASES",
    "Basis",
    "FactsCache",
    "LeaseWindow",
    "Usage",
    "allocated_usage",
    "held",
    "history_since",
    "lease_windows",
    "measured_usage",
    "node_facts",
    "nodes_leases_held",
]

Basis = Literal["allocated", "measured"]
BASES: Final = ("allocated", "measured")


@dataclass(slots=True)
class Usage:
    """Resource -> tenant -> amount, on one basis."""

    basis: Basis
    by_resource: dict[str, dict[str, float]] = field(default_factory=dict)

    def of(self, resource: str) -> dict[str, float]:
        """Tenant -> amount of ``resource`` (missing tenants use 0)."""
        return self.by_resource.setdefault(resource, {})


def _hours_overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0)) / 3600.0


class LeaseWindow(NamedTuple):
    """The part of its tenant's quota period a lease covered, up to ``now``."""

    tenant: str
    nodes: tuple[str, ...]
    since: float
    until: float


def history_since(now: float) -> float:
    """The earliest instant a quota period holding ``now`` began (a month's, or a week's
    begun in the month before): the leases' node moves since then are all
    :func:`lease_windows` needs."""
    return min(period_start(p, now) for p in PERIODS)


def lease_windows(
    gov: Governance, now: float, members: LeaseHistory | None = None
) -> list[LeaseWindow]:
    """Per lease: the nodes it held and the instants of its tenant's current GPU-hours
    period it held them, up to ``now`` (leases that covered none are left out).

    Without ``members``, its nodes now over the part of the period it was in force. With
    ``members`` (the leases' node moves since :func:`history_since`), each node over the
    spans the lease held it, to the second, as the bill counts it
    (:func:`collector.governance.billing.allocated_days`): a node that left counts the
    hours before, one that joined only those after."""
    out = []
    for lease in gov.leases:
        start = period_start(gov.period_of(lease.tenant), now)
        since, until = in_force(lease.interval(), start, now)
        if until <= since:
            continue
        if members is None or not members.moved(lease.name):
            if lease.nodes:
                out.append(LeaseWindow(lease.tenant, lease.nodes, since, until))
            continue
        held_now = set(lease.nodes)
        for node in members.nodes(lease.name, lease.nodes):
            for a, b in members.spans(lease.name, node, node in held_now, since, until):
                out.append(LeaseWindow(lease.tenant, (node,), a, b))
    return out


def nodes_leases_held(gov: Governance, members: LeaseHistory | None = None) -> set[str]:
    """Every node a stored lease names now (ended and future leases too), and
    (``members``) every node that left one since the history began: the nodes whose use a
    period's usage may charge to a lease. Not the nodes leased now: for those (the nodes a
    pool or pattern must not take), :func:`collector.store.pools.unended_lease_nodes`."""
    return {
        n
        for lease in gov.leases
        for n in (lease.nodes if members is None else members.nodes(lease.name, lease.nodes))
    }


_SampleKey = tuple[int, float, int, int | None]


def _sample_key(sample: Sample) -> _SampleKey:
    """The sample object (its ``id``) and what it says it is (time, seq, agent epoch): equal
    keys are the same sample still held, as ``is`` told before. An ``id`` is reused only
    once its object is freed, and the live view takes a node's next sample only when it is
    later (:func:`collector.live._later_sample`), so a new sample at a freed one's address
    differs in time or sequence."""
    return (id(sample), sample.ts, sample.seq, sample.epoch)


@dataclass(slots=True)
class FactsCache:
    """Per node: the inventory and the sample last read and their facts, reused while the
    live view holds the same objects (most nodes between two evaluations)."""

    hardware: dict[str, tuple[Inventory, int | None, Hardware]] = field(default_factory=dict)
    """The inventory, the GPUs of the sample that bounded it (``None``: none) and its facts."""
    measured: dict[str, tuple[_SampleKey, NodeMeasure]] = field(default_factory=dict)
    """The measures of the sample last read, by what tells that sample apart
    (:func:`_sample_key`), not the sample itself: held here, each node's previous sample
    outlived the live view's next one until the next evaluation, ~6.7 KB an 8-GPU node (84 MB
    at 12,500 nodes whose samples come faster than evaluations)."""

    def keep(self, nodes: Collection[str]) -> None:
        """Forget every node not in ``nodes``."""
        self.hardware = {n: v for n, v in self.hardware.items() if n in nodes}
        self.measured = {n: v for n, v in self.measured.items() if n in nodes}


def node_facts(
    states: Iterable[NodeState],
    now: float,
    *,
    staleness: Staleness,
    busy_util_pct: float,
    cache: FactsCache | None = None,
    declared: Mapping[str, Hardware] | None = None,
) -> tuple[dict[str, Hardware], dict[str, NodeMeasure]]:
    """Per node: its hardware and, while it is online, its measures (both bases' inputs).

    Hardware comes from the agent's inventory, as far as its newest sample (current or
    not) bears it out (:func:`collector.nodefacts.hardware`); for a node without one, from
    its declared inventory (``declared``: ``collector inventory import``, which may name
    nodes no agent runs on yet, so those count too); else from its current sample's GPUs,
    without power limits.
    The collector passes its live view's states and a cache; ``quota show --from-store``
    states rebuilt from the store.
    """
    cache = FactsCache() if cache is None else cache
    held: dict[str, Hardware] = {}
    measures: dict[str, NodeMeasure] = {}
    for st in states:
        node, inv = st.node, st.inventory
        if inv is not None:
            shown = None if st.sample is None else len(st.sample.gpus)
            hw = cache.hardware.get(node)
            if hw is None or hw[0] is not inv or hw[1] != shown:
                hw = cache.hardware[node] = (inv, shown, hardware(inv, shown))
            held[node] = hw[2]
        sample = staleness.current(st, now)
        if sample is None:
            continue
        key = _sample_key(sample)
        seen = cache.measured.get(node)
        if seen is None or seen[0] != key:
            seen = cache.measured[node] = (key, measure(sample, busy_util_pct))
        measures[node] = seen[1]
        if node not in held and node not in (declared or {}):
            held[node] = Hardware(seen[1].gpus, 0.0)
    for node, hw_declared in (declared or {}).items():
        held.setdefault(node, hw_declared)
    return held, measures


def held(nodes: Iterable[str], hardware: Mapping[str, tuple[int, float]]) -> dict[str, float]:
    """What ``nodes`` allocate on each resource judged at an instant: ``gpus`` and
    ``power_kw`` (their GPUs' power limits); ``hardware``: node -> (GPUs, GPU power limits
    in W), a node without one holding nothing. A tenant's allocated use
    (:func:`allocated_usage`) and what admission adds for a lease
    (:mod:`collector.governance.admit`)."""
    gpus = 0.0
    watts = 0.0
    for n in nodes:
        hw = hardware.get(n)
        if hw is not None:
            gpus += max(0, hw[0])
            watts += max(0.0, hw[1])
    return {"gpus": gpus, "power_kw": watts / W_PER_KW}


def allocated_usage(
    gov: Governance,
    hardware: Mapping[str, tuple[int, float]],
    now: float,
    members: LeaseHistory | None = None,
) -> Usage:
    """Allocated use per tenant; ``hardware``: node -> (GPUs, GPU power limits in W), of
    the nodes that left a lease too; ``members``: the leases' node moves
    (:func:`lease_windows`)."""
    out = Usage("allocated")
    gpus, power, hours = out.of("gpus"), out.of("power_kw"), out.of("gpu_hours")
    for tenant, nodes in gov.tenant_nodes(now).items():
        amounts = held(nodes, hardware)
        gpus[tenant] = amounts["gpus"]
        power[tenant] = amounts["power_kw"]
        hours[tenant] = 0.0
    for win in lease_windows(gov, now, members):
        g = sum(max(0, hardware.get(n, (0, 0.0))[0]) for n in win.nodes)
        hours[win.tenant] = hours.get(win.tenant, 0.0) + g * (win.until - win.since) / 3600.0
    return out


def measured_usage(
    gov: Governance,
    measures: Mapping[str, NodeMeasure],
    gpu_hours: Mapping[str, float],
    now: float,
) -> Usage:
    """Measured use per tenant from per-node measures and per-tenant GPU-hours."""
    out = Usage("measured")
    gpus, power, hours = out.of("gpus"), out.of("power_kw"), out.of("gpu_hours")
    for tenant, nodes in gov.tenant_nodes(now).items():
        busy = 0
        watts = 0.0
        for n in nodes:
            m = measures.get(n)
            if m is None:
                continue
            busy += min(max(0, m.busy_gpus), max(0, m.gpus))
            if m.power_w is not None and m.power_w > 0:
                watts += m.power_w  # within the wire schema's bounds (nodefacts.measure)
        gpus[tenant] = float(busy)
        power[tenant] = watts / W_PER_KW
        hours[tenant] = max(0.0, float(gpu_hours.get(tenant, 0.0)))
    return out
