"""The usage ledger's job at fleet scale: how long one run takes to compute its hours.

Prints figures (not pass/fail). A SQLite store of ``--nodes`` (12,500) 8-GPU nodes with
``--days`` (3) of 1-hour rollups (one sample per node-hour, stored and folded; the last
day's raw samples kept, as a day's retention does), ``--bare`` of the nodes (10 %) without
an inventory (their GPUs then come from what they reported), every node leased (50
leases). Then, ``--rounds`` times, one :class:`~collector.governance.ledger.LedgerJob` run
on a read-only connection (its record made, not written), wall ms and process CPU ms:

``steady``
    The ledger's time 5 minutes ago, the previous hour marked: the run every
    ``ledger_interval_s`` does (two hours).
``catch-up``
    The ledger's time three days ago (a collector outage): one run of ``max_hours`` (48).

``--db PATH`` builds the store there once and reuses it (what a paired comparison of two
versions needs: run each on the same file, in turn).

Measured (2 shared cores, load ~1.5-2.8, 4 pairs in alternating order, SQLite): at 12,500
nodes x 3 days (10 % bare), steady 400-540 ms, a catch-up run of 48 hours 11.8-13.5 s
(before the GPUs of bare nodes were read per hour: 400-470 ms, 11.4-12.4 s). With 1,250
bare nodes x 30 days: steady 82-192 ms (before: 395-943 ms, every run reading each bare
node's whole history), catch-up 1.25-1.94 s (before: 1.42-2.16 s).

Usage: ``.venv/bin/python bench/bench_ledger.py [--db PATH] [--rounds N]
[--scenario steady|catch-up|all]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator
from bench.bench_rollups import hour_sample, lease_slices
from collector.governance.ledger import LedgerJob
from collector.live import LiveView
from collector.settings import RollupSettings
from collector.store.db import NodeUpdate, Store
from collector.store.governance import governance
from collector.store.ledger import LEDGER_AT_KEY
from collector.store.rollups import HOUR, RollupConfig
from shared.clock import FakeClock
from shared.schema import encode

__all__ = ["main"]

DAY0: Final = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
_LEASES: Final = 50


def _names(nodes: int) -> list[str]:
    return [f"x{1000 + i // 64}c0s{i % 64 // 8}b0n{i % 8}" for i in range(nodes)]


async def build(db: Path, nodes: int, days: int, bare: float) -> None:
    """The store described in the module docstring."""
    names = _names(nodes)
    inv = encode(FleetSimulator(1, gpus_per_node=8, seed=1).inventory(0, DAY0))
    dressed = names[round(bare * nodes) :]
    async with Store(db, rollups=RollupConfig(), synchronous="normal") as st:
        await st.write_batch(
            [], [NodeUpdate(n, inventory=inv, inventory_ts=DAY0) for n in dressed], names
        )
        for h in range(days * 24):
            t_ms = round((DAY0 + h * HOUR) * 1000)
            await st.write_batch([hour_sample(n, i, h, t_ms) for i, n in enumerate(names)])
            await st.fold_rollups()
        end_ms = round((DAY0 + days * 86_400) * 1000)
        while await st.delete_older_than(end_ms - 86_400_000, 100_000):
            pass
    lease_slices(db, DAY0, names, _LEASES, nodes // _LEASES)


async def _set(db: Path, ledger_at: float, dirty: list[int]) -> None:
    """The ledger's time and marks as a scenario has them."""
    async with Store(db) as st, st.transaction("bench state"):
        await st.execute("DELETE FROM ledger_dirty")
        for h in dirty:
            await st.execute("INSERT INTO ledger_dirty (hour, n) VALUES (?, 1)", (h,))
        await st.execute(
            "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (LEDGER_AT_KEY, repr(ledger_at), ledger_at),
        )


async def measure(db: Path, days: int, scenario: str, rounds: int) -> None:
    """``rounds`` runs of the job in ``scenario``; each run's figures, then their range."""
    now = DAY0 + days * 86_400 + 300
    last = int(now) // HOUR * HOUR - HOUR
    if scenario == "steady":
        await _set(db, now - 300, [last])
    else:
        await _set(db, now - 3 * 86_400, [])
    async with Store.open_readonly(db) as reads:
        gov = await reads.run(governance())
    walls, cpus = [], []
    for _ in range(rounds):
        async with Store.open_readonly(db) as reads:
            job = LedgerJob(
                FakeClock(start_wall=now),
                retention_s=RollupSettings().retention_1h_s,
                governance=lambda: gov,
            )
            c0, w0 = time.process_time(), time.perf_counter()
            record = await job(reads, LiveView())
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        assert record is not None
        rows = sum(len(p.rows) for p in record.parts)
        hours = len({p.hour for p in record.parts})
        walls.append(wall * 1e3)
        cpus.append(cpu * 1e3)
        print(
            f"{scenario}: {hours} hours, {rows:,} rows: {wall * 1e3:,.0f} ms wall, "
            f"{cpu * 1e3:,.0f} ms CPU"
        )
    print(
        f"{scenario}: wall {min(walls):,.0f}..{max(walls):,.0f} ms (median "
        f"{statistics.median(walls):,.0f}), CPU {min(cpus):,.0f}..{max(cpus):,.0f} ms"
    )


def main() -> None:
    """Build the store (unless ``--db`` holds one) and run the scenarios asked for."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--db", type=Path, help="build the store here once (default: a temp dir)")
    p.add_argument("--nodes", type=int, default=12_500)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--bare", type=float, default=0.1, help="share of nodes with no inventory")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenario", choices=("steady", "catch-up", "all"), default="all")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as d:
        db = args.db or Path(d) / "ledger.db"
        if not db.exists():
            t0 = time.perf_counter()
            asyncio.run(build(db, args.nodes, args.days, args.bare))
            print(f"built {db} in {time.perf_counter() - t0:,.0f} s")
        for scenario in ("steady", "catch-up"):
            if args.scenario in (scenario, "all"):
                asyncio.run(measure(db, args.days, scenario, args.rounds))


if __name__ == "__main__":
    main()
