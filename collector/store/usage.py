"""What the quota commands read about nodes: leased hardware and measured use.

* :func:`node_hardware`: GPUs and summed GPU power limits per node, from the stored
  inventories (msgspec reads just those fields).
* :func:`latest_samples`: each node's newest sample (one index descent per node, as
  ``collector query`` does), with the payload for per-GPU utilisation.
* :func:`gpu_hours_since`: utilisation-weighted GPU-hours per node from the stored samples
  that arrived since an instant (``gpu_count x mean utilisation x interval``), through the
  ``received_ms`` index. Only what retention kept is counted, and a node's hours count for
  the tenant that holds it now.
* :func:`usages_from_store`: both bases for every tenant, from one read snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from collector.governance.state import Governance, period_start
from collector.governance.usage import NodeMeasure, Usage, allocated_usage, measured_usage
from collector.store.reader import StoreReader
from shared.errors import StoreError

__all__ = [
    "LatestSample",
    "gpu_hours_since",
    "gpu_hours_since_async",
    "latest_samples",
    "node_hardware",
    "node_measures",
    "usages_from_store",
]

Fetch = Callable[[str, Sequence[Any]], list[Any]]


class LatestSample(NamedTuple):
    """A node's newest stored sample, summary columns and compressed payload."""

    node: str
    status: str | None
    received: float
    interval_s: float
    gpu_count: int
    gpu_util_pct: float | None
    gpu_power_w: float | None
    cpu_power_w: float | None
    payload: bytes
    payload_dict: int | None


class _GpuInfo(msgspec.Struct):
    power_limit_w: float | None = None


class _Inventory(msgspec.Struct):
    gpus: list[_GpuInfo] = msgspec.field(default_factory=list)


_inventory_decoder = msgspec.json.Decoder(_Inventory)
_MAX_GPU_LIMIT_W: Final = 5_000.0


def node_hardware(fetchall: Fetch) -> dict[str, tuple[int, float]]:
    """Node -> (GPUs, sum of the GPUs' enforced power limits in W) from its inventory.

    msgspec reads only the two fields (~3 us an inventory; SQLite's JSON functions took
    six times longer). An unreadable inventory counts as no GPUs.
    """
    out: dict[str, tuple[int, float]] = {}
    for node, blob in fetchall("SELECT node, inventory FROM nodes WHERE inventory IS NOT NULL", ()):
        try:
            inv = _inventory_decoder.decode(blob)
        except msgspec.DecodeError:
            continue
        watts = sum(min(max(g.power_limit_w or 0.0, 0.0), _MAX_GPU_LIMIT_W) for g in inv.gpus)
        out[node] = (len(inv.gpus), watts)
    return out


def latest_samples(fetchall: Fetch) -> dict[str, LatestSample]:
    """Node -> its newest stored sample (nodes without samples are left out)."""
    rows = fetchall(
        "SELECT n.node, n.status, s.received_ms / 1000.0, s.interval_s, s.gpu_count, "
        "s.gpu_util_pct, s.gpu_power_w, s.cpu_power_w, s.payload, s.payload_dict "
        "FROM nodes n JOIN samples s ON s.rowid = "
        "(SELECT rowid FROM samples WHERE node = n.node ORDER BY ts_ms DESC LIMIT 1)",
        (),
    )
    return {r[0]: LatestSample(*r) for r in rows}


_GPU_HOURS_SQL: Final = (
    "SELECT node, total(gpu_count * min(max(coalesce(gpu_util_pct, 0), 0), 100) / 100.0 "
    "* min(max(interval_s, 0), 3600)) / 3600.0 FROM samples "
    "WHERE received_ms >= ? GROUP BY node"
)


def gpu_hours_since(fetchall: Fetch, since: float) -> dict[str, float]:
    """Node -> utilisation-weighted GPU-hours of the samples that arrived since ``since``."""
    rows = fetchall(_GPU_HOURS_SQL, (int(since * 1000),))
    return {r[0]: float(r[1]) for r in rows}


async def gpu_hours_since_async(
    fetchall: Callable[[str, Sequence[Any]], Awaitable[list[Any]]], since: float
) -> dict[str, float]:
    """The same with the collector's ``Store.fetchall``."""
    rows = await fetchall(_GPU_HOURS_SQL, (int(since * 1000),))
    return {r[0]: float(r[1]) for r in rows}


class _Gpu(msgspec.Struct):
    util_pct: float | None = None


class _Gpus(msgspec.Struct):
    gpus: list[_Gpu] = msgspec.field(default_factory=list)


_gpus_decoder = msgspec.json.Decoder(_Gpus)


def node_measures(
    store: StoreReader,
    latest: dict[str, LatestSample],
    now: float,
    *,
    busy_util_pct: float,
    stale_intervals: float,
    nodes: Iterable[str] | None = None,
) -> dict[str, NodeMeasure]:
    """Node -> its measured state from its newest sample; offline and stale nodes left out.

    A GPU is busy at ``busy_util_pct`` or more. The payload (per-GPU utilisation) is read
    only where the mean cannot decide: when mean x GPUs is under the threshold, no single
    GPU can reach it. A payload that cannot be read counts as no busy GPU.
    """
    fresh: list[LatestSample] = []
    for node in latest if nodes is None else nodes:
        s = latest.get(node)
        if s is None or s.status == "offline":
            continue
        if now - s.received > stale_intervals * max(s.interval_s, 0.0):
            continue
        fresh.append(s)
    undecided = [
        s
        for s in fresh
        if s.gpu_util_pct is not None and s.gpu_util_pct * max(0, s.gpu_count) >= busy_util_pct
    ]
    busy_of: dict[str, int] = {}
    for s in undecided:
        try:
            parsed = _gpus_decoder.decode(store.payload(s.payload, s.payload_dict))
        except (msgspec.DecodeError, StoreError):
            parsed = _Gpus()
        busy_of[s.node] = sum(
            1 for g in parsed.gpus if g.util_pct is not None and g.util_pct >= busy_util_pct
        )
    out: dict[str, NodeMeasure] = {}
    for s in fresh:
        gpus = max(0, s.gpu_count)
        watts = [w for w in (s.gpu_power_w, s.cpu_power_w) if w is not None]
        out[s.node] = NodeMeasure(
            gpus=gpus,
            busy_gpus=min(busy_of.get(s.node, 0), gpus),
            power_w=sum(watts) if watts else None,
            util_pct=s.gpu_util_pct,
        )
    return out


def usages_from_store(
    store: StoreReader,
    gov: Governance,
    now: float,
    *,
    busy_util_pct: float,
    stale_intervals: float,
) -> tuple[Usage, Usage]:
    """Allocated and measured use per tenant, from one snapshot of the store."""
    hardware = node_hardware(store.fetchall)
    allocated = allocated_usage(gov, hardware, now)
    held = gov.tenant_nodes(now)
    wanted = set().union(*held.values()) if held else set()
    latest = latest_samples(store.fetchall) if wanted else {}
    measures = node_measures(
        store,
        latest,
        now,
        busy_util_pct=busy_util_pct,
        stale_intervals=stale_intervals,
        nodes=wanted,
    )
    hours: dict[str, float] = {}
    by_period: dict[str, dict[str, float]] = {}
    for tenant, nodes in held.items():
        period = gov.period_of(tenant)
        if gov.has_quota("gpu_hours") and nodes:
            if period not in by_period:
                by_period[period] = gpu_hours_since(store.fetchall, period_start(period, now))
            per_node = by_period[period]
            hours[tenant] = sum(per_node.get(n, 0.0) for n in nodes)
    return allocated, measured_usage(gov, measures, hours, now)
