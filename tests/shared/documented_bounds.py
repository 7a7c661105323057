"""The documented bounds of shared/schema.md, restated for the tests.

Written out here rather than read from the msgspec annotations, so that a bound dropped
from shared/schema.py makes the tests fail instead of silently following the code. Paths
name list elements ``[]``: ``gpus[].power_w``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import shared.schema as s

__all__ = [
    "LISTS",
    "NUMBERS",
    "STRINGS",
    "Bound",
    "Text",
    "assert_within_documented_bounds",
    "generic_path",
    "walk",
]


class Bound(NamedTuple):
    """An inclusive numeric range (``hi_open``: ``hi`` itself is outside)."""

    lo: float
    hi: float
    integer: bool
    hi_open: bool = False


class Text(NamedTuple):
    """A string limit: a length cap, or a pattern (which implies one)."""

    max_length: int | None = None
    pattern: str | None = None
    min_length: int = 1


def _i(lo: int, hi: int) -> Bound:
    return Bound(lo, hi, integer=True)


def _f(lo: float, hi: float) -> Bound:
    return Bound(lo, hi, integer=False)


_TS = Bound(s.MIN_TS_S, s.MAX_TS_S, integer=False, hi_open=True)
_PCT = _f(0.0, 100.0)
_COUNT = _i(0, s.MAX_COUNTER)
_GPU_BYTES = _i(0, s.MAX_GPU_MEM_BYTES)
_HOST_BYTES = _i(0, s.MAX_HOST_MEM_BYTES)
_GPU_W = _f(0.0, s.MAX_GPU_POWER_W)
_GPU_INDEX = _i(0, s.MAX_GPUS - 1)
_CPUS = _i(1, s.MAX_CPUS)

NUMBERS: dict[str, dict[str, Bound]] = {
    "sample": {
        "ts": _TS,
        "seq": _COUNT,
        "epoch": _COUNT,
        "interval_s": _f(s.MIN_INTERVAL_S, s.MAX_INTERVAL_S),
        "cpu.count": _CPUS,
        "cpu.pct": _PCT,
        "cpu.per_core_pct[]": _PCT,
        "cpu.load1": _f(0.0, s.MAX_LOAD),
        "cpu.load5": _f(0.0, s.MAX_LOAD),
        "cpu.load15": _f(0.0, s.MAX_LOAD),
        "mem.total_bytes": _HOST_BYTES,
        "mem.used_bytes": _HOST_BYTES,
        "mem.available_bytes": _HOST_BYTES,
        "mem.swap_total_bytes": _HOST_BYTES,
        "mem.swap_used_bytes": _HOST_BYTES,
        "disks[].total_bytes": _i(0, s.MAX_FS_BYTES),
        "disks[].used_bytes": _i(0, s.MAX_FS_BYTES),
        "disk_io.read_bytes_per_s": _f(0.0, s.MAX_NODE_BYTES_PER_S),
        "disk_io.write_bytes_per_s": _f(0.0, s.MAX_NODE_BYTES_PER_S),
        "net.rx_bytes_per_s": _f(0.0, s.MAX_NODE_BYTES_PER_S),
        "net.tx_bytes_per_s": _f(0.0, s.MAX_NODE_BYTES_PER_S),
        "net.nics[].rx_bytes_per_s": _f(0.0, s.MAX_DEVICE_BYTES_PER_S),
        "net.nics[].tx_bytes_per_s": _f(0.0, s.MAX_DEVICE_BYTES_PER_S),
        "net.nics[].rx_errors": _COUNT,
        "net.nics[].tx_errors": _COUNT,
        "net.nics[].rx_drops": _COUNT,
        "net.nics[].tx_drops": _COUNT,
        "cpu_power_w": _f(0.0, s.MAX_CPU_POWER_W),
        "node_power_w": _f(0.0, s.MAX_NODE_POWER_W),
        "gpus[].index": _GPU_INDEX,
        "gpus[].util_pct": _PCT,
        "gpus[].mem_util_pct": _PCT,
        "gpus[].mem_used_bytes": _GPU_BYTES,
        "gpus[].mem_total_bytes": _GPU_BYTES,
        "gpus[].power_w": _GPU_W,
        "gpus[].power_interval_w": _GPU_W,
        "gpus[].energy_j": _f(0.0, s.MAX_ENERGY_J),
        "gpus[].temp_c": _f(s.MIN_TEMP_C, s.MAX_TEMP_C),
        "gpus[].sm_clock_mhz": _i(0, s.MAX_CLOCK_MHZ),
        "gpus[].clock_event_reasons": _i(0, s.MAX_CLOCK_EVENT_REASONS),
        "gpus[].pstate": _i(0, s.MAX_PSTATE),
        "gpus[].processes[].pid": _i(0, s.MAX_PID),
        "gpus[].processes[].used_mem_bytes": _GPU_BYTES,
        "gpus[].processes[].gi_id": _i(0, s.MAX_MIG_INSTANCE_ID),
        "gpus[].processes[].ci_id": _i(0, s.MAX_MIG_INSTANCE_ID),
        "jobs[].started": _TS,
        "gpus[].ecc.corrected_volatile": _COUNT,
        "gpus[].ecc.uncorrected_volatile": _COUNT,
        "gpus[].ecc.corrected_aggregate": _COUNT,
        "gpus[].ecc.uncorrected_aggregate": _COUNT,
        "gpus[].remapped_rows.correctable": _COUNT,
        "gpus[].remapped_rows.uncorrectable": _COUNT,
        "gpus[].mem_clock_mhz": _i(0, s.MAX_CLOCK_MHZ),
        "gpus[].mem_temp_c": _f(s.MIN_TEMP_C, s.MAX_TEMP_C),
        "gpus[].enc_util_pct": _PCT,
        "gpus[].dec_util_pct": _PCT,
        "gpus[].pcie_replays": _i(0, s.MAX_PCIE_REPLAYS),
        "gpus[].mem_reserved_bytes": _GPU_BYTES,
        "gpus[].mig[].gi_id": _i(0, s.MAX_MIG_INSTANCE_ID),
        "gpus[].mig[].ci_id": _i(0, s.MAX_MIG_INSTANCE_ID),
        "gpus[].mig[].mem_used_bytes": _GPU_BYTES,
        "gpus[].mig[].mem_total_bytes": _GPU_BYTES,
        "gpus[].mig[].util_pct": _PCT,
        "gpus[].nvlink.tx_bytes_per_s": _f(0.0, s.MAX_NVLINK_BYTES_PER_S),
        "gpus[].nvlink.rx_bytes_per_s": _f(0.0, s.MAX_NVLINK_BYTES_PER_S),
        "xids[].gpu_index": _GPU_INDEX,
        "xids[].xid": _i(0, s.MAX_XID),
        "xids[].ts": _TS,
    },
    "inventory": {
        "ts": _TS,
        "cpu_count": _CPUS,
        "cpu_cores": _CPUS,
        "mem_total_bytes": _HOST_BYTES,
        "gpus[].index": _GPU_INDEX,
        "gpus[].power_limit_w": _GPU_W,
        "gpus[].mem_total_bytes": _GPU_BYTES,
        "nics[].speed_mbps": _i(1, s.MAX_NIC_SPEED_MBPS),
        "cpus[].sockets": _i(1, s.MAX_CPU_PACKAGES),
        "mem_installed_bytes": _HOST_BYTES,
        "mem_dimms": _i(1, s.MAX_DIMMS),
        "accelerators[].vendor_id": _i(0, s.MAX_PCI_ID),
        "accelerators[].device_id": _i(0, s.MAX_PCI_ID),
        "accelerators[].pci_class": _i(0, s.MAX_PCI_CLASS),
    },
    "status": {"ts": _TS},
}

LISTS: dict[str, dict[str, int]] = {
    "sample": {
        "cpu.per_core_pct": s.MAX_CPUS,
        "disks": s.MAX_DISKS,
        "net.nics": s.MAX_NICS,
        "gpus": s.MAX_GPUS,
        "gpus[].processes": s.MAX_PROCESSES_PER_GPU,
        "gpus[].mig": s.MAX_MIG_DEVICES,
        "xids": s.MAX_XIDS,
        "jobs": s.MAX_JOBS,
    },
    "inventory": {
        "gpus": s.MAX_GPUS,
        "nics": s.MAX_NICS,
        "cpus": s.MAX_CPU_PACKAGES,
        "accelerators": s.MAX_ACCELERATORS,
    },
    "status": {},
}

_NODE = Text(pattern=s.NODE_ID_PATTERN)
_UUID = Text(pattern=s.GPU_UUID_PATTERN)
_JOB_ID = Text(pattern=s.JOB_ID_PATTERN)
_K8S = Text(pattern=s.K8S_NAME_PATTERN)
STRINGS: dict[str, dict[str, Text]] = {
    "sample": {
        "node": _NODE,
        "disks[].mount": Text(s.MAX_PATH_LEN),
        "disks[].device": Text(s.MAX_PATH_LEN),
        "disks[].fstype": Text(s.MAX_FSTYPE_LEN),
        "net.nics[].name": Text(s.MAX_NIC_NAME_LEN),
        "gpus[].uuid": _UUID,
        "gpus[].mig[].profile": Text(pattern=s.MIG_PROFILE_PATTERN),
        "gpus[].mig[].uuid": Text(pattern=s.MIG_UUID_PATTERN),
        "node_power_source": Text(pattern=s.NODE_POWER_SOURCE_PATTERN),
        "gpus[].processes[].user": Text(pattern=s.USER_PATTERN),
        "gpus[].processes[].job": _JOB_ID,
        "gpus[].processes[].step": _JOB_ID,
        "gpus[].processes[].container": _K8S,
        "jobs[].id": _JOB_ID,
        "jobs[].account": _JOB_ID,
        "jobs[].partition": _JOB_ID,
        "jobs[].namespace": _K8S,
        "jobs[].name": _K8S,
    },
    "inventory": {
        "node": _NODE,
        "host": Text(s.MAX_HOSTNAME_LEN),
        "agent_version": Text(s.MAX_VERSION_LEN),
        "cpu_model": Text(s.MAX_MODEL_NAME_LEN, min_length=0),
        "gpus[].name": Text(s.MAX_MODEL_NAME_LEN),
        "gpus[].uuid": _UUID,
        "gpus[].serial": Text(s.MAX_SERIAL_LEN, min_length=0),
        "gpus[].pci_bus_id": Text(pattern=s.PCI_BUS_ID_PATTERN),
        "gpu_driver": Text(s.MAX_VERSION_LEN, min_length=0),
        "gpu_status": Text(pattern=s.GPU_STATUS_PATTERN),
        "nics[].name": Text(s.MAX_NIC_NAME_LEN),
        "nics[].mac": Text(pattern=s.MAC_PATTERN),
        "nics[].model": Text(s.MAX_MODEL_NAME_LEN),
        "cpus[].model": Text(s.MAX_MODEL_NAME_LEN, min_length=0),
        "accelerators[].name": Text(s.MAX_MODEL_NAME_LEN),
        "accelerators[].pci_bus_id": Text(pattern=s.PCI_BUS_ID_PATTERN),
        "metrics_address": Text(pattern=s.METRICS_ADDRESS_PATTERN),
    },
    "status": {"node": _NODE},
}


def generic_path(path: list[str | int]) -> str:
    """``["gpus", 3, "ecc", "x"]`` -> ``gpus[].ecc.x``, the tables' key."""
    out = ""
    for key in path:
        out += "[]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def walk(obj: Any, path: list[str | int]) -> Iterator[tuple[list[str | int], Any]]:
    """Every (path, value) in a decoded message, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk(value, [*path, key])
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from walk(value, [*path, i])


def assert_within_documented_bounds(kind: str, decoded: dict[str, Any]) -> None:
    """Every number, list and string of an accepted message is inside the tables above, and the
    collector's per-sample integer sums fit SQLite."""
    for path, value in walk(decoded, []):
        where = generic_path(path)
        if isinstance(value, bool) or value is None or where in ("", "v"):
            continue
        if isinstance(value, int | float):
            b = NUMBERS[kind][where]
            assert math.isfinite(value), where
            assert b.lo <= value <= b.hi, (where, value)
            assert not (b.hi_open and value == b.hi), (where, value)
        elif isinstance(value, list):
            assert len(value) <= LISTS[kind][where], (where, len(value))
        elif isinstance(value, str) and where in STRINGS[kind]:
            text = STRINGS[kind][where]
            assert text.min_length <= len(value) <= (text.max_length or len(value)), where
            assert text.pattern is None or re.search(text.pattern, value), (where, value)
    if kind == "sample":
        gpus = decoded["gpus"]
        sums = [
            sum(g["mem_used_bytes"] or 0 for g in gpus),
            sum(p.get("used_mem_bytes") or 0 for g in gpus for p in g["processes"]),
            sum(d["total_bytes"] for d in decoded["disks"]),
            sum(n["rx_drops"] for n in decoded["net"]["nics"]),
        ]
        assert all(x <= s.INT64_MAX for x in sums), sums
