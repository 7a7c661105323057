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

Ways: the sample's JSON or its packed form (:func:`collector.store.codec.pack_sample`), each
compressed with the store's first dictionary or with one trained on 2,000 other samples of
the corpus (:class:`collector.store.codec.DictionaryTrainer`). Figures: stored bytes (mean),
CPU us to encode (JSON) or pack, to compress, and to read back the JSON
(:class:`collector.store.unpack.PayloadDecoder`), each the best of 5 passes on one core.

Usage: ``.venv/bin/python bench/bench_codec.py [--nodes 500] [--json]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.simulate import FleetSimulator
from collector.store.codec import DictionaryTrainer, PayloadCodec, pack_sample
from collector.store.unpack import PayloadDecoder
from shared.clock import FakeClock
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


def simulator(nodes: int) -> list[Sample]:
    """``nodes`` x 8 ticks of bench_pipeline's fleet (seed 7, 1 s apart)."""
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=7, interval_s=1.0)
    t0 = 1_800_000_000.0
    return [sim.sample(i, t0 + k, k) for k in range(_TICKS) for i in range(nodes)]


def agent(nodes: int, cores: int = 224) -> list[Sample]:
    """``nodes`` x 8 ticks, 5 s apart: GPUs by the agent's NVML code, host at its precision."""
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
        for k in range(_TICKS):
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
        bodies = [make(s) for s in test]
        trained = _trained([make(s) for s in learn], first)
        for name, codec in (("first dictionary", first), ("trained dictionary", trained)):
            blobs = codec.compress_batch(bodies)
            reader = PayloadDecoder(codec.dictionary, codec.layout)
            out[f"{form}, {name}"] = {
                "raw_bytes": round(statistics.mean(map(len, bodies))),
                "stored_bytes": round(statistics.mean(map(len, blobs)), 1),
                "encode_us": _us(make, test[:500]),
                "compress_us": _us(codec.compress, bodies[:500]),
                "read_us": _us(reader.json, blobs[:500]),
            }
    return out


def main() -> None:
    """Build both corpora, print the figures of each way (JSON with --json)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=500, help="nodes per corpus, 8 samples each")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.nodes * _TICKS < 2500:
        p.error("--nodes: at least 313 (2,000 samples to train on, 500 to measure)")
    results = {
        "simulator": measure(simulator(args.nodes)),
        "agent": measure(agent(args.nodes)),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for corpus, ways in results.items():
        print(f"[{corpus}] {args.nodes} nodes x {_TICKS} samples, 8 GPUs each")
        print(f"  {'':30s} {'raw B':>7s} {'stored B':>9s} {'enc us':>7s} {'zstd us':>8s} "
              f"{'read us':>8s}")  # fmt: skip
        for way, f in ways.items():
            print(
                f"  {way:30s} {f['raw_bytes']:7.0f} {f['stored_bytes']:9.1f} "
                f"{f['encode_us']:7.1f} {f['compress_us']:8.1f} {f['read_us']:8.1f}"
            )


if __name__ == "__main__":
    main()
