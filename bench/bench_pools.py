"""Pools and inventory benchmark: prints figures (targets in issue 8, not pass/fail).

1. ``pool apply`` on a 10,000-node free pool with 12 component kinds (3 CPU models, 4 GPU
   models, memory, 2 NIC models, 2 other accelerators; node mixes drawn with a fixed seed,
   in 250 racks of 40): the time :func:`collector.governance.allocate.plan_pool` takes to the
   proven fewest-node answer (target < 2 s), and how many nodes the greedy rule (clstr's)
   takes instead, for a few patterns.
2. ``collector inventory`` (table and ``--json``) and ``pool apply --dry-run`` as whole
   processes on a store of 12,500 nodes, each with an inventory (8 GPUs, NICs) and a latest
   sample, built through the store's own API (target < 500 ms, median of ``--runs``).

Usage: ``.venv/bin/python bench/bench_pools.py [--runs 7] [--db PATH] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.governance.allocate import plan_pool
from collector.governance.inventory import Component, NodeComponents
from collector.governance.pattern import parse_pattern
from collector.nodefacts import rack_of
from collector.store.db import NodeUpdate, SampleRow, Store
from shared.schema import CpuPackage, GpuInfo, Inventory, NicInfo, encode

__all__ = ["main"]

BIN = Path(sys.executable).parent
_CPUS = ["AMD EPYC 7763", "AMD EPYC 9654", "Intel Xeon Platinum 8480+"]
_GPUS = ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA L40S", "NVIDIA GH200"]
_NICS = ["Mellanox ConnectX-7 400 Gb/s", "Broadcom BCM57414 25 Gb/s"]
_ACCEL = ["AMD Instinct MI300X", "Habana Gaudi2"]
PATTERNS = (
    "zinal:a100:400:epyc:600:memory:6000",
    "big:h100:2000:xeon:800:connectx:500:memory:20000",
    "mixed:a100:64:h100:64:l40s:64:mi300x:32:gaudi:32:memory:3000",
    "cpu:epyc 9654:300:memory:9000",
)


def synthetic_fleet(n: int, seed: int = 1) -> list[NodeComponents]:
    """``n`` free online nodes in racks of 40, twelve component kinds between them."""
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        name = f"x{1000 + i // 40}c{(i // 8) % 5}s{i % 8}b0n0"
        comps = [
            Component("cpu", rng.choice(_CPUS), rng.choice((1, 2, 2, 4))),
            Component("memory", "16 GiB", rng.choice((16, 32, 64, 128))),
            Component("nic", rng.choice(_NICS), rng.choice((1, 2, 4, 8))),
        ]
        kind = rng.random()
        if kind < 0.7:
            comps.append(Component("gpu", rng.choice(_GPUS), rng.choice((4, 8))))
        elif kind < 0.85:
            comps.append(Component("accelerator", rng.choice(_ACCEL), 8))
        nodes.append(NodeComponents(name, "free", "online", rack_of(name), tuple(comps), ()))
    return nodes


def bench_apply(nodes: int) -> tuple[float, list[dict[str, Any]]]:
    """numpy + scipy.optimize import seconds (a process pays them once; the whole-process
    figures below include them), then each pattern planned over the synthetic fleet."""
    t0 = time.perf_counter()
    import scipy.optimize  # noqa: F401, PLC0415

    import_s = time.perf_counter() - t0
    fleet = synthetic_fleet(nodes)
    out = []
    for text in PATTERNS:
        t0 = time.perf_counter()
        plan = plan_pool(fleet, parse_pattern(text))
        out.append(
            {
                "pattern": text,
                "seconds": round(time.perf_counter() - t0, 3),
                "count_s": round(plan.count_s, 3),
                "method": plan.method,
                "nodes": len(plan.final),
                "greedy_nodes": plan.greedy_nodes,
                "racks": plan.racks,
            }
        )
    return import_s, out


async def build_store(db: Path, n: int) -> None:
    """``n`` 8-GPU nodes with an inventory, status and one sample each."""
    now = time.time()
    updates, rows = [], []
    for i in range(n):
        node = f"x{1000 + i // 40}c{(i // 8) % 5}s{i % 8}b0n0"
        gpu = _GPUS[i % 2]
        inv = Inventory(
            v=1,
            node=node,
            ts=now,
            host=node,
            agent_version="bench",
            cpu_model=_CPUS[i % 3],
            cpu_count=256,
            cpu_cores=128,
            mem_total_bytes=2**40,
            gpus=[
                GpuInfo(
                    index=g,
                    name=gpu,
                    uuid=f"GPU-{i:08x}-{g:04x}-4000-8000-000000000000",
                    serial=f"16523{i:06d}{g:02d}",
                    pci_bus_id=f"00000000:{0x18 + g * 0x10:02X}:00.0",
                )
                for g in range(8)
            ],
            nics=[
                NicInfo(name=f"ib{k}", speed_mbps=400_000, model=_NICS[0], up=True)
                for k in range(4)
            ],
            cpus=[CpuPackage(model=_CPUS[i % 3], sockets=2)],
            mem_installed_bytes=2**40,
        )
        updates.append(NodeUpdate(node, "online", now, encode(inv), now))
        rows.append(
            SampleRow(
                node,
                int(now * 1000),
                1,
                int(now * 1000),
                3600.0,
                10.0,
                2**30,
                2**40,
                8,
                50.0,
                None,
                3000.0,
                300.0,
                b"{}",
            )
        )
    async with Store(db, compress=False, synchronous="normal") as store:
        for k in range(0, n, 2000):
            await store.write_batch(rows[k : k + 2000], updates[k : k + 2000])


def time_command(args: list[str], runs: int) -> dict[str, float]:
    """Median/min/max wall seconds of ``collector ARGS`` as fresh processes."""
    cmd = [str(BIN / "collector"), *args]
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up, page cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


def main() -> int:
    """Run both benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=10_000, help="free pool for apply")
    parser.add_argument("--store-nodes", type=int, default=12_500)
    parser.add_argument("--db", type=Path, help="keep the store here (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import_s, apply = bench_apply(args.nodes)
    results: dict[str, Any] = {"scipy_import_s": round(import_s, 3), "apply": apply}
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "pools.db"
        if not db.exists():
            asyncio.run(build_store(db, args.store_nodes))
        results["cli"] = {
            "inventory": time_command(["inventory", "--db", str(db)], args.runs),
            "inventory --json": time_command(["inventory", "--db", str(db), "--json"], args.runs),
            "pool apply --dry-run": time_command(
                ["pool", "apply", "-p", "zinal:a100:400:epyc:600", "--dry-run", "--db", str(db)],
                args.runs,
            ),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"pool apply over {args.nodes:,} free nodes, 12 component kinds (target < 2 s; "
        f"numpy + scipy import {import_s:.2f} s once per process, not included):"
    )
    for r in results["apply"]:
        print(
            f"  {r['pattern']:<62} fewest nodes {r['count_s']:5.3f} s, whole plan "
            f"{r['seconds']:5.3f} s  {r['method']:<6} {r['nodes']:4} nodes in {r['racks']:3} "
            f"racks; greedy {r['greedy_nodes']}"
        )
    print(f"whole processes on {args.store_nodes:,} nodes (median of {args.runs}; target < 0.5 s):")
    for name, t in results["cli"].items():
        print(
            f"  collector {name:<22} {t['median_s']:.3f} s "
            f"(min {t['min_s']:.3f}, max {t['max_s']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
