"""Nodes with chosen hardware in a real store, written the way the collector writes them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.paths import StoreTarget
from collector.store.db import NodeUpdate, SampleRow, Store
from shared.schema import CpuPackage, GpuInfo, Inventory, NicInfo, encode
from tests.collector.governance.fleet import cli

__all__ = ["Spec", "cli", "inventory", "make_store"]

A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
EPYC = "AMD EPYC 7763 64-Core Processor"
XEON = "Intel(R) Xeon(R) Platinum 8480+"
GIB = 2**30


@dataclass
class Spec:
    """One node: its hardware, status and the GPU count of its latest sample."""

    node: str
    gpu: str | None = A100
    gpus: int = 4
    cpu: str = EPYC
    sockets: int = 2
    mem_gib: int = 512
    status: str = "online"
    sample_gpus: int | None = None
    """GPUs in the latest sample (default: all); ``None`` in ``sampled``: no sample."""
    sampled: bool = True
    nics: list[NicInfo] = field(default_factory=list)
    metrics_address: str | None = None
    """Where its agent's /metrics listens (``/sd`` lists only nodes that announce one)."""


def inventory(s: Spec, ts: float | None = None) -> Inventory:
    """The inventory an agent on ``s`` would publish."""
    return Inventory(
        v=1,
        node=s.node,
        ts=ts or time.time(),
        host=s.node,
        agent_version="test",
        cpu_model=s.cpu,
        cpu_count=128,
        cpu_cores=64,
        mem_total_bytes=s.mem_gib * GIB - 9 * GIB,
        gpus=[
            GpuInfo(
                index=g,
                name=s.gpu or "none",
                uuid=f"GPU-{abs(hash(s.node)) % 16**8:08x}-0000-4000-8000-{g:012x}",
                serial=f"SN-{s.node}-{g}",
            )
            for g in range(s.gpus if s.gpu else 0)
        ],
        cpus=[CpuPackage(model=s.cpu, sockets=s.sockets)],
        mem_installed_bytes=s.mem_gib * GIB,
        nics=s.nics,
        metrics_address=s.metrics_address,
    )


async def make_store(
    where: StoreTarget, specs: Sequence[Spec], name: str = "capwatch.db"
) -> StoreTarget:
    """A migrated store holding ``specs`` as the collector's writer would store them
    (``where``: a folder for the file ``name``, or the ``store_url`` fixture's target)."""
    db = where / name if isinstance(where, Path) and where.is_dir() else where
    now = time.time()
    updates = [NodeUpdate(s.node, s.status, now, encode(inventory(s, now)), now) for s in specs]
    rows = [
        SampleRow(
            s.node,
            int(now * 1000),
            1,
            int(now * 1000),
            5.0,
            10.0,
            GIB,
            s.mem_gib * GIB,
            s.gpus if s.sample_gpus is None else s.sample_gpus,
            50.0,
            None,
            300.0,
            200.0,
            b"{}",
        )
        for s in specs
        if s.sampled
    ]
    async with Store(db, compress=False) as store:
        await store.write_batch(rows, updates, new_nodes=[s.node for s in specs])
    return db
