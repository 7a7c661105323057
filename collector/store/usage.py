"""What the quota commands read about nodes: leased hardware and measured use.

* :func:`node_hardware`: GPUs and summed GPU power limits per node, from the stored
  inventories (SQLite's JSON functions, in C: no Python parse of 12,500 inventories).
* :func:`latest_samples`: each node's newest sample (one index descent per node, as
  ``collector query`` does), with the payload for per-GPU utilisation.
* :func:`gpu_hours_since`: utilisation-weighted GPU-hours per node from the stored samples
  that arrived since an instant (``gpu_count x mean utilisation x interval``), through the
  ``received_ms`` index. Only what retention kept is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["LatestSample", "gpu_hours_since", "latest_samples", "node_hardware"]

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


def node_hardware(fetchall: Fetch) -> dict[str, tuple[int, float]]:
    """Node -> (GPUs, sum of the GPUs' enforced power limits in W) from its inventory."""
    rows = fetchall(
        "SELECT node, json_array_length(inv, '$.gpus'), "
        "(SELECT total(json_extract(value, '$.power_limit_w')) FROM json_each(inv, '$.gpus')) "
        "FROM (SELECT node, CAST(inventory AS TEXT) AS inv FROM nodes "
        "WHERE inventory IS NOT NULL) WHERE json_valid(inv)",
        (),
    )
    return {r[0]: (int(r[1] or 0), float(r[2] or 0.0)) for r in rows}


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


def gpu_hours_since(fetchall: Fetch, since: float) -> dict[str, float]:
    """Node -> utilisation-weighted GPU-hours of the samples that arrived since ``since``."""
    rows = fetchall(
        "SELECT node, total(gpu_count * min(max(coalesce(gpu_util_pct, 0), 0), 100) / 100.0 "
        "* min(max(interval_s, 0), 3600)) / 3600.0 FROM samples "
        "WHERE received_ms >= ? GROUP BY node",
        (int(since * 1000),),
    )
    return {r[0]: float(r[1]) for r in rows}
