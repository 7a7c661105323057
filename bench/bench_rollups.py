"""Rollups and the usage ledger: cost per sample, bytes per node-day, month-long reads.

Prints figures (targets in issue 17, not pass/fail):

``cost``
    ``Store.write_batch`` of 8-GPU samples (4,000-sample batches, as the writer commits
    during a drain) with rollups off and on, and the folds: process CPU microseconds per
    sample (the writer's connection thread included).
``bytes``
    20 nodes x one day at 30 s through the real path (stage, fold), raw samples then
    deleted and the file vacuumed: rollup bytes per node-day (node + 8 GPUs, both
    resolutions).
``reads``
    A store of 1,000 8-GPU nodes x 30 days of 1-hour rollups (one sample per node-hour,
    stored, folded, then the raw samples deleted) and the usage ledger made by
    :func:`collector.governance.ledger.ledger_rows`
    (50 tenants, one lease of 20 nodes each; the CPU its rows take to make, printed), then
    whole processes, median of 5:
    ``collector usage --month``, ``collector query --node N --since 30d --step 1h`` and
    the same with ``--gpus`` (each of the node's 8 GPUs per hour, from rollups alone).
``gpus``
    One 8-GPU node through the real path (encoded samples, stage, fold): 29 days at 60 s,
    then a day at 5 s kept raw (17,280 samples; the older deleted as retention does), then
    whole processes, median of 5: ``collector query --node N --gpus --since 30d --step 1h``
    and ``--gpus --since 24h`` (a point per GPU and minute: the rollups for the minutes
    folded, raw payloads decoded only for those not) and, for comparison, the node's own
    ``--since 30d --step 1h``. ``--gpus-db PATH`` keeps the store for ``farm-bench``.

``parts``
    The fold at the stall bench's scale: 12,500 8-GPU nodes, 100,000 staged samples (8 per
    node, in 4,000-sample batches) folded once (the minutes and the hour then stored),
    then the next 100,000 folded part by part as the writer does (:class:`collector.store.
    fold.Fold`), each part's ``write`` timed (what the writer waits for: the transaction,
    and the rest of the part's buckets if their worker thread has not finished): median,
    p90, longest, and the sum; with the stage in one shard (the fold in one transaction,
    as before the parts) and in 128 shards (``[rollups] fold_shards``), ``--rounds``
    pairs in turn.

The drain with rollups on and off is ``bench/bench_pipeline.py --mode drain`` with
``CAPWATCH_ROLLUPS__ENABLED=false|true``.

Usage: ``.venv/bin/python bench/bench_rollups.py [--part cost|bytes|reads|gpus|parts|all]
[--rounds N]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Final

import structlog

from agent.simulate import FleetSimulator
from collector.governance.lease import LeaseTerms
from collector.governance.ledger import ledger_rows, node_hours
from collector.ingest.validate import sample_row
from collector.ingest.writer import FOLD_SAMPLES
from collector.store.command import Command
from collector.store.db import NodeUpdate, SampleRow, Store
from collector.store.governance import governance
from collector.store.ledger import lease_history, write_ledger
from collector.store.rollups import HOUR, RollupConfig, hour_rows
from shared.schema import encode

__all__ = ["hour_sample", "lease_slices", "main"]

_PARTED: Final = 128
"""The shards ``--part parts`` compares with one (``[rollups] fold_shards``)."""

BIN = Path(sys.executable).parent


def hour_sample(node: str, i: int, h: int, t_ms: int) -> SampleRow:
    """Node ``i``'s (``node``) sample of hour ``h`` at ``t_ms``, an hour long: 8 GPUs at
    400 W and a utilisation that varies by node and hour (no payload: rollups alone)."""
    util = float((i * 7 + h * 13) % 100)
    stats = array("f", [v for g in range(8) for v in (g, util, 400.0, 60.0, 8e10)])
    return SampleRow(node, t_ms, 0, t_ms, 3600.0, None, 0, 0, 8, util, 640_000_000_000,
                     8 * 400.0, 300.0, b"{}", gpu_stats=stats.tobytes())  # fmt: skip


def lease_slices(db: Path, now: float, names: list[str], leases: int, per: int) -> None:
    """``leases`` leases, ``lease-K`` of ``tenant-K`` holding the K-th ``per`` of ``names``,
    each a year from 2026-11-01 (added at ``now``)."""
    with Command(db, now=now) as tx:
        for k in range(leases):
            tx.governance.add_lease(
                name=f"lease-{k}",
                tenant=f"tenant-{k}",
                pool=None,
                nodes=names[k * per : (k + 1) * per],
                terms=LeaseTerms(start=dt.date(2026, 11, 1), duration_days=365),
            )


async def cost(rounds: int) -> None:
    """CPU us per sample, rollups off and on, ``rounds`` pairs (in turn, off first then on
    first: paired under the same load), then the range of each and of the difference."""
    n, ticks = 4000, 13
    sim = FleetSimulator(n, gpus_per_node=8, seed=3, interval_s=5)
    t0 = 1.8e9
    batches = [
        [
            sample_row(s, encode(s), t0 + 5 * k)
            for s in (sim.sample(i, t0 + 5 * k, k) for i in range(n))
        ]
        for k in range(ticks)
    ]
    figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for r in range(rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as d:
                cfg = RollupConfig() if on else None
                async with Store(Path(d) / "c.db", rollups=cfg, synchronous="normal") as st:
                    await st.write_batch(batches[0])
                    if on:
                        await st.fold_rollups()
                    c0, w0 = time.process_time(), time.perf_counter()
                    fold_cpu = 0.0
                    for b in batches[1:]:
                        await st.write_batch(b)
                        if on and st.pending_rollups >= FOLD_SAMPLES:  # the writer's threshold
                            f = time.process_time()
                            await st.fold_rollups()
                            fold_cpu += time.process_time() - f
                    if on:
                        f = time.process_time()
                        await st.fold_rollups()
                        fold_cpu += time.process_time() - f
                    samples = n * (ticks - 1)
                    cpu = (time.process_time() - c0) / samples * 1e6
                    wall = (time.perf_counter() - w0) / samples * 1e6
                    folds = fold_cpu / samples * 1e6
                    figures[on].append((cpu, folds))
                    print(
                        f"cost: rollups {'on ' if on else 'off'} {cpu:6.1f} us CPU/sample "
                        f"({wall:.1f} us wall; folds {folds:.1f} us/sample)"
                    )
    off, on_ = [c for c, _ in figures[False]], [c for c, _ in figures[True]]
    more = [b - a for a, b in zip(off, on_, strict=True)]
    print(
        f"cost: off {min(off):.1f}..{max(off):.1f}, on {min(on_):.1f}..{max(on_):.1f} us "
        f"CPU/sample; on - off, paired: {min(more):.1f}..{max(more):.1f} us; the folds "
        f"{min(f for _, f in figures[True]):.1f}..{max(f for _, f in figures[True]):.1f} us"
    )


async def parts(rounds: int) -> None:
    """Each part's ms of a fold of 100,000 samples at 12,500 nodes, one shard vs the default."""
    n, per = 12_500, 8
    sim = FleetSimulator(n, gpus_per_node=8, seed=3, interval_s=1.25)
    t0 = 1.8e9 - 1.8e9 % 3600
    rows = [
        sample_row(s, encode(s), t0 + 1.25 * k)
        for k in range(2 * per)
        for s in (sim.sample(i, t0 + 1.25 * k, k) for i in range(n))
    ]
    half = n * per
    for r in range(rounds):
        for shards in (1, _PARTED) if r % 2 == 0 else (_PARTED, 1):
            with tempfile.TemporaryDirectory() as d:
                cfg = RollupConfig(stage_shards=shards)
                async with Store(Path(d) / "c.db", rollups=cfg, synchronous="normal") as st:
                    for i in range(0, half, 4000):
                        await st.write_batch(rows[i : min(i + 4000, half)])
                    await st.fold_rollups()
                    for i in range(half, 2 * half, 4000):
                        await st.write_batch(rows[i : min(i + 4000, 2 * half)])
                    fold = st.rollup_fold()
                    assert fold is not None
                    ms: list[float] = []
                    more = True
                    while more:
                        t = time.perf_counter()
                        more = await fold.write(st)
                        ms.append((time.perf_counter() - t) * 1e3)
                        await asyncio.sleep(0.008)  # a batch's time: the next part's buckets
                    ms.sort()
                    print(
                        f"parts: {shards:3d} shard(s): {len(ms)} parts ({fold.samples:,} samples)"
                        f", median {statistics.median(ms):.1f} ms, p90 "
                        f"{ms[int(0.9 * (len(ms) - 1))]:.1f} ms, longest {ms[-1]:.1f} ms, "
                        f"sum {sum(ms):.0f} ms"
                    )


async def size() -> None:
    """Rollup bytes per node-day."""
    nodes, step = 20, 30
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=4, interval_s=step)
    t0 = 1.8e9 - 1.8e9 % 86_400
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "c.db"
        async with Store(db, rollups=RollupConfig(), synchronous="normal") as st:
            for k in range(86_400 // step):
                t = t0 + step * k
                await st.write_batch(
                    [
                        sample_row(s, encode(s), t)
                        for s in (sim.sample(i, t, k) for i in range(nodes))
                    ]
                )
                if k % 200 == 0:
                    await st.fold_rollups()
            await st.fold_rollups()
            empty = await _bytes(st)  # raw + rollups
            await st.delete_older_than(1 << 62, 1 << 30)
            await st.execute("VACUUM")
            rolled = await _bytes(st)
        print(
            f"bytes: rollups {rolled / nodes:,.0f} B per node-day (node + 8 GPUs, 1m + 1h; "
            f"store with a day of raw at {step} s: {empty / nodes:,.0f} B per node-day)"
        )


async def _bytes(st: Store) -> int:
    rows = await st.fetchall("PRAGMA page_count")
    size = await st.fetchall("PRAGMA page_size")
    return int(rows[0][0]) * int(size[0][0])


async def _bytes_of(db: Path) -> int:
    async with Store(db) as st:
        return await _bytes(st)


def _median_ms(argv: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def reads(db: Path) -> None:
    """usage --month and query --since 30d --step 1h on 1,000 nodes x 30 days."""
    nodes, days, tenants = 1000, 30, 50
    month0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    names = [f"x{1000 + i // 64}c0s{i % 64 // 8}b0n{i % 8}" for i in range(nodes)]
    inv = encode(FleetSimulator(1, gpus_per_node=8, seed=1).inventory(0, month0))
    async with Store(db, rollups=RollupConfig(), synchronous="normal") as st:
        await st.write_batch(
            [], [NodeUpdate(n, inventory=inv, inventory_ts=month0) for n in names], names
        )
        for day in range(days):
            samples = []
            for h in range(24):
                t_ms = round((month0 + (day * 24 + h) * 3600) * 1000)
                samples += [hour_sample(n, i, h, t_ms) for i, n in enumerate(names)]
            await st.write_batch(samples)
            await st.fold_rollups()
        await st.delete_older_than(1 << 62, 1 << 30)  # rollups alone, as after 24 h
    lease_slices(db, month0, names, tenants, 20)
    async with Store(db) as st:
        gov = await st.run(governance())
        members = await st.run(lease_history(month0))
        gpus = dict.fromkeys(names, 8)
        cpu = 0.0
        for day in range(days):
            hours = [int(month0) + (day * 24 + h) * HOUR for h in range(24)]
            rows = []
            for hour in hours:
                stored = await st.run(hour_rows(hour, hour + HOUR))
                c = time.process_time()
                rollups = node_hours(stored)
                rows += ledger_rows(hour, rollups, gov, gpus=gpus, pools={}, members=members)
                cpu += time.process_time() - c
            await write_ledger(st, hours, rows, (), time.time())
        (ledger,) = (await st.fetchall("SELECT count(*) FROM usage_ledger"))[0]
    print(
        f"reads: store of {nodes} nodes x {days} days, {ledger:,} ledger rows, "
        f"{(await _bytes_of(db)) / 1e6:,.0f} MB; the ledger's rows made in {cpu:.2f} s CPU "
        "(node_hours + ledger_rows, 720 hours)"
    )
    usage = _median_ms(
        [str(BIN / "collector"), "usage", "--db", str(db), "--month", "2026-11", "--json"]
    )
    query = _median_ms(
        [str(BIN / "collector"), "query", "--db", str(db), "--node", names[0], "--since", "40d",
         "--step", "1h", "--json"]
    )  # fmt: skip
    print(
        f"reads: collector usage --month 2026-11 --json: {usage:.0f} ms "
        "(median of 5, whole process)"
    )
    print(f"reads: collector query --node N --since 40d --step 1h --json: {query:.0f} ms")
    gpu_ms = _median_ms(
        [str(BIN / "collector"), "query", "--db", str(db), "--node", names[0], "--gpus",
         "--since", "30d", "--step", "1h", "--json"]
    )  # fmt: skip
    print(f"reads: collector query --node N --gpus --since 30d --step 1h --json: {gpu_ms:.0f} ms")


async def gpu_reads(db: Path) -> None:
    """query --gpus --since 30d --step 1h over rollups and a day of raw samples at 5 s."""
    sim = FleetSimulator(1, gpus_per_node=8, seed=11, interval_s=5)
    node = sim.node_ids[0]
    now = time.time()
    raw_from = now - 86_400
    t, k = raw_from - 29 * 86_400, 0
    async with Store(db, rollups=RollupConfig(), synchronous="normal") as st:
        while t < now:
            batch = []
            for _ in range(4000):
                if t >= now:
                    break
                s = sim.sample(0, t, k)
                batch.append(sample_row(s, encode(s), t))
                t, k = t + (5 if t >= raw_from else 60), k + 1
            await st.write_batch(batch, new_nodes=[node] if k <= 4000 else ())
            await st.fold_rollups()
        await st.delete_older_than(round(raw_from * 1000), 1 << 30)
        (raw,) = (await st.fetchall("SELECT count(*) FROM samples"))[0]
    base = [str(BIN / "collector"), "query", "--db", str(db), "--node", node, "--since", "30d"]
    gpus = _median_ms([*base, "--gpus", "--step", "1h", "--json"])
    table = _median_ms([*base, "--gpus", "--step", "1h"])
    own = _median_ms([*base, "--step", "1h", "--json"])
    day = _median_ms([*base[:-1], "24h", "--gpus", "--json"])
    print(f"gpus: one 8-GPU node, 29 days of rollups + {raw:,} raw samples (a day at 5 s)")
    print(f"gpus: collector query --node N --gpus --since 30d --step 1h --json: {gpus:.0f} ms")
    print(f"gpus: the same as a table: {table:.0f} ms")
    print(f"gpus: collector query --node N --since 30d --step 1h --json: {own:.0f} ms")
    print(f"gpus: collector query --node N --gpus --since 24h --json: {day:.0f} ms")


def main() -> None:
    """Run the parts asked for and print their figures."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--part", choices=("cost", "bytes", "reads", "gpus", "parts", "all"), default="all"
    )
    p.add_argument("--db", type=Path, help="reads: build the store here (default: a temp dir)")
    p.add_argument("--gpus-db", type=Path, help="gpus: build the store here (default: a temp dir)")
    p.add_argument("--rounds", type=int, default=3, help="cost: pairs of runs (default 3)")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.part in ("cost", "all"):
        asyncio.run(cost(args.rounds))
    if args.part in ("parts", "all"):
        asyncio.run(parts(args.rounds))
    if args.part in ("bytes", "all"):
        asyncio.run(size())
    if args.part in ("reads", "all"):
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(reads(args.db or Path(d) / "month.db"))
    if args.part in ("gpus", "all"):
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(gpu_reads(args.gpus_db or Path(d) / "gpus.db"))


if __name__ == "__main__":
    main()
