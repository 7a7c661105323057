"""Stored payload benchmark: bytes and CPU per sample of each way to store one. Prints figures.

Two corpora of 8-GPU samples:

``simulator``
    what ``bench_pipeline.py`` publishes (:class:`agent.simulate.FleetSimulator`): GPU values
    drawn from a table of 101 load levels (power to 0.1 W, energy to 0.1 J), no per-core CPU,
    no NICs, one filesystem.
``agent``
    the agent's own GPU code (:class:`agent.gpu.NvmlBackend` over :class:`agent.fake_nvml.FakeNvml`,
    NVML's units: power to 10 mW, energy to 1 mJ, memory to the byte, random UUIDs) and a
    host part at the agent's precision (:mod:`agent.host`): 224 per-core percentages to 0.1
    (multiples of 0.2 %, 500 ticks of 5 s), 8 InfiniBand and 2 Ethernet NICs with rates to
    0.1 B/s, two filesystems, node power. What a DGX-class node sends, as far as a machine
    without one can say.

``agent-ipoib``
    ``agent`` with its 8 InfiniBand ports' rates as the agent really reads them: it counts
    ``/proc/net/dev``, the kernel's netdev counters, and RDMA traffic (NCCL's, over IB
    verbs) goes past the network stack, so an IB port's netdev counters see only its
    IPoIB traffic (the kernel's ``Documentation/networking/device_drivers/ethernet/
    mellanox/mlx5/counters.rst`` counts RDMA apart, ``rx_vport_rdma_*``; the IB port's own
    counters are ``/sys/class/infiniband/*/ports/*/counters/port_rcv_data``, which the
    agent does not read). IPoIB rates drawn around a few KB/s; an assumption, kept as a
    third corpus so ``agent`` stays comparable with earlier figures.

Ways: the sample's JSON or its packed form (:func:`collector.store.codec.pack_sample`; the
node's template apart, stored once per node), each compressed with the store's first
dictionary or with one trained on 2,000 other samples of the corpus
(:class:`collector.store.codec.DictionaryTrainer`). Figures: stored bytes (mean; packed:
the frame and the template id), CPU us to encode (JSON) or pack, to compress, and to read
back the JSON (:class:`collector.store.unpack.PayloadDecoder`), each the best of 5 passes
on one core.

``--store``: every corpus written through :class:`collector.store.db.Store` as the ingest
writes it (1,000 rows a batch, a tick at a time), into SQLite and, where PostgreSQL is
installed, into a local server; the first ticks (the trainer's 2,000 samples, stored with
the first dictionary) are deleted and the store vacuumed, then bytes per stored sample:
the samples table (SQLite: its pages, ``dbstat``; PostgreSQL: its partitions' heap and
TOAST) and each index, the payloads alone, the templates and dictionaries (per node and in
all), and the read-back CPU per sample (``StoreReader.payload``). It uses only the store's
public API, so the same script measures an older checkout (``PYTHONPATH``).

Usage: ``.venv/bin/python bench/bench_codec.py [--nodes 500] [--store] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import PgTarget, StoreTarget
from collector.store.codec import (
    DictionaryTrainer,
    PayloadCodec,
    pack_sample,
    split_payload,
    varint,
)
from collector.store.db import Store
from collector.store.reader import StoreReader
from collector.store.unpack import PayloadDecoder
from shared.clock import FakeClock
from shared.errors import CapwatchError
from shared.logging import configure_logging
from shared.schema import (
    CpuStats,
    DiskIoStats,
    DiskStats,
    MemStats,
    NetStats,
    NicStats,
    Sample,
    encode,
)

_TICKS = 8


def simulator(nodes: int, ticks: int = _TICKS) -> list[Sample]:
    """``nodes`` x ``ticks`` of bench_pipeline's fleet (seed 7, 1 s apart)."""
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=7, interval_s=1.0)
    t0 = 1_800_000_000.0
    return [sim.sample(i, t0 + k, k) for k in range(ticks) for i in range(nodes)]


def agent(nodes: int, ticks: int = _TICKS, cores: int = 224) -> list[Sample]:
    """``nodes`` x ``ticks``, 5 s apart: GPUs by the agent's NVML code, host at its
    precision."""
    rng = random.Random(1)
    names = FleetSimulator(nodes, gpus_per_node=0).node_ids
    mem_total = 2_113_004_412 * 1024
    out = []
    for i in range(nodes):
        clock = FakeClock(start_wall=1_800_000_000.0 + rng.random(), start_mono=1000.0)
        gpus = NvmlBackend(FakeNvml(8, seed=i, clock=clock), clock=clock, xid_wait_ms=20)
        gpus.start()
        gpus.sample(clock.monotonic(), True)  # the priming reading (rates need two)
        busy = set(rng.sample(range(cores), rng.randint(8, 48)))
        counters = [[rng.randrange(50) for _ in range(4)] for _ in range(10)]
        used_fs = [rng.randrange(10**11, 10**12) // 4096 * 4096, rng.randrange(10**12, 10**13)]
        for k in range(ticks):
            clock.advance(5.0 + rng.uniform(-0.002, 0.002))
            per_core = tuple(
                round(round(_core_pct(rng, c in busy) / 0.2) * 0.2, 1) for c in range(cores)
            )
            nics = tuple(
                NicStats(
                    name=f"ibp{n}s0" if n < 8 else f"enp{n}s0f0",
                    rx_bytes_per_s=round(rng.uniform(0, 4e10 if n < 8 else 1e8), 1),
                    tx_bytes_per_s=round(rng.uniform(0, 4e10 if n < 8 else 1e8), 1),
                    rx_errors=counters[n][0],
                    tx_errors=counters[n][1],
                    rx_drops=counters[n][2],
                    tx_drops=counters[n][3],
                )
                for n in range(10)
            )
            used = rng.randrange(2 * 10**11, 10**12) // 1024 * 1024
            out.append(
                Sample(
                    v=1,
                    node=names[i],
                    ts=clock.time(),
                    seq=k,
                    epoch=3,
                    interval_s=5.0,
                    cpu=CpuStats(
                        count=cores,
                        pct=round(sum(per_core) / cores, 1),
                        per_core_pct=per_core,
                        load1=round(rng.uniform(10, 60), 2),
                        load5=round(rng.uniform(10, 60), 2),
                        load15=round(rng.uniform(10, 60), 2),
                    ),
                    mem=MemStats(
                        total_bytes=mem_total,
                        used_bytes=used,
                        available_bytes=mem_total - used - 4096 * rng.randrange(10**6),
                    ),
                    disks=(
                        DiskStats("/", "/dev/md0", "ext4", 1_888_238_678_016, used_fs[0]),
                        DiskStats("/raid", "/dev/md1", "ext4", 30_721_247_657_984, used_fs[1]),
                    ),
                    disk_io=DiskIoStats(
                        read_bytes_per_s=round(rng.uniform(0, 2e9), 1),
                        write_bytes_per_s=round(rng.uniform(0, 5e8), 1),
                    ),
                    net=NetStats(
                        rx_bytes_per_s=round(sum(n.rx_bytes_per_s or 0.0 for n in nics), 1),
                        tx_bytes_per_s=round(sum(n.tx_bytes_per_s or 0.0 for n in nics), 1),
                        nics=nics,
                    ),
                    cpu_power_w=round(rng.uniform(300, 700), 2),
                    node_power_w=round(rng.uniform(5000, 10000), 1),
                    node_power_source="dcmi",
                    gpus=tuple(gpus.sample(clock.monotonic(), k % 12 == 0)),
                )
            )
        gpus.close()
    return out


def agent_ipoib(nodes: int, ticks: int = _TICKS) -> list[Sample]:
    """``agent`` with its InfiniBand ports' netdev rates as IPoIB traffic alone."""
    rng = random.Random(2)
    out = []
    for s in agent(nodes, ticks):
        nics = tuple(
            msgspec.structs.replace(
                n,
                rx_bytes_per_s=round(rng.expovariate(1 / 2000), 1),
                tx_bytes_per_s=round(rng.expovariate(1 / 2000), 1),
            )
            if n.name.startswith("ib")
            else n
            for n in s.net.nics
        )
        net = NetStats(
            rx_bytes_per_s=round(sum(n.rx_bytes_per_s or 0.0 for n in nics), 1),
            tx_bytes_per_s=round(sum(n.tx_bytes_per_s or 0.0 for n in nics), 1),
            nics=nics,
        )
        out.append(msgspec.structs.replace(s, net=net))
    return out


def _core_pct(rng: random.Random, busy: bool) -> float:
    """A data loader's core near full, the others near idle."""
    return rng.uniform(85, 100) if busy else rng.expovariate(1.5)


def _us(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for x in items:
            fn(x)
        best = min(best, time.process_time() - t)
    return round(best / len(items) * 1e6, 1)


def _trained(bodies: list[bytes], first: PayloadCodec) -> PayloadCodec:
    trainer = DictionaryTrainer(len(bodies), min_gain=-1.0)  # keep it, better or not
    trainer.offer(bodies)
    trained = trainer.train(first)
    assert trained is not None
    return trained


def measure(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Figures per way of storing ``samples`` (trained on 2,000 of them, measured on the
    rest)."""
    random.Random(3).shuffle(samples)
    learn, test = samples[:2000], samples[2000:]
    first = PayloadCodec()
    out: dict[str, dict[str, float]] = {}
    for form, make in (("json", encode), ("packed", pack_sample)):
        payloads = [make(s) for s in test]
        templates, bodies, _ = first.compress_rows(payloads)
        ids = {t: i for i, t in enumerate(dict.fromkeys(t for t in templates if t), 1)}
        by_id = {i: t for t, i in ids.items()}
        learnt = [split_payload(make(s))[1] for s in learn]
        trained = _trained(learnt, first)
        for name, codec in (("first dictionary", first), ("trained dictionary", trained)):
            _, _, frames = codec.compress_rows(payloads)
            blobs = [varint(ids.get(t, 0)) + f for t, f in zip(templates, frames, strict=True)]
            reader = PayloadDecoder(codec.dictionary, codec.layout, templates=by_id.__getitem__)
            out[f"{form}, {name}"] = {
                "raw_bytes": round(statistics.mean(map(len, payloads))),
                "template_bytes_per_node": round(statistics.mean(map(len, ids)) if ids else 0),
                "stored_bytes": round(statistics.mean(map(len, blobs)), 1),
                "encode_us": _us(make, test[:500]),
                "compress_us": _us(codec.compress, bodies[:500]),
                "read_us": _us(reader.json, blobs[:500]),
            }
    return out


def store_bytes(
    samples: list[Sample], work: Path, page_size: int | None = None
) -> dict[str, dict[str, float]]:
    """Bytes per stored sample on each backend (see the module docstring)."""
    nodes = len({s.node for s in samples})
    warm = -(-2000 // nodes) + 1  # ticks before the trained dictionary is in use
    out = {"sqlite": asyncio.run(_store(work / "codec.db", samples, nodes, warm, page_size))}
    try:
        from collector.localpg import LocalPostgres  # noqa: PLC0415

        with LocalPostgres(work / "pg") as pg:
            out["postgresql"] = asyncio.run(_store(PgTarget(pg.url), samples, nodes, warm))
    except CapwatchError as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
    return out


async def _store(
    target: StoreTarget, samples: list[Sample], nodes: int, warm: int, page_size: int | None = None
) -> dict[str, float]:
    ordered = sorted(samples, key=lambda s: (s.seq, s.node))
    rows = [sample_row(s, pack_sample(s), s.ts + 0.2) for s in ordered]
    async with Store(target) as store:
        for i in range(0, len(rows), 1000):
            await store.write_batch(rows[i : i + 1000])
        async with store.transaction("dropping the warm-up ticks"):
            await store.execute("DELETE FROM samples WHERE seq < ?", (warm,))
    kept = sum(1 for s in samples if s.seq >= warm)
    if not kept:
        raise SystemExit(f"--store: more than {warm} ticks needed (--ticks, or more --nodes)")
    sizes = _sqlite_sizes(target, page_size) if isinstance(target, Path) else _pg_sizes(target)
    out = {k: round(v / kept, 1) for k, v in sizes.items() if k.startswith("samples")}
    out["samples_bytes_per_sample"] = round(
        sum(v for k, v in sizes.items() if k.startswith("samples")) / kept, 1
    )
    for k in ("payload_templates", "payload_dicts"):
        out[f"{k}_bytes"] = sizes.get(k, 0)
    out["template_bytes_per_node"] = round(sizes.get("payload_templates", 0) / nodes)
    with StoreReader(target) as reader:
        stored = reader.fetchall("SELECT payload, payload_dict FROM samples")
        out["payload_bytes_per_sample"] = round(
            statistics.mean(len(bytes(r[0])) for r in stored), 1
        )
        t = time.process_time()
        for r in stored:
            reader.payload(bytes(r[0]), r[1])
        out["read_us_per_sample"] = round((time.process_time() - t) / len(stored) * 1e6, 1)
    out["fleet_day_gb"] = round(out["samples_bytes_per_sample"] * 12_500 * 17_280 / 1e9, 1)
    return out


def _sqlite_sizes(db: Path, page_size: int | None) -> dict[str, float]:
    conn = sqlite3.connect(db)
    try:
        if page_size is not None:  # VACUUM rewrites the file in pages of this size
            conn.execute("PRAGMA journal_mode = DELETE")  # (WAL keeps the page size)
            conn.execute(f"PRAGMA page_size = {int(page_size)}")
        conn.execute("VACUUM")
        names = dict(
            conn.execute(
                "SELECT name, tbl_name FROM sqlite_schema WHERE tbl_name IN "
                "('samples', 'payload_templates', 'payload_dicts')"
            ).fetchall()
        )
        pages = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for name, size in pages:
        table = names.get(name)
        if table == "samples":
            out["samples_table" if name == "samples" else f"samples_index_{name}"] = size
        elif table is not None:
            out[table] = out.get(table, 0) + size
    return out


def _pg_sizes(target: PgTarget) -> dict[str, float]:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute("VACUUM FULL ANALYZE")
        out: dict[str, float] = {}
        heap = conn.execute(
            "SELECT sum(pg_table_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'samples'::regclass"
        ).fetchone()
        out["samples_table"] = float(heap[0] or 0) if heap else 0.0
        for name, size in conn.execute(
            "SELECT p.relname, sum(pg_relation_size(i.inhrelid)) FROM pg_inherits i "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_index x ON x.indexrelid = p.oid "
            "WHERE x.indrelid = 'samples'::regclass GROUP BY p.relname"
        ).fetchall():
            out[f"samples_index_{name}"] = float(size or 0)
        for table in ("payload_templates", "payload_dicts"):
            row = conn.execute(
                "SELECT pg_total_relation_size(to_regclass(%s))", (table,)
            ).fetchone()
            out[table] = float(row[0] or 0) if row else 0.0
    return out


def main() -> None:
    """Build the corpora, print the figures of each way (JSON with --json)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=500, help="nodes per corpus")
    p.add_argument("--ticks", type=int, default=_TICKS, help="samples per node (default 8)")
    p.add_argument("--corpus", action="append", choices=sorted(_CORPORA), help="(repeatable)")
    p.add_argument("--store", action="store_true", help="also bytes per sample as stored")
    p.add_argument("--no-ways", action="store_true", help="only the --store figures")
    p.add_argument(
        "--sqlite-page-size",
        type=int,
        help="--store: SQLite's file rewritten in pages of this size (default: the store's)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.nodes * args.ticks < 2500:
        p.error("--nodes x --ticks: at least 2,500 (2,000 samples to train on, 500 to measure)")
    results: dict[str, Any] = {}
    for corpus in args.corpus or sorted(_CORPORA):
        samples = _CORPORA[corpus](args.nodes, args.ticks)
        if not args.no_ways:
            results[corpus] = measure(list(samples))
        if args.store:
            with tempfile.TemporaryDirectory() as work:
                results[f"{corpus} stored"] = store_bytes(
                    samples, Path(work), args.sqlite_page_size
                )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for corpus, ways in results.items():
        print(f"[{corpus}] {args.nodes} nodes x {args.ticks} samples, 8 GPUs each")
        if corpus.endswith(" stored"):
            for backend, f in ways.items():
                print(f"  {backend}: " + ", ".join(f"{k} {v}" for k, v in f.items()))
            continue
        print(f"  {'':30s} {'raw B':>7s} {'stored B':>9s} {'tmpl B':>7s} {'enc us':>7s} "
              f"{'zstd us':>8s} {'read us':>8s}")  # fmt: skip
        for way, f in ways.items():
            print(
                f"  {way:30s} {f['raw_bytes']:7.0f} {f['stored_bytes']:9.1f} "
                f"{f['template_bytes_per_node']:7.0f} {f['encode_us']:7.1f} "
                f"{f['compress_us']:8.1f} {f['read_us']:8.1f}"
            )


_CORPORA: dict[str, Callable[[int, int], list[Sample]]] = {
    "simulator": simulator,
    "agent": agent,
    "agent-ipoib": agent_ipoib,
}


if __name__ == "__main__":
    configure_logging("warning")
    main()
