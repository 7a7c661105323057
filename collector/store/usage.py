"""What the quota and lease commands read about nodes: hardware and GPU-hours.

* :func:`node_hardware`: GPUs and summed GPU power limits per node, from the stored
  inventories, an agent's (bounded by the GPUs of the node's newest stored sample, by
  :func:`collector.store.queries.latest_sample`) or, for a node whose agent has sent none,
  the one declared by ``collector inventory import``
  (msgspec reads just those fields; the counting is :func:`collector.nodefacts.hardware`);
  :func:`declared_hardware`: the declared ones alone.
* :func:`gpu_hours_in`: utilisation-weighted GPU-hours (``gpu_count x mean utilisation x
  interval``) of some nodes' samples stamped in a window, through the ``(node, ts_ms)``
  index; ``quota show --from-store`` asks it for each lease's nodes over the part of the
  quota period the lease covered, so a node's hours count for the tenant that held it then.
  Only what retention kept is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from collector.nodefacts import Hardware, hardware
from collector.store.dialect import Dialect
from collector.store.queries import latest_sample
from collector.store.query import Query, single

__all__ = ["declared_hardware", "gpu_hours_in", "node_hardware"]


class _GpuInfo(msgspec.Struct):
    power_limit_w: float | None = None


class _Inventory(msgspec.Struct):
    gpus: list[_GpuInfo] = msgspec.field(default_factory=list)


_inventory_decoder = msgspec.json.Decoder(_Inventory)


def node_hardware(dialect: Dialect) -> Query[dict[str, Hardware]]:
    """Node -> its hardware (:func:`collector.nodefacts.hardware`) from its inventory; an
    agent's bounded by the GPUs of the node's newest stored sample (the one rule,
    :func:`collector.store.queries.latest_sample`: newest by the agent's ``(epoch, seq)``,
    as ``collector query`` and the live view name it, whatever the node's clock did), a
    declared one (the operator's) as it is. ``dialect``: the store's backend
    (``reader.dialect``, ``tx.dialect``, ``store.dialect``), where that join differs.

    msgspec reads only the GPUs' power limits (~3 us an inventory; SQLite's JSON functions
    took six times longer, the whole schema's decoder ten times). An unreadable inventory
    is left out (no GPUs).
    """
    return single(
        f"SELECT n.node, n.inventory, s.gpu_count FROM nodes n {latest_sample(dialect)} "
        "WHERE n.inventory IS NOT NULL UNION ALL "
        "SELECT d.node, d.inventory, NULL FROM declared_inventories d WHERE NOT EXISTS "
        "(SELECT 1 FROM nodes n WHERE n.node = d.node AND n.inventory IS NOT NULL)",
        (),
        _hardware,
    )


def declared_hardware() -> Query[dict[str, Hardware]]:
    """Node -> the hardware of its declared inventory (``collector inventory import``): what
    a node counts while its agent has sent no inventory of its own."""
    return single("SELECT node, inventory, NULL FROM declared_inventories", (), _hardware)


def _hardware(rows: list[Any]) -> dict[str, Hardware]:
    out: dict[str, Hardware] = {}
    for node, blob, shown in rows:
        try:
            inv = _inventory_decoder.decode(blob)
        except msgspec.DecodeError:
            continue
        out[node] = hardware(inv, None if shown is None else int(shown))
    return out


_HOURS_CHUNK: Final = 500
"""Nodes per query: far under SQLite's variable limit; each is one index range per node."""


def _gpu_hours_sql(n: int) -> str:
    # Values were validated on ingest (utilisation 0-100 %, interval bounded): no clamps.
    return (
        "SELECT coalesce(sum(gpu_count * coalesce(gpu_util_pct, 0) * interval_s), 0) / 360000.0 "
        f"FROM samples WHERE node IN ({', '.join('?' * n)}) AND ts_ms >= ? AND ts_ms < ?"
    )


def gpu_hours_in(nodes: Sequence[str], since: float, until: float) -> Query[float]:
    """Utilisation-weighted GPU-hours of ``nodes``' samples stamped in [since, until): one
    ``(node, ts_ms)`` index range per node, :data:`_HOURS_CHUNK` nodes a statement."""
    lo, hi = int(since * 1000), int(until * 1000)
    chunks = [nodes[i : i + _HOURS_CHUNK] for i in range(0, len(nodes), _HOURS_CHUNK)]
    statements = tuple(
        (_gpu_hours_sql(len(chunk)), (*chunk, lo, hi)) for chunk in chunks if until > since
    )
    return Query(statements, lambda results: sum((float(rows[0][0]) for rows in results), 0.0))
