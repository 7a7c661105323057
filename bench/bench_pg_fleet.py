"""The fleet query on PostgreSQL: each node's newest sample, as ``collector query`` reads it.

Figures only (the target, in the issue: the watermark's choice of the newest sample costs
nothing over the newest by time). A throw-away PostgreSQL (:class:`LocalPostgres`, or
``--url``) gets a store built through the store's own API (``Store.write_batch``,
``write_watermarks``): ``--nodes`` nodes x ``--ticks`` samples ``--cadence`` seconds apart,
ending now, a watermark for each node of today's agents, of which ``--stepped`` (a fraction)
name an older sample than the newest by time (a clock stepped back: the watermark's other
branch), and ``--old-agents`` (a fraction) with none (agents before epochs). Then ``VACUUM
ANALYZE``, as autovacuum leaves a live store (``--no-analyze``: as freshly written).

Timed in one connection, the statements interleaved (alternate order each round), ``--runs``
rounds, median and p10-p90 of wall time and of the server backend's CPU time
(``/proc/PID/schedstat``: the backend is on this machine):

* ``by_time``: the newest by time, the query before the watermarks (migration 0030), as
  the reference;
* ``store``: the same columns through :func:`collector.store.queries.latest_sample`;
* ``fleet_summary``: the whole answer of ``collector query`` (the rows, then each node's
  state and the totals in Python) through a :class:`StoreReader`.

Then each statement's plan: buffers touched per node, and whether it read every sample.

Usage: ``.venv/bin/python bench/bench_pg_fleet.py [--nodes 12500] [--ticks 60]
[--cadence 60] [--runs 15] [--url postgresql://...] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.localpg import LocalPostgres
from collector.nodefacts import Staleness
from collector.paths import PgTarget, parse_target
from collector.store.db import NodeUpdate, SampleRow, Store
from collector.store.queries import fleet_summary, latest_sample
from collector.store.reader import StoreReader
from collector.store.watermarks import WatermarkRow, write_watermarks
from shared.logging import configure_logging

__all__ = ["main"]

_COLUMNS: Final = (
    "SELECT n.node, n.status, n.status_ts, n.inventory_ts, s.ts_ms / 1000.0 AS last_ts, "
    "s.received_ms / 1000.0 AS last_received, s.interval_s, s.gpu_count, s.cpu_pct, "
    "s.gpu_util_pct, s.gpu_power_w, s.cpu_power_w, s.node_power_w, s.node_power_source "
    "FROM nodes n "
)
_BY_TIME: Final = (
    "LEFT JOIN samples s ON s.node = n.node AND s.ts_ms = "
    "(SELECT ts_ms FROM samples WHERE node = n.node ORDER BY ts_ms DESC LIMIT 1)"
)
_BATCH: Final = 4_000
_EPOCH: Final = 7


async def build(
    target: PgTarget, nodes: int, ticks: int, cadence_s: int, *, stepped: float, old: float
) -> int:
    """Write the store; return the end of its samples (ms)."""
    first = int(time.time()) - ticks * cadence_s
    names = [f"n{i:05d}" for i in range(nodes)]
    n_old = int(nodes * old)
    every_stepped = max(1, round(1 / stepped)) if stepped > 0 else 0
    async with Store(target, compress=False) as store:
        now = time.time()
        await store.write_batch(
            [], updates=[NodeUpdate(n, "online", now) for n in names], new_nodes=names
        )
        for tick in range(ticks):
            ts = (first + tick * cadence_s) * 1000
            rows = [
                SampleRow(n, ts, tick, ts, float(cadence_s), 12.5, 1 << 36, 1 << 39, 8,
                          61.0, 1 << 37, 5200.0, 410.0, b"{}", None if i < n_old else _EPOCH)
                for i, n in enumerate(names)
            ]  # fmt: skip
            for i in range(0, len(rows), _BATCH):
                await store.write_batch(rows[i : i + _BATCH])
        last = (first + (ticks - 1) * cadence_s) * 1000
        marks = []
        for i, n in enumerate(names[n_old:], n_old):
            # A stepped node's agent numbered the second-newest sample by time last.
            top = ticks - 2 if every_stepped and i % every_stepped == 0 and ticks > 1 else ticks - 1
            top_ts = (first + top * cadence_s) * 1000
            marks.append(WatermarkRow(n, _EPOCH, top, top, last, top_ts, last))
        await write_watermarks(store, marks)
    return last


def _backend_cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
        return int(f.read().split()[0]) / 1e6


def _spread(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {
        "median": round(statistics.median(v), 1),
        "p10": round(v[len(v) // 10], 1),
        "p90": round(v[len(v) * 9 // 10], 1),
    }


def measure(target: PgTarget, runs: int) -> dict[str, dict[str, dict[str, float]]]:
    """Time the statements and the whole summary, interleaved."""
    with StoreReader(target) as reader:
        pid = int(reader.fetchall("SELECT pg_backend_pid()")[0][0])
        store_sql = f"{_COLUMNS}{latest_sample(reader.dialect)} ORDER BY n.node"
        by_time_sql = f"{_COLUMNS}{_BY_TIME} ORDER BY n.node"
        staleness = Staleness()
        work: dict[str, Callable[[], Any]] = {
            "by_time": lambda: reader.fetchall(by_time_sql),
            "store": lambda: reader.fetchall(store_sql),
            "fleet_summary": lambda: fleet_summary(reader, time.time(), staleness=staleness),
        }
        answers = [[tuple(r) for r in work[k]()] for k in ("by_time", "store")]  # warm-up
        if len(answers[0]) != len(answers[1]):
            raise SystemExit("by_time and store disagree on the number of nodes")
        wall: dict[str, list[float]] = {k: [] for k in work}
        cpu: dict[str, list[float]] = {k: [] for k in work}
        names = list(work)
        for r in range(runs):
            for name in names if r % 2 == 0 else reversed(names):
                c0, t0 = _backend_cpu_ms(pid), time.perf_counter()
                work[name]()
                wall[name].append((time.perf_counter() - t0) * 1000)
                cpu[name].append(_backend_cpu_ms(pid) - c0)
        plans = {
            "by_time": _plan(reader, by_time_sql),
            "store": _plan(reader, store_sql),
        }
    return {
        k: {"wall_ms": _spread(wall[k]), "backend_cpu_ms": _spread(cpu[k]), **plans.get(k, {})}
        for k in work
    }


def _plan(reader: StoreReader, sql: str) -> dict[str, Any]:
    rows = reader.fetchall(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    plan = rows[0][0][0]
    nodes = int(reader.fetchall("SELECT count(*) FROM nodes")[0][0])
    seq = sorted(_seq_scans(plan["Plan"]))
    return {
        "buffers_per_node": round(plan["Plan"].get("Shared Hit Blocks", 0) / max(nodes, 1), 1),
        "seq_scans_of_samples": seq,
        "jit": "JIT" in plan,
    }


def _seq_scans(node: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    name = node.get("Relation Name", "")
    # Run-time pruning leaves empty days' scans in the plan, never executed.
    if node.get("Node Type") == "Seq Scan" and name.startswith("samples") and node["Actual Loops"]:
        found.add(name)
    for child in node.get("Plans", ()):
        found |= _seq_scans(child)
    return found


def main() -> None:
    """Parse flags, build the store, print the figures."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=12_500)
    p.add_argument("--ticks", type=int, default=60, help="samples per node (default 60)")
    p.add_argument("--cadence", type=int, default=60, help="seconds between samples")
    p.add_argument("--stepped", type=float, default=0.01, help="fraction of stepped clocks")
    p.add_argument("--old-agents", type=float, default=0.01, help="fraction without epochs")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--url", help="an empty PostgreSQL database (default: a throw-away server)")
    p.add_argument("--no-analyze", action="store_true", help="skip VACUUM ANALYZE")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="capwatch-bench-") as tmp:
        server = None if args.url else LocalPostgres(Path(tmp) / "pg")
        if server is not None:
            server.start()
        try:
            url = args.url or (server.url if server is not None else "")
            target = parse_target(url)
            assert isinstance(target, PgTarget)
            t0 = time.perf_counter()
            asyncio.run(
                build(
                    target,
                    args.nodes,
                    args.ticks,
                    args.cadence,
                    stepped=args.stepped,
                    old=args.old_agents,
                )
            )
            built_s = time.perf_counter() - t0
            if not args.no_analyze:
                import psycopg  # noqa: PLC0415

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE")
            figures = measure(target, args.runs)
        finally:
            if server is not None:
                server.cleanup()
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"[fleet query, PostgreSQL] {args.nodes} nodes x {args.ticks} samples "
        f"({args.nodes * args.ticks:,} rows, built in {built_s:.0f} s), {args.runs} rounds, "
        f"{'analyzed' if not args.no_analyze else 'not analyzed'}"
    )
    for name, f in figures.items():
        w, c = f["wall_ms"], f["backend_cpu_ms"]
        line = (
            f"  {name:14s} wall {w['median']:7.1f} ms ({w['p10']}-{w['p90']})"
            f"  server CPU {c['median']:7.1f} ms ({c['p10']}-{c['p90']})"
        )
        if "buffers_per_node" in f:
            line += (
                f"  {f['buffers_per_node']} buffers/node, seq scans "
                f"{','.join(f['seq_scans_of_samples']) or 'none'}, jit {f['jit']}"
            )
        print(line)


if __name__ == "__main__":
    main()
