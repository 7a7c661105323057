"""One flooding node against everyone else's ingest: figures, not pass/fail.

A node that publishes large but valid samples fast must not slow the other nodes' samples on
their way to the store ("nothing a node sends may crash or stall the collector"). Two parts:

``largest``
    The largest samples the wire schema accepts (:mod:`shared.schema`'s ``MAX_*`` bounds,
    cut to what fits under the collector's payload bound), one kind each: per-process rows
    (64 GPUs of processes with every field), every list at its bound, unknown fields
    (tolerated: a v1.x agent's), 8,192 cores, 1,024 NICs. For each: its bytes, the time to
    decode it (:func:`shared.schema.decode_sample`), to validate and pack it
    (:meth:`collector.ingest.validate.Ingestor.handle`, a node within its budget) and to
    compress it as the store does (:class:`collector.store.codec.PayloadCodec`, zstd level 1
    against the store's first dictionary); and what ``handle`` costs once the node is over
    its budget (``ingest_budget``): what each message of a flood costs the collector then.
``latency``
    A real Mosquitto and a real ``collector run`` (a child process, SQLite); ``--nodes``
    simulated 8-GPU nodes each publish a sample every ``--interval`` seconds (spread over
    the interval, each stamped when sent). This process polls the store every 20 ms and
    takes each of their samples' sample-to-store time (seen in the store minus its ``ts``;
    the poll adds ~10 ms). First ``--seconds`` without a flood, then ``--seconds`` with one
    node publishing ``--flood-rate`` of the largest valid samples a second (``--flood-kind``,
    QoS 1, up to 16 in flight), then ``--seconds`` after it stopped: p50, p99 and the
    longest for each phase, the collector's CPU, and how many of the flood's messages were
    stored and quarantined (by reason).

Usage: ``.venv/bin/python bench/bench_fairness.py [--mode both] [--nodes 50]
[--seconds 15] [--flood-rate 65] [--flood-kind processes]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import aiomqtt
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator, publish_fleet
from bench.bench_pipeline import CollectorProcess, _cpu_s, wait_subscribed
from collector.ingest.validate import Ingestor
from collector.localbroker import MosquittoBroker
from shared.budget import NodeBudget
from shared.clock import FakeClock
from shared.logging import configure_logging
from shared.schema import (
    MAX_CPUS,
    MAX_DISKS,
    MAX_GPUS,
    MAX_JOBS,
    MAX_NICS,
    MAX_PAYLOAD_BYTES,
    MAX_PROCESSES_PER_GPU,
    MAX_XIDS,
    CpuStats,
    DiskStats,
    GpuProcess,
    Job,
    NetStats,
    NicStats,
    Sample,
    XidEvent,
    decode_sample,
    encode,
)
from shared.settings import MqttSettings
from shared.topics import sample_topic

__all__ = ["largest_samples", "main"]

_TS: Final = 1_999_999_999.25
"""The flood's samples are stamped with this, then each with its send time (bytes replaced)."""
_FLOOD_NODE: Final = "flood-node-0"


def _fit(make: Callable[[int], Sample], most: int) -> Sample:
    """``make(n)`` for the largest ``n <= most`` whose JSON fits the payload bound."""
    lo, hi = 1, most
    if len(encode(make(hi))) <= MAX_PAYLOAD_BYTES:
        return make(hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(make(mid))) <= MAX_PAYLOAD_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return make(lo)


def largest_samples(node: str = _FLOOD_NODE) -> dict[str, Sample]:
    """The largest valid samples of a few kinds, each cut to fit ``MAX_PAYLOAD_BYTES``."""
    sim = FleetSimulator(1, gpus_per_node=8, seed=1)
    base = msgspec.structs.replace(sim.sample(0, _TS, 0), node=node, epoch=None)

    def gpus(procs: tuple[GpuProcess, ...]) -> tuple[object, ...]:
        return tuple(
            msgspec.structs.replace(
                base.gpus[i % len(base.gpus)],
                index=i,
                uuid=f"GPU-{i:08x}-0000-4000-8000-000000000000",
                processes=procs,
            )
            for i in range(MAX_GPUS)
        )

    def processes(n: int) -> Sample:
        per_gpu = -(-n // MAX_GPUS)
        procs = tuple(
            GpuProcess(
                pid=4_000_000 + k,
                used_mem_bytes=2**40 + k,
                user=f"user{k:04d}",
                job=f"4242_{k}",
                step="batch",
                container=f"container-{k}",
                gi_id=k % 8,
                ci_id=0,
            )
            for k in range(per_gpu)
        )
        return msgspec.structs.replace(base, gpus=gpus(procs))

    def cores(n: int) -> CpuStats:
        return CpuStats(
            count=MAX_CPUS, pct=50.0, per_core_pct=tuple(33.3 + k % 7 for k in range(n))
        )

    def lists(n: int) -> Sample:
        disks = (
            DiskStats(
                mount=f"/mnt/d{k}",
                device=f"/dev/d{k}",
                fstype="xfs",
                total_bytes=2**50,
                used_bytes=1,
            )
            for k in range(min(n, MAX_DISKS))
        )
        nics = (
            NicStats(name=f"eth{k}", rx_bytes_per_s=1.5e9 + k, tx_bytes_per_s=2.5e9, rx_errors=k)
            for k in range(min(n, MAX_NICS))
        )
        xids = (XidEvent(gpu_index=k % 8, xid=79, ts=_TS - 1 - k) for k in range(min(n, MAX_XIDS)))
        jobs = (
            Job(id=f"{k}", scheduler="slurm", account="acct", partition="gpu")
            for k in range(min(n, MAX_JOBS))
        )
        return msgspec.structs.replace(
            base,
            cpu=cores(min(n, MAX_CPUS)),
            disks=tuple(disks),
            net=NetStats(rx_bytes_per_s=1e9, tx_bytes_per_s=1e9, nics=tuple(nics)),
            xids=tuple(xids),
            jobs=tuple(jobs),
        )

    return {
        "processes": _fit(processes, MAX_GPUS * MAX_PROCESSES_PER_GPU),
        "lists": _fit(lists, MAX_CPUS),
        "cores": msgspec.structs.replace(base, cpu=cores(MAX_CPUS)),
        "typical": base,
    }


def _padded(sample: Sample) -> bytes:
    """``sample``'s JSON with an unknown field that fills it to the payload bound."""
    raw = encode(sample)
    room = MAX_PAYLOAD_BYTES - len(raw) - len(b',"zz":""')
    return raw[:-1] + b',"zz":"' + b"x" * room + b'"}'


def payloads(node: str = _FLOOD_NODE) -> dict[str, bytes]:
    """The largest valid samples' JSON, by kind (``unknown``: padded with an unknown field)."""
    samples = largest_samples(node)
    out = {kind: encode(s) for kind, s in samples.items()}
    out["unknown"] = _padded(samples["typical"])
    return out


def _per_call_us(fn: Callable[[], object], budget_s: float = 0.3) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        took = time.perf_counter() - t0
        if took > budget_s and n >= 3:
            return took / n * 1e6


def _reason(item: object) -> str:
    quarantine = getattr(item, "quarantine", None)
    return "" if quarantine is None else str(quarantine.reason)


def bench_largest() -> None:
    """Print bytes and per-message costs of the largest valid samples."""
    configure_logging("error")
    topic = sample_topic(_FLOOD_NODE)
    print(f"payload bound MAX_PAYLOAD_BYTES = {MAX_PAYLOAD_BYTES:,} B")
    print(f"{'kind':10s} {'bytes':>10s} {'decode us':>10s} {'handle us':>10s} {'over us':>9s}")
    for kind, raw in payloads().items():
        clock = FakeClock(start_wall=_TS + 1)
        fresh = Ingestor(clock)
        verdict = fresh.handle(topic, raw)
        if _reason(verdict):
            print(f"{kind:10s} {len(raw):10,d} refused: {_reason(verdict)}")
            continue
        decode_us = _per_call_us(lambda raw=raw: decode_sample(raw))  # type: ignore[misc]
        handle_us = _per_call_us(lambda fresh=fresh, raw=raw: fresh.handle(topic, raw))  # type: ignore[misc]
        # Over budget: the clock does not move, so the node's allowance is soon spent.
        flooded = Ingestor(clock, budget=NodeBudget())
        over_us = float("nan")
        for _ in range(100_000):
            if _reason(flooded.handle(topic, raw)) == "rate_limited":
                over_us = _per_call_us(lambda f=flooded, raw=raw: f.handle(topic, raw))  # type: ignore[misc]
                break
        print(f"{kind:10s} {len(raw):10,d} {decode_us:10.1f} {handle_us:10.1f} {over_us:9.2f}")
    print("  (over us: handle() once the node is over its ingest budget; nan: no budget here)")


class _Poller(threading.Thread):
    """Polls the store for new samples of the fleet; records (ts, seen - ts) each."""

    def __init__(self, db: Path, flood_node: str) -> None:
        super().__init__(daemon=True)
        self.db, self.flood_node = db, flood_node
        self.seen: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last = 0
        conn: sqlite3.Connection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = sqlite3.connect(self.db, timeout=5)
                rows = conn.execute(
                    "SELECT rowid, ts_ms FROM samples WHERE rowid > ? AND node != ?",
                    (last, self.flood_node),
                ).fetchall()
            except sqlite3.OperationalError:
                rows = []
            now = time.time()
            for rowid, ts_ms in rows:
                last = max(last, rowid)
                self.seen.append((ts_ms / 1000, now - ts_ms / 1000))
            time.sleep(0.02)


async def _flood(mqtt: MqttSettings, payload: bytes, rate: float, stop: asyncio.Event) -> int:
    """Publish ``payload`` (its ts replaced by the send time) ``rate`` times a second."""
    sent = 0
    marker = repr(_TS).encode()
    inflight = asyncio.Semaphore(16)
    client = aiomqtt.Client(mqtt.host, mqtt.port, identifier="bench-flood")
    async with client, asyncio.TaskGroup() as tg:
        t0 = time.monotonic()
        while not stop.is_set():
            due = t0 + sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            await inflight.acquire()
            body = payload.replace(marker, f"{time.time():.6f}".encode(), 1)

            async def one(body: bytes = body) -> None:
                try:
                    await client.publish(sample_topic(_FLOOD_NODE), body, qos=1)
                finally:
                    inflight.release()

            tg.create_task(one(), name="flood-publish")
            sent += 1
    return sent


def _stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    v = sorted(values)
    p50, p99 = (v[min(len(v) - 1, int(q * len(v)))] * 1000 for q in (0.5, 0.99))
    return f"n={len(v):5d}  p50 {p50:8.1f} ms  p99 {p99:8.1f} ms  max {v[-1] * 1000:8.1f} ms"


def bench_latency(args: argparse.Namespace) -> None:
    """The other nodes' sample-to-store time before, during and after one node's flood."""
    payload = payloads()[args.flood_kind]
    with tempfile.TemporaryDirectory(prefix="capwatch-fair-") as tmp:
        work = Path(tmp)
        db = work / "fair.db"
        with MosquittoBroker(work / "broker") as broker:
            mqtt = MqttSettings(host=broker.host, port=broker.port)
            col = CollectorProcess(broker, db, work / "collector.log", args.synchronous)
            proc = col.start()
            wait_subscribed(db)
            poller = _Poller(db, _FLOOD_NODE)
            poller.start()
            sim = FleetSimulator(args.nodes, gpus_per_node=8, seed=3, interval_s=args.interval)
            marks: dict[str, float] = {}
            cpu: dict[str, float] = {}
            flooded = 0

            async def run() -> None:
                nonlocal flooded
                stop_fleet, stop_flood = asyncio.Event(), asyncio.Event()
                fleet = asyncio.create_task(
                    publish_fleet(mqtt, sim, spread=True, stop=stop_fleet, workers=32)
                )
                await asyncio.sleep(args.seconds)
                marks["flood"], cpu["flood"] = time.time(), _cpu_s(proc.pid)
                flood = asyncio.create_task(_flood(mqtt, payload, args.flood_rate, stop_flood))
                await asyncio.sleep(args.seconds)
                stop_flood.set()
                flooded = await flood
                marks["after"], cpu["after"] = time.time(), _cpu_s(proc.pid)
                await asyncio.sleep(args.seconds)
                marks["end"], cpu["end"] = time.time(), _cpu_s(proc.pid)
                stop_fleet.set()
                await fleet

            cpu["start"] = _cpu_s(proc.pid)
            t_start = time.time()
            asyncio.run(run())
            time.sleep(1.0)
            poller.stop.set()
            poller.join()
            col.stop()
            conn = sqlite3.connect(db)
            flood = (_FLOOD_NODE,)
            stored = conn.execute("SELECT count(*) FROM samples WHERE node = ?", flood).fetchone()[
                0
            ]
            rejects = conn.execute(
                "SELECT reason, count FROM node_rejects WHERE node = ?", flood
            ).fetchall()
            conn.close()
        phases = {
            "before": (t_start, marks["flood"]),
            "flood": (marks["flood"], marks["after"]),
            "after": (marks["after"], marks["end"]),
        }
        print(
            f"fleet: {args.nodes} nodes x 1 sample / {args.interval:g} s; flood: "
            f"{args.flood_rate:g}/s of '{args.flood_kind}' ({len(payload):,} B), "
            f"{args.seconds} s a phase, synchronous={args.synchronous}"
        )
        spans = {"before": "start", "flood": "flood", "after": "after"}
        ends = {"before": "flood", "flood": "after", "after": "end"}
        for phase, (a, b) in phases.items():
            lat = [d for ts, d in poller.seen if a <= ts < b]
            cpu_s = cpu[ends[phase]] - cpu[spans[phase]]
            print(f"  {phase:7s} {_stats(lat)}   collector CPU {cpu_s / (b - a) * 100:5.1f} %")
        print(f"  flood: {flooded} sent, {stored} stored, rejected {dict(rejects)}")
        flood_cpu = (
            cpu["after"]
            - cpu["flood"]
            - (cpu["flood"] - cpu["start"])
            / max(marks["flood"] - t_start, 1e-9)
            * (marks["after"] - marks["flood"])
        )
        per_message_us = flood_cpu / max(flooded, 1) * 1e6
        print(
            f"  collector CPU per flood message (over the no-flood rate): {per_message_us:,.0f} us"
        )


def main() -> None:
    """Parse flags; print the figures."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=["largest", "latency", "both"], default="both")
    p.add_argument("--nodes", type=int, default=50, help="latency: nodes besides the flood")
    p.add_argument("--interval", type=float, default=1.0, help="latency: their interval, s")
    p.add_argument("--seconds", type=int, default=15, help="latency: seconds a phase")
    p.add_argument("--flood-rate", type=float, default=65.0, help="latency: flood messages/s")
    p.add_argument(
        "--flood-kind",
        default="processes",
        choices=["processes", "lists", "unknown", "cores", "typical"],
    )
    p.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = p.parse_args()
    if args.mode in ("largest", "both"):
        bench_largest()
    if args.mode in ("latency", "both"):
        bench_latency(args)


if __name__ == "__main__":
    main()
