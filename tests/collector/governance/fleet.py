"""A real, migrated store holding a small fleet's inventories and samples, for governance tests.

Written through :class:`~collector.store.db.Store` (the collector's own writer path, with
payload compression), so the commands read exactly what a running collector leaves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from collector.ingest.validate import sample_row
from collector.paths import StoreTarget
from collector.store.db import NodeUpdate, Store
from shared.schema import (
    CpuStats,
    GpuInfo,
    GpuSample,
    Inventory,
    MemStats,
    Sample,
    encode,
)
from tests.helpers import collector_cli as cli

__all__ = ["cli", "inventory", "make_store", "sample"]


def _uuid(node_index: int, g: int) -> str:
    return f"GPU-{node_index:08x}-{g:04x}-4cac-a29f-6fbed82c07cd"


def inventory(node: str, gpus: int, index: int = 0, power_limit_w: float = 700.0) -> Inventory:
    """An inventory of ``node`` with ``gpus`` H100s."""
    return Inventory(
        v=1,
        node=node,
        ts=time.time(),
        host=node,
        agent_version="0.1.0",
        cpu_model="AMD EPYC 9654",
        cpu_count=192,
        cpu_cores=96,
        mem_total_bytes=2 << 40,
        gpus=[
            GpuInfo(
                index=g,
                name="NVIDIA H100 80GB HBM3",
                uuid=_uuid(index, g),
                power_limit_w=power_limit_w,
            )
            for g in range(gpus)
        ],
    )


def sample(node: str, ts: float, utils: list[float], *, gpu_w: float, cpu_w: float) -> Sample:
    """A sample of ``node`` at ``ts`` with one GPU per utilisation in ``utils``."""
    return Sample(
        v=1,
        node=node,
        ts=ts,
        seq=int(ts),
        interval_s=5.0,
        cpu=CpuStats(pct=10.0, count=192),
        mem=MemStats(total_bytes=2 << 40, used_bytes=1 << 30, available_bytes=1 << 40),
        cpu_power_w=cpu_w,
        gpus=tuple(
            GpuSample(index=g, uuid=_uuid(0, g), util_pct=u, power_w=gpu_w / max(1, len(utils)))
            for g, u in enumerate(utils)
        ),
    )


async def make_store(
    where: StoreTarget,
    gpus: dict[str, int],
    samples: Sequence[tuple[Sample, float]] = (),
) -> StoreTarget:
    """A migrated store (``where``: a folder for ``capwatch.db``, or the ``store_url``
    fixture's target) with an inventory per node in ``gpus`` and the ``samples`` stored as
    received at the paired time."""
    db = where / "capwatch.db" if isinstance(where, Path) and where.is_dir() else where
    now = time.time()
    async with Store(db) as store:
        updates = [
            NodeUpdate(n, "online", now, encode(inventory(n, k, i)), now)
            for i, (n, k) in enumerate(sorted(gpus.items()))
        ]
        rows = [sample_row(s, encode(s), received) for s, received in samples]
        await store.write_batch(rows, updates, new_nodes=list(gpus))
    return db
