"""``collector quota show`` on a 12,500-node fleet: whole processes, median wall time.

Prints figures (target in issue 8: < 500 ms). The store is built once through the store's
own API (:class:`collector.store.db.Store`, simulator inventories and samples) and the
commands' own writer (:class:`collector.store.command.Command`): 12,500 8-GPU
nodes with ``--minutes`` of samples at one a minute ending now, 50 tenants in 5 cohorts,
each leasing 250 nodes, with quotas on gpus, power_kw and gpu_hours (the GPU-hours figure
reads every sample of the period, so ``--minutes`` sizes that part of the work).

Before each command a governance evaluation runs as in the collector (a full live view), so
``quota show`` reads the collector's fresh figures; ``--from-store`` computes them from the
stored samples instead (what it does when no collector runs).

Usage: ``.venv/bin/python bench/bench_quota.py [--db PATH] [--runs 9] [--minutes 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.simulate import FleetSimulator
from collector.evaluate import run_once
from collector.governance.job import GovernanceJob
from collector.governance.lease import LeaseTerms
from collector.governance.ops import LeaseRequest, add_lease
from collector.governance.quota import Quota
from collector.ingest.validate import sample_row
from collector.live import LiveView
from collector.store.command import Command
from collector.store.db import NodeUpdate, Store
from collector.store.usage import node_hardware
from shared.clock import SystemClock
from shared.schema import encode

__all__ = ["main"]

BIN = Path(sys.executable).parent
NODES = 12_500
TENANTS = 50
COHORTS = 5


async def build_store(db: Path, minutes: int) -> None:
    """12,500 nodes with ``minutes`` of samples, 50 tenants in 5 cohorts, each leasing 250."""
    sim = FleetSimulator(NODES, gpus_per_node=8, seed=3, interval_s=60)
    now = time.time()
    async with Store(db) as store:
        updates = [
            NodeUpdate(n, "online", now, encode(sim.inventory(i, now)), now)
            for i, n in enumerate(sim.node_ids)
        ]
        await store.write_batch([], updates, sim.node_ids)
        last = int(now)
        for k in range(minutes):
            ts = last - (minutes - 1 - k) * 60
            rows = []
            for i in range(NODES):
                s = sim.sample(i, float(ts), ts // 60)
                rows.append(sample_row(s, encode(s), ts + 0.2))
            await store.write_batch(rows)
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=10)
    per = NODES // TENANTS
    with Command(db) as tx:
        for c in range(COHORTS):
            tx.governance.put_cohort(f"cohort{c}")
            tx.governance.put_cohort_quota(f"cohort{c}", "gpus", Quota(100.0))
        for t in range(TENANTS):
            tenant = f"tenant{t:02d}"
            tx.governance.put_tenant(tenant, f"cohort{t % COHORTS}", t % 3)
            tx.governance.put_quota(tenant, "gpus", Quota(per * 8, borrowing_limit=200))
            tx.governance.put_quota(tenant, "power_kw", Quota(per * 6.0))
            tx.governance.put_quota(tenant, "gpu_hours", Quota(per * 8 * 24 * 30.0), "month")
        hardware = tx.run(node_hardware(tx.dialect))
    for t in range(TENANTS):  # a command each: one holding them all outran the lock budget
        nodes = tuple(sim.node_ids[t * per : (t + 1) * per])
        with Command(db) as tx:
            add_lease(
                tx,
                LeaseRequest(
                    name=f"lease{t:02d}",
                    tenant=f"tenant{t:02d}",
                    terms=LeaseTerms(start, 180, notice_days=90),
                    pool=f"pool{t:02d}",
                    nodes=nodes,
                    force_reason="bench",
                ),
                hardware,
            )


async def _collector_snapshot(db: Path) -> float:
    """What a running collector leaves: one governance evaluation over a full live view."""
    sim = FleetSimulator(NODES, gpus_per_node=8, seed=3, interval_s=60)
    live = LiveView()
    now = time.time()
    for i in range(NODES):
        live.on_inventory(sim.inventory(i, now), now)
        live.on_sample(sim.sample(i, now, int(now) // 60), now)
    async with Store(db) as store:
        job = GovernanceJob(SystemClock())
        await run_once(job, store, live)  # loads the state and the period's GPU-hours
        later = now + 5.0
        for i in range(NODES):  # every node sent a new sample since: nothing cached
            live.on_sample(sim.sample(i, later, int(later) // 60 + 1), later)
        t0 = time.perf_counter()
        await run_once(job, store, live)
        return time.perf_counter() - t0


def _time(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up: page cache
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    """Build (or reuse) the store, then time the commands."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", type=Path, default=Path("/tmp/capwatch-bench-quota.db"))
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args()
    if args.rebuild or not args.db.is_file():
        for suffix in ("", "-wal", "-shm"):
            Path(str(args.db) + suffix).unlink(missing_ok=True)
        t0 = time.perf_counter()
        asyncio.run(build_store(args.db, args.minutes))
        print(f"built {args.db}: {NODES} nodes, {NODES * args.minutes} samples, "
              f"{TENANTS} tenants in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    collector = str(BIN / "collector")
    cases = {
        "quota show": [collector, "quota", "show", "--db", str(args.db)],
        "quota show --json": [collector, "quota", "show", "--db", str(args.db), "--json"],
        "quota show tenant07": [collector, "quota", "show", "tenant07", "--db", str(args.db)],
        "quota check tenant07 --gpus 16": [
            collector,
            "quota",
            "check",
            "tenant07",
            "--gpus",
            "16",
            "--db",
            str(args.db),
        ],
        "lease list": [collector, "lease", "list", "--db", str(args.db)],
    }
    cases["quota show --from-store"] = [*cases["quota show"], "--from-store"]
    for name, cmd in cases.items():
        job_s = asyncio.run(_collector_snapshot(args.db))  # fresh for the next minute
        times = _time(cmd, args.runs)
        print(
            f"{name:<34} median {statistics.median(times) * 1000:6.0f} ms  "
            f"min {min(times) * 1000:6.0f}  max {max(times) * 1000:6.0f}  (n={len(times)})"
        )
    print(
        "one governance evaluation in the collector (12,500 leased nodes, each with a new "
        f"sample): {job_s * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
