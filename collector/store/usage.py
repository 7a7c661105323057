"""What the quota commands read about nodes: leased hardware and measured use.

* :func:`node_hardware`: GPUs and summed GPU power limits per node, from the stored
  inventories (msgspec reads just those fields).
* :func:`latest_samples`: each node's newest sample (one index descent per node, as
  ``collector query`` does), with the payload for per-GPU utilisation.
* :func:`gpu_hours_in`: utilisation-weighted GPU-hours (``gpu_count x mean utilisation x
  interval``) of some nodes' samples stamped in a window, through the ``(node, ts_ms)``
  index; :func:`usages_from_store` asks it for each lease's nodes over the part of the
  quota period the lease covered, so a node's hours count for the tenant that held it then.
  Only what retention kept is counted.
* :func:`usages_from_store`: both bases for every tenant, from one read snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from collector.governance.state import Governance
from collector.governance.usage import (
    NodeMeasure,
    Usage,
    allocated_usage,
    lease_windows,
    measured_usage,
)
from collector.store.reader import StoreReader
from shared.errors import StoreError

__all__ = [
    "LatestSample",
    "gpu_hours_in",
    "gpu_hours_in_async",
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


_HOURS_CHUNK: Final = 500
"""Nodes per query: far under SQLite's variable limit; each is one index range per node."""


def _gpu_hours_sql(n: int) -> str:
    # Values were validated on ingest (utilisation 0-100 %, interval bounded): no clamps.
    return (
        "SELECT total(gpu_count * coalesce(gpu_util_pct, 0) * interval_s) / 360000.0 "
        f"FROM samples WHERE node IN ({', '.join('?' * n)}) AND ts_ms >= ? AND ts_ms < ?"
    )


def _hours_queries(
    nodes: Sequence[str], since: float, until: float
) -> Iterator[tuple[str, list[Any]]]:
    lo, hi = int(since * 1000), int(until * 1000)
    for i in range(0, len(nodes), _HOURS_CHUNK):
        chunk = list(nodes[i : i + _HOURS_CHUNK])
        yield _gpu_hours_sql(len(chunk)), [*chunk, lo, hi]


def gpu_hours_in(fetchall: Fetch, nodes: Sequence[str], since: float, until: float) -> float:
    """Utilisation-weighted GPU-hours of ``nodes``' samples stamped in [since, until): one
    ``(node, ts_ms)`` index range per node."""
    if until <= since:
        return 0.0
    return sum(float(fetchall(sql, p)[0][0]) for sql, p in _hours_queries(nodes, since, until))


async def gpu_hours_in_async(
    fetchall: Callable[[str, Sequence[Any]], Awaitable[list[Any]]],
    nodes: Sequence[str],
    since: float,
    until: float,
) -> float:
    """The same with the collector's ``Store.fetchall``."""
    if until <= since:
        return 0.0
    total = 0.0
    for sql, p in _hours_queries(nodes, since, until):
        total += float((await fetchall(sql, p))[0][0])
    return total


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
    if gov.has_quota("gpu_hours"):
        for w in lease_windows(gov, now):
            hours[w.tenant] = hours.get(w.tenant, 0.0) + gpu_hours_in(
                store.fetchall, w.nodes, w.since, w.until
            )
    return allocated, measured_usage(gov, measures, hours, now)
