"""Time live capacity at 12,500 nodes of three types (medians; no pass/fail).

Run: ``.venv/bin/python bench/bench_capacity.py``. The issue's targets: one capacity cycle
(live picture + fixed-fleet solves + snapshot write) < 200 ms of collector CPU;
``collector capacity`` whole process < 300 ms; what-if < 300 ms.

The fleet: 5,000 DGX H100 and 5,000 HGX B200 (simulated samples, 8 GPUs each, matched by GPU
model) and 2,500 CPU nodes, in a live view as the collector holds it; a 150 MW site on an
8-plane fat tree of 64-port switches.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from agent.simulate import FleetSimulator
from collector.capacity.config import load_capacity_plan
from collector.capacity.job import CapacityJob
from collector.capacity.whatif import what_if
from collector.evaluate import run_once
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from collector.store.db import NodeUpdate, SampleRow, Store
from shared.clock import SystemClock
from shared.logging import configure_logging
from shared.schema import encode
from shared.topics import inventory_topic, sample_topic

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

_NODE = {
    "gpus_per_node": 8,
    "cpu_w": 700,
    "dram_w": 400,
    "nvme_w": 200,
    "nics_per_node": 8,
    "nic_w": 25,
    "node_aux_w": 1500,
}
PLAN: dict[str, Any] = {
    "site": {"it_cap_mw": 150.0, "pue": 1.25, "rack_power_kw": 2700},
    "node_types": [
        {"name": "DGX-H100", "gpu_w": 700, "nameplate_w": 10200, **_NODE},
        {"name": "HGX-B200", "gpu_w": 1000, "nameplate_w": 14300, **_NODE},
        {
            "name": "CPU-2S",
            "gpus_per_node": 0,
            "gpu_w": 0,
            "cpu_w": 700,
            "dram_w": 300,
            "nvme_w": 100,
            "nics_per_node": 8,
            "nic_w": 25,
            "node_aux_w": 200,
        },
    ],
    "fabric": {
        "planes": 8,
        "leaf": {"name": "QM9700", "ports": 64, "switch_w": 1720},
        "spine": {"name": "QM9700", "ports": 64, "switch_w": 1720},
    },
    "capacity": {
        "match": [
            {"node_type": "HGX-B200", "gpu_model": "B200"},
            {"node_type": "DGX-H100", "gpu_model": "H100"},
        ]
    },
}


def fleet_view(now: float, messages: list[tuple[str, bytes]] | None = None) -> LiveView:
    """12,500 nodes with inventories and one fresh sample each (their wire messages are
    appended to ``messages`` when given)."""
    view = LiveView()
    for sim, rename in (
        (FleetSimulator(5_000, seed=1), None),
        (FleetSimulator(5_000, seed=2, first_index=5_000), "NVIDIA B200"),
        (FleetSimulator(2_500, seed=3, first_index=10_000, gpus_per_node=0), None),
    ):
        for i in range(len(sim.node_ids)):
            inv = sim.inventory(i, now)
            if rename is not None:
                inv = msgspec.structs.replace(
                    inv, gpus=[msgspec.structs.replace(g, name=rename) for g in inv.gpus]
                )
            sample = sim.sample(i, now, 0)
            view.on_inventory(inv, now)
            view.on_sample(sample, now)
            view.on_status(sim.node_ids[i], "online", now)
            if messages is not None:
                node = sim.node_ids[i]
                messages.append((inventory_topic(node), encode(inv)))
                messages.append((sample_topic(node), encode(sample)))
    return view


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


async def _fill(db: Path, messages: list[tuple[str, bytes]]) -> None:
    """Store the fleet's inventories and samples as the collector's writer would."""
    ingestor = Ingestor(SystemClock())
    rows, updates, nodes = [], [], set()
    for topic, payload in messages:
        item = ingestor.handle(topic, payload)
        if isinstance(item, SampleRow):
            rows.append(item)
            nodes.add(item.node)
        elif isinstance(item, NodeUpdate):
            updates.append(item)
    async with Store(db) as store:
        await store.write_batch(rows, updates, sorted(nodes))


async def _cycles(job: CapacityJob, view: LiveView, db: Path, runs: int) -> tuple[float, float]:
    """Median CPU ms and wall ms of one whole cycle (picture, solves, snapshot write)."""
    cpu, wall = [], []
    async with Store(db) as store:
        await run_once(
            job, store, view
        )  # warm: type matching cached per inventory, as in the collector
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            await run_once(job, store, view)
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(cpu), statistics.median(wall)


def _process_ms(argv: list[str], runs: int) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CAPWATCH_")}
    times, rc = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False, env=env)
        times.append((time.perf_counter() - t0) * 1e3)
        rc = done.returncode
    return statistics.median(times), rc


def main() -> None:
    """Print the figures."""
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "site.json"
        plan_path.write_text(json.dumps(PLAN))
        cplan = load_capacity_plan(plan_path)
        now = time.time()
        messages: list[tuple[str, bytes]] = []
        view = fleet_view(now, messages)
        job = CapacityJob(cplan, SystemClock(), interval_s=30.0)
        db = Path(tmp) / "capwatch.db"
        asyncio.run(_fill(db, messages))
        cpu_ms, wall_ms = asyncio.run(_cycles(job, view, db, 15))
        p = job.state.latest.picture
        assert p is not None
        kinds = ", ".join(f"{t.nodes:,} {t.node_type}" for t in p.types)
        print(
            f"fleet: {p.nodes:,} nodes ({kinds});"
            f" IT {p.it_w / 1e6:,.2f} MW of {p.cap_w / 1e6:,.0f} MW; fabric {p.fabric_tiers} "
            f"tiers, {p.fabric_switches:,} switches; unmatched {p.unmatched_nodes}"
        )
        print(f"{'one capacity cycle, 12,500 nodes (collector CPU)':<58} {cpu_ms:8.1f} ms")
        print(f"{'  same, wall clock (picture + solves + snapshot write)':<58} {wall_ms:8.1f} ms")
        print(f"{'  the picture alone (last cycle, compute_ms)':<58} {p.compute_ms:8.1f} ms")
        ms = _median_ms(lambda: what_if(cplan, p, {"DGX-H100": 32}), 21)
        print(f"{'what-if +32 DGX-H100, in process (solver)':<58} {ms:8.2f} ms")
        from collector.capacity.compute import compute_picture  # noqa: PLC0415
        from collector.plot.figures import save  # noqa: PLC0415
        from collector.plot.treemap import hierarchy_figure  # noqa: PLC0415

        t0 = time.perf_counter()
        full = compute_picture(cplan, view.nodes(), now, keep_nodes=True)
        save(hierarchy_figure(cplan, full), Path(tmp) / "hierarchy.png")
        ms = (time.perf_counter() - t0) * 1e3
        print(f"{'hierarchy treemap of 12,500 nodes, drawn and written (once)':<58} {ms:8.0f} ms")
        runs = 7
        cli = [str(BIN / "collector"), "capacity", "--db", str(db)]
        for label, argv in (
            ("collector capacity, whole process", cli),
            ("collector capacity --json, whole process", [*cli, "--json"]),
            ("collector capacity --add 32xDGX-H100, whole process", [*cli, "--add", "32xDGX-H100"]),
            (
                "collector capacity --now (12,500 stored samples), whole process",
                [*cli, "--now", "--plan", str(plan_path)],
            ),
        ):
            ms, rc = _process_ms(argv, runs)
            note = "" if rc in (0, 1) else f"  (exit {rc}!)"
            print(f"{label:<58} {ms:8.1f} ms  (median of {runs}){note}")


if __name__ == "__main__":
    main()
