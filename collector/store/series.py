"""Time series for ``collector plot``: one node's samples, or the fleet in time buckets.

Served by indexes: ``samples (node, ts_ms)`` for a node, ``samples (received_ms)`` for the
fleet (by arrival time, which the collector's clock sets).
"""

from __future__ import annotations

from typing import Any

from collector.store.reader import StoreReader

__all__ = ["fleet_series", "known_node", "node_series"]


def known_node(reader: StoreReader, node: str) -> bool:
    """Whether the collector has ever heard of ``node`` (a row in ``nodes``)."""
    return bool(reader.fetchall("SELECT 1 FROM nodes WHERE node = ?", (node,)))


def node_series(reader: StoreReader, node: str, since: float) -> list[dict[str, Any]]:
    """``node``'s samples since ``since`` (node clock), oldest first: time, CPU %, memory %,
    GPU utilisation %, GPU power W, CPU power W."""
    rows = reader.fetchall(
        "SELECT ts_ms / 1000.0 AS t, cpu_pct, "
        "100.0 * mem_used_bytes / NULLIF(mem_total_bytes, 0) AS mem_pct, gpu_util_pct, "
        "gpu_power_w, cpu_power_w FROM samples WHERE node = ? AND ts_ms >= ? ORDER BY ts_ms",
        (node, round(since * 1000)),
    )
    return [dict(r) for r in rows]


def fleet_series(
    reader: StoreReader, since: float, bucket_s: float, *, pool: str | None = None
) -> list[dict[str, Any]]:
    """The fleet per bucket of arrival time since ``since``, oldest first: mean CPU %,
    memory %, GPU utilisation %, and power W (mean per sample times the nodes reporting).

    Buckets are ``bucket_s`` long at most, shorter (down to 1 s) when the data spans less,
    so a short window still has ~150 points. ``pool``: only that pool's nodes
    (``pool_nodes``; ``free``: the nodes in no pool)."""
    in_pool = "" if pool is None else " AND node IN (SELECT node FROM pool_nodes WHERE pool = ?)"
    extra: tuple[str, ...] = () if pool is None else (pool,)
    if pool == "free":  # collector.store.pools.FREE: the nodes in no pool
        in_pool, extra = " AND node NOT IN (SELECT node FROM pool_nodes)", ()
    since_ms = round(since * 1000)
    span = reader.fetchall(
        "SELECT min(received_ms) AS lo, max(received_ms) AS hi FROM samples WHERE received_ms >= ?",
        (since_ms,),
    )[0]
    if span["lo"] is not None:  # buckets over the data, not over an empty window
        bucket_s = min(bucket_s, max((span["hi"] - span["lo"]) / 1000 / 150, 1.0))
    bucket_ms = max(1, round(bucket_s * 1000))
    # The bucket computed once, in a subquery: PostgreSQL does not take GROUP BY on an
    # expression whose parameter is another placeholder than the select list's.
    rows = reader.fetchall(
        "SELECT b * ? / 1000.0 AS t, avg(cpu_pct) AS cpu_pct, "
        "avg(100.0 * mem_used_bytes / NULLIF(mem_total_bytes, 0)) AS mem_pct, "
        "avg(gpu_util_pct) AS gpu_util_pct, "
        "avg(gpu_power_w) * count(DISTINCT node) AS gpu_power_w, "
        "avg(cpu_power_w) * count(DISTINCT node) AS cpu_power_w, count(DISTINCT node) AS nodes "
        "FROM (SELECT received_ms / ? AS b, node, cpu_pct, mem_used_bytes, mem_total_bytes, "
        "gpu_util_pct, gpu_power_w, cpu_power_w FROM samples WHERE received_ms >= ?"
        + in_pool
        + ") AS s GROUP BY b ORDER BY 1",
        (bucket_ms, bucket_ms, since_ms, *extra),
    )
    return [dict(r) for r in rows]
