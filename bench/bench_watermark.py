"""The store's watermark: what it costs the collector, what it holds in the agents' spools,
and what it saves when the broker loses its state. Figures only.

    .venv/bin/python bench/bench_watermark.py [--nodes 12500] [--agents 10] [--rate 10]

1. Collector cost at ``--nodes``: CPU of :meth:`Watermarks.note` per stored sample (the
   writer calls it after each commit), and of one flush (``due`` + the upsert of every
   changed node into the ``watermarks`` table of a real SQLite file + encoding + one
   ``publish_retained`` write to a real Mosquitto, whose delivery of every message to a
   subscriber of ``capwatch/v1/watermarks/#`` is waited for): per sample amortised, at a
   1 s and a 5 s sampling interval (one flush per second, every node changed).
2. Spool in steady state: ``--agents`` publishers with their spools at ``--rate`` samples/s
   each, a collector process storing them: samples and bytes in each spool, held for the
   watermark (hold) vs forgotten at PUBACK (before).
3. Loss, counted by seq: the same fleet, Mosquitto with persistence off; (a) the collector
   stopped, samples queue in the broker, the broker SIGKILLed and restarted empty, the
   collector back; (b) the collector SIGKILLed mid-stream, then the broker too. Each with
   the watermark hold and without it (before): samples lost, duplicates received and rows
   stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.publisher import Publisher
from agent.simulate import FleetSimulator
from agent.spool import Spool
from collector.ingest.subscriber import MqttSubscriber
from collector.ingest.watermark import Watermarks
from collector.ingest.writer import _watermark_message
from collector.localbroker import MosquittoBroker
from collector.store.db import SampleRow, Store
from collector.store.watermarks import write_watermarks
from shared.logging import configure_logging
from shared.schema import encode
from shared.settings import MqttSettings

T0 = time.time() - 3600


# -- 1. the collector's cost ----------------------------------------------------------------


def _rows(nodes: int, tick: int) -> list[SampleRow]:
    return [
        SampleRow(f"n{i:05d}", (round(T0) + tick) * 1000, tick, 0, 1.0, None, 0, 0, 0,
                  None, None, None, None, b"", 1)
        for i in range(nodes)
    ]  # fmt: skip


async def _collector_cost(nodes: int, root: Path) -> None:
    marks = Watermarks(hole_s=300)
    ticks = [_rows(nodes, t) for t in range(6)]
    note_s = 0.0
    flush: list[float] = []
    writer_wall: list[float] = []
    with MosquittoBroker(root / "cost-broker") as broker:
        async with Store(root / "cost.db") as store, contextlib.AsyncExitStack() as stack:
            pub = await stack.enter_async_context(
                MqttSubscriber(broker.host, broker.port, client_id="bench-collector")
            )
            sub = await stack.enter_async_context(
                MqttSubscriber(broker.host, broker.port, client_id="bench-agents",
                               clean_session=True)
            )  # fmt: skip
            await sub.subscribe([("capwatch/v1/watermarks/#", 0)])
            for rows in ticks:
                t = time.process_time()
                for k in range(0, len(rows), 4000):  # the writer's batches
                    marks.note(rows[k : k + 4000], time.time())
                note_s += time.process_time() - t
                t = time.process_time()
                w = time.perf_counter()
                due = marks.due(time.time())
                await write_watermarks(store, due)
                pub.publish_retained([_watermark_message(r) for r in due])
                flush.append(time.process_time() - t)
                writer_wall.append(time.perf_counter() - w)
                got = 0
                while got < len(due):
                    got += len(await sub.next_batch())
                wall = time.perf_counter() - w
    samples = nodes * len(ticks)
    note_us = note_s / samples * 1e6
    flush_ms = sorted(flush)[len(flush) // 2] * 1e3
    print(f"note:          {note_us:.2f} us CPU per stored sample ({nodes} nodes, batches of 4000)")
    print(
        f"flush:         {flush_ms:.0f} ms CPU (median) per flush of {nodes} changed nodes: "
        f"{flush_ms * 1e3 / nodes:.1f} us per watermark (upsert + encode + publish); the "
        f"writer busy {sorted(writer_wall)[len(writer_wall) // 2] * 1e3:.0f} ms wall (median, "
        f"one fsynced commit); last flush to delivery {wall * 1e3:.0f} ms wall"
    )
    per_mark_us = flush_ms * 1e3 / nodes
    for interval in (1.0, 5.0):
        # One message per node per max(interval, watermark_interval_s = 1 s): one per sample.
        print(
            f"at {interval:g} s:        {nodes / interval:,.0f} samples/s -> "
            f"{nodes / interval:,.0f} watermark messages/s, "
            f"{note_us + per_mark_us:.1f} us CPU per sample amortised"
        )


# -- 2 and 3: a fleet of spooled publishers, a collector process ------------------------------


class _Collector:
    def __init__(self, broker: MosquittoBroker, db: Path, log: Path) -> None:
        self.broker, self.db, self.log = broker, db, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "collector", "run", "--host", self.broker.host,
                "--port", str(self.broker.port), "--db", str(self.db),
                "--log-level", "warning"]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not _query(self.db, "SELECT count(*) FROM meta WHERE key LIKE 'mqtt_session %'"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"collector did not subscribe: {self.log.read_text()[-800:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
            self.proc = None


def _query(db: Path, sql: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute(sql).fetchone()[0] or 0)
    except sqlite3.Error:
        return 0


class _Fleet:
    """``agents`` publishers with spools, ticking ``rate`` samples/s each (epoch 1)."""

    def __init__(self, broker: MosquittoBroker, root: Path, agents: int, rate: float,
                 hold_s: float) -> None:  # fmt: skip
        self.sim = FleetSimulator(agents, gpus_per_node=8, seed=3, interval_s=1)
        mqtt = MqttSettings(host=broker.host, port=broker.port, reconnect_min_s=0.2,
                            reconnect_max_s=1.0)  # fmt: skip
        self.rate = rate
        self.spools = []
        self.publishers = []
        for i in range(agents):
            spool = Spool(root / f"spool-{i}", max_bytes=1 << 28, max_age_s=86_400, hold_s=hold_s)
            spool.open()
            self.spools.append(spool)
            self.publishers.append(
                Publisher(mqtt, self.sim.node_ids[i], spool, lambda: b"{}", time.time)
            )
        self.taken = [0] * agents
        self.stop = asyncio.Event()
        self.ticking = asyncio.Event()
        self.ticking.set()
        self.sizes: list[tuple[int, int]] = []

    def _append(self) -> None:
        for i, spool in enumerate(self.spools):
            seq = self.taken[i]
            sample = self.sim.sample(i, T0 + seq / self.rate, seq)
            spool.append(encode(msgspec.structs.replace(sample, epoch=1)))
            self.taken[i] += 1

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for p in self.publishers:
                tg.create_task(p.run(self.stop), name=f"publisher-{p.node_id}")
            for s in self.spools:
                tg.create_task(s.run_sync(self.stop, 1.0), name="spool-sync")
            loop = asyncio.get_running_loop()
            due = loop.time()
            while not self.stop.is_set():
                if self.ticking.is_set():
                    self._append()
                due += 1 / self.rate
                await asyncio.sleep(max(0.0, due - loop.time()))

    def sample_sizes(self) -> None:
        self.sizes.extend((len(s), s.spool_bytes) for s in self.spools)


async def _in_steady_state(broker: MosquittoBroker, root: Path, args: argparse.Namespace,
                           hold_s: float) -> tuple[float, int, float]:  # fmt: skip
    collector = _Collector(broker, root / f"steady-{hold_s:g}.db", root / "collector.log")
    collector.start()
    fleet = _Fleet(broker, root / f"steady-{hold_s:g}", args.agents, args.rate, hold_s)
    task = asyncio.create_task(fleet.run())
    await asyncio.sleep(5)  # connected, first watermarks heard
    for _ in range(20):
        fleet.sample_sizes()
        await asyncio.sleep(0.5)
    fleet.stop.set()
    await task
    collector.stop()
    for s in fleet.spools:
        s.close()
    n = [a for a, _ in fleet.sizes]
    b = [b for _, b in fleet.sizes]
    return sum(n) / len(n), max(n), sum(b) / len(b)


async def _sigkill(broker: MosquittoBroker, root: Path, args: argparse.Namespace, hold_s: float,
                   collector_killed: bool) -> tuple[int, int, int, int]:  # fmt: skip
    """(taken, lost, duplicates received, rows stored twice)."""
    name = f"kill-{'c' if collector_killed else 'b'}-{hold_s:g}"
    db = root / f"{name}.db"
    collector = _Collector(broker, db, root / f"{name}.log")
    collector.start()
    fleet = _Fleet(broker, root / name, args.agents, args.rate, hold_s)
    task = asyncio.create_task(fleet.run())
    await asyncio.sleep(4)
    await asyncio.to_thread(collector.stop, signal.SIGKILL if collector_killed else signal.SIGTERM)
    await asyncio.sleep(3)  # samples queue in the broker for the collector's session
    await asyncio.to_thread(broker.kill)
    await asyncio.sleep(1)
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(collector.start)
    await asyncio.sleep(6)  # the collector's watermarks report the hole; agents resend
    fleet.ticking.clear()
    await asyncio.sleep(5)  # the last ones stored and confirmed
    fleet.stop.set()
    await task
    await asyncio.sleep(2)
    await asyncio.to_thread(collector.stop)
    for s in fleet.spools:
        s.close()
    taken = sum(fleet.taken)
    distinct = _query(db, "SELECT count(*) FROM (SELECT DISTINCT node, epoch, seq FROM samples)")
    rows = _query(db, "SELECT count(*) FROM samples")
    dups = _query(db, "SELECT value FROM counters WHERE name = 'duplicates'")
    return taken, taken - distinct, dups, rows - distinct


async def _fleet_figures(args: argparse.Namespace, root: Path) -> None:
    with MosquittoBroker(root / "fleet-broker", persistence=False) as broker:
        for hold_s, label in ((600.0, "hold  "), (0.0, "before")):
            mean, top, mean_bytes = await _in_steady_state(broker, root, args, hold_s)
            print(
                f"spool {label}:  {mean:.1f} samples per agent on average (max {top}), "
                f"{mean_bytes / 1024:.0f} KiB of segment files ({args.rate:g} samples/s each)"
            )
        for collector_killed in (False, True):
            case = "collector+broker SIGKILL" if collector_killed else "broker SIGKILL   "
            for hold_s, label in ((600.0, "hold  "), (0.0, "before")):
                taken, lost, dups, twice = await _sigkill(
                    broker, root, args, hold_s, collector_killed
                )
                print(
                    f"{case} {label}: {taken} taken, {lost} lost, {dups} duplicates "
                    f"received, {twice} stored twice"
                )


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=12_500)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="samples/s per agent")
    parser.add_argument("--only", choices=["cost", "fleet"], default=None)
    args = parser.parse_args()
    configure_logging("error")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        if args.only in (None, "cost"):
            asyncio.run(_collector_cost(args.nodes, Path(tmp)))
        if args.only in (None, "fleet"):
            asyncio.run(_fleet_figures(args, Path(tmp)))


if __name__ == "__main__":
    main()
