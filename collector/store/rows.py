"""A stored sample's row, beside the store: the modules the store imports (the rollups'
staging, :mod:`collector.store.partials`) name it without importing the store.
:mod:`collector.store.db` hands it on (``from collector.store.db import SampleRow``)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SampleRow"]


class SampleRow(NamedTuple):
    """One row of ``samples``, in column order."""

    node: str
    ts_ms: int
    seq: int
    received_ms: int
    interval_s: float
    cpu_pct: float | None
    mem_used_bytes: int
    mem_total_bytes: int
    gpu_count: int
    gpu_util_pct: float | None
    gpu_mem_used_bytes: int | None
    gpu_power_w: float | None
    cpu_power_w: float | None
    payload: bytes
    """The sample packed (:func:`collector.store.codec.pack_sample`), or its JSON."""
    epoch: int | None = None
    """The agent's boot counter (``Sample.epoch``); ``None`` from agents before it."""
    node_power_w: float | None = None
    """The node's input power (``Sample.node_power_w``, from its BMC or PSUs)."""
    node_power_source: str | None = None
    gpu_stats: bytes = b""
    """The GPUs as the rollups read them (:func:`collector.store.rollups.pack_gpus`); not a
    column of ``samples``."""
