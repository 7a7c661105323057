"""Admission over a lease's whole interval, and ``quota show --tree``: whole processes.

Prints figures (targets in issue 16: admission of one lease against 2,000 existing leases
over two years < 300 ms). The store is built once through the store's own API
(:class:`collector.store.db.Store` for the inventories, the commands' writer
:class:`collector.store.command.Command` for the governance): 500 8-GPU nodes
each leased four times in a row (2,000 leases, 180 days each, from a year ago to a year
ahead, so every lease is in the two years around today), 50 tenants in a tree of three
levels (a root cohort, 5 cohorts under it, 2 under each of those: 10 leaf cohorts of 5
tenants), GPU quotas with borrowing limits at each level.

Timed: ``collector lease add`` of one spare node for two years from today by a tenant
(admitted: the sweep visits every change point of the two years; each run leases another
spare node, so the state grows by one lease a run), ``collector quota show --tree`` and
``--tree --json``.

Usage: ``.venv/bin/python bench/bench_admission.py [--db PATH] [--runs 9] [--rebuild]``
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
from collector.governance.lease import LeaseTerms
from collector.governance.quota import Quota
from collector.store.command import Command
from collector.store.db import NodeUpdate, Store
from shared.schema import encode

__all__ = ["main"]

BIN = Path(sys.executable).parent
NODES = 500
SPARES = 40
TENANTS = 50
LEASES_PER_NODE = 4
TERM_DAYS = 180


async def _nodes(db: Path) -> list[str]:
    sim = FleetSimulator(NODES + SPARES, gpus_per_node=8, seed=5, interval_s=60)
    now = time.time()
    async with Store(db) as store:
        updates = [
            NodeUpdate(n, "online", now, encode(sim.inventory(i, now)), now)
            for i, n in enumerate(sim.node_ids)
        ]
        await store.write_batch([], updates, sim.node_ids)
    return list(sim.node_ids)


def build_store(db: Path) -> list[str]:
    """The fleet and the governance state; returns the spare nodes (leased by no one)."""
    nodes = asyncio.run(_nodes(db))
    leased, spares = nodes[:NODES], nodes[NODES:]
    first = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=360)
    with Command(db) as tx:
        tx.governance.put_cohort_quota("root", "gpus", Quota(64))
        for m in range(5):
            tx.governance.set_cohort_parent(f"mid{m}", "root")
            tx.governance.put_cohort_quota(f"mid{m}", "gpus", Quota(32, borrowing_limit=256))
            for leaf in range(2):
                name = f"leaf{m}{leaf}"
                tx.governance.set_cohort_parent(name, f"mid{m}")
                tx.governance.put_cohort_quota(name, "gpus", Quota(16, borrowing_limit=128))
        for t in range(TENANTS):
            m, leaf = divmod(t // 5, 2)
            tenant = f"tenant{t:02d}"
            tx.governance.put_tenant(tenant, f"leaf{m}{leaf}", 0)
            tx.governance.put_quota(tenant, "gpus", Quota(80, borrowing_limit=200))
        for i, node in enumerate(leased):
            for k in range(LEASES_PER_NODE):
                start = first + dt.timedelta(days=k * TERM_DAYS + i % 30)
                tx.governance.add_lease(
                    name=f"l{i}-{k}",
                    tenant=f"tenant{(i + k) % TENANTS:02d}",
                    pool=None,
                    nodes=[node],
                    terms=LeaseTerms(start, TERM_DAYS - 30),
                )
    return spares


def _time(cmds: list[list[str]]) -> list[float]:
    out = []
    for cmd in cmds:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        out.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[1:4])}: exit {done.returncode}: {done.stderr}")
    return out


def _line(name: str, times: list[float]) -> str:
    return (
        f"{name:<38} median {statistics.median(times) * 1000:6.0f} ms  "
        f"min {min(times) * 1000:6.0f}  max {max(times) * 1000:6.0f}  (n={len(times)})"
    )


def main() -> None:
    """Build (or reuse) the store, then time the commands."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", type=Path, default=Path("/tmp/capwatch-bench-admission.db"))
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args()
    if args.runs + 1 > SPARES // 2:
        raise SystemExit(f"--runs: at most {SPARES // 2 - 1}")
    for suffix in ("", "-wal", "-shm"):
        Path(str(args.db) + suffix).unlink(missing_ok=True)  # the lease adds change it
    t0 = time.perf_counter()
    spares = build_store(args.db)
    print(
        f"built {args.db}: {NODES} leased nodes, {NODES * LEASES_PER_NODE} leases, "
        f"{TENANTS} tenants in 3 levels in {time.perf_counter() - t0:.1f} s"
    )
    collector = str(BIN / "collector")
    db = str(args.db)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    adds = [
        [collector, "lease", "add", "--db", db, "--tenant", f"tenant{i % TENANTS:02d}",
         "--nodes", spares[i], "--start", today, "--duration", "730d", "--name", f"bench{i}"]
        for i in range(args.runs + 1)
    ]  # fmt: skip
    _time(adds[:1])  # warm-up: page cache, bytecode
    print(_line("lease add (2 years, vs 2,000 leases)", _time(adds[1:])))
    for name, extra in (("quota show --tree", []), ("quota show --tree --json", ["--json"])):
        cmd = [collector, "quota", "show", "--db", db, "--tree", "--from-store", *extra]
        _time([cmd])
        print(_line(name + " (50 tenants, 3 levels)", _time([cmd] * args.runs)))


if __name__ == "__main__":
    main()
