"""Read-side questions about the fleet, answered from the store.

Each function returns plain dicts/lists (JSON-ready); the command module renders them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from collector.store.db import Store
from shared.schema import Sample

__all__ = ["fleet_summary", "gpu_rows", "node_samples", "node_state"]

_sample_decoder = msgspec.json.Decoder(Sample)


def node_state(
    status: str | None,
    last_received: float | None,
    interval_s: float | None,
    now: float,
    *,
    stale_intervals: float,
    default_interval_s: float,
) -> str:
    """``offline`` (its status topic says so), ``stale`` (no sample for N intervals), ``online``."""
    if status == "offline":
        return "offline"
    interval = interval_s or default_interval_s
    if last_received is None or now - last_received > stale_intervals * interval:
        return "stale"
    return "online"


async def fleet_summary(
    store: Store, now: float, *, stale_intervals: float, default_interval_s: float
) -> dict[str, Any]:
    """Nodes by state, GPUs, mean GPU utilisation and total power (latest sample per node)."""
    # Each node's newest sample through the (node, ts_ms) index: one short lookup per node.
    rows = await store.fetchall(
        "SELECT n.node, n.status, s.ts_ms / 1000.0 AS last_ts, "
        "s.received_ms / 1000.0 AS last_received, s.interval_s, s.gpu_count, s.cpu_pct, "
        "s.gpu_util_pct, s.gpu_power_w, s.cpu_power_w FROM nodes n LEFT JOIN samples s "
        "ON s.rowid = (SELECT rowid FROM samples WHERE node = n.node ORDER BY ts_ms DESC LIMIT 1) "
        "ORDER BY n.node"
    )
    nodes: list[dict[str, Any]] = []
    counts = {"online": 0, "stale": 0, "offline": 0}
    gpus = 0
    util_weighted = 0.0
    util_gpus = 0
    gpu_power = 0.0
    cpu_power = 0.0
    for r in rows:
        state = node_state(
            r["status"],
            r["last_received"],
            r["interval_s"],
            now,
            stale_intervals=stale_intervals,
            default_interval_s=default_interval_s,
        )
        counts[state] += 1
        n_gpu = r["gpu_count"] or 0
        if state == "online":
            gpus += n_gpu
            if r["gpu_util_pct"] is not None and n_gpu:
                util_weighted += r["gpu_util_pct"] * n_gpu
                util_gpus += n_gpu
            gpu_power += r["gpu_power_w"] or 0.0
            cpu_power += r["cpu_power_w"] or 0.0
        nodes.append(
            {
                "node": r["node"],
                "state": state,
                "last_sample_age_s": None if r["last_ts"] is None else round(now - r["last_ts"], 1),
                "gpus": n_gpu,
                "cpu_pct": r["cpu_pct"],
                "gpu_util_pct": r["gpu_util_pct"],
                "gpu_power_w": r["gpu_power_w"],
                "cpu_power_w": r["cpu_power_w"],
            }
        )
    return {
        "nodes_total": len(rows),
        "nodes_online": counts["online"],
        "nodes_stale": counts["stale"],
        "nodes_offline": counts["offline"],
        "gpus_online": gpus,
        "gpu_util_mean_pct": round(util_weighted / util_gpus, 2) if util_gpus else None,
        "gpu_power_w": round(gpu_power, 1),
        "cpu_power_w": round(cpu_power, 1),
        "counters": await store.counters(),
        "nodes": nodes,
    }


async def node_samples(store: Store, node: str, since_ms: int, limit: int) -> list[dict[str, Any]]:
    """A node's samples newer than ``since_ms``, newest first."""
    rows = await store.fetchall(
        "SELECT ts_ms, seq, interval_s, cpu_pct, mem_used_bytes, mem_total_bytes, gpu_count, "
        "gpu_util_pct, gpu_mem_used_bytes, gpu_power_w, cpu_power_w FROM samples "
        "WHERE node = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
        (node, since_ms, limit),
    )
    return [
        {"node": node, "ts": r["ts_ms"] / 1000, **{k: r[k] for k in r.keys()[1:]}} for r in rows
    ]


async def gpu_rows(store: Store, node: str | None, limit_nodes: int) -> list[dict[str, Any]]:
    """One row per GPU from each node's latest stored sample."""
    if node is not None:
        nodes = [node]
    else:
        nodes = [
            r["node"]
            for r in await store.fetchall(
                "SELECT node FROM nodes n WHERE EXISTS "
                "(SELECT 1 FROM samples s WHERE s.node = n.node) ORDER BY node LIMIT ?",
                (limit_nodes,),
            )
        ]
    out: list[dict[str, Any]] = []
    for name in nodes:
        latest = await store.fetchall(
            "SELECT payload, payload_dict FROM samples WHERE node = ? ORDER BY ts_ms DESC LIMIT 1",
            (name,),
        )
        if not latest:
            continue
        sample = _sample_decoder.decode(
            await store.payload(latest[0]["payload"], latest[0]["payload_dict"])
        )
        for g in sample.gpus:
            out.append(
                {
                    "node": name,
                    "ts": sample.ts,
                    "index": g.index,
                    "uuid": g.uuid,
                    "util_pct": g.util_pct,
                    "mem_used_bytes": g.mem_used_bytes,
                    "mem_total_bytes": g.mem_total_bytes,
                    "power_w": g.power_w,
                    "power_interval_w": g.power_interval_w,
                    "energy_j": g.energy_j,
                    "temp_c": g.temp_c,
                    "sm_clock_mhz": g.sm_clock_mhz,
                    "pstate": g.pstate,
                    "clock_event_reasons": g.clock_event_reasons,
                    "processes": len(g.processes),
                }
            )
    return out
