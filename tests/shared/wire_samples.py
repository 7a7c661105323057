"""Realistic wire messages as plain dicts, every optional field filled, for schema tests.

A DGX H100-like node: 8 GPUs under load, 224 CPUs, two filesystems, a few NICs, an XID.
Tests mutate the dicts and encode them, so each call returns fresh objects.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

__all__ = [
    "RAW",
    "Raw",
    "encode",
    "get",
    "inventory_dict",
    "json_path",
    "keys",
    "sample_dict",
    "set_at",
    "status_dict",
    "uuid",
]

_TS = 1_800_000_000.0
_GPU_MEM = 85_520_809_984


_POD_UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def uuid(index: int) -> str:
    """An NVML-style GPU UUID, distinct per index."""
    return f"GPU-{index:08x}-c209-4cac-a29f-6fbed82c07cd"


def _gpu(g: int) -> dict[str, Any]:
    return {
        "index": g,
        "uuid": uuid(g),
        "util_pct": 83.0 + g,
        "mem_util_pct": 50.0,
        "mem_used_bytes": 50_492_533_757 + g,
        "mem_total_bytes": _GPU_MEM,
        "power_w": 538.06,
        "power_interval_w": 531.75,
        "energy_j": 3_045_633.119 + g,
        "temp_c": 68.0,
        "sm_clock_mhz": 1980,
        "clock_event_reasons": 4,
        "pstate": 0,
        "processes": [
            {
                "pid": 4000 + g,
                "used_mem_bytes": 49_955_706_466,
                "user": "alice",
                "job": "4242" if g < 6 else _POD_UID,
                **({"step": "0"} if g < 6 else {"container": "pytorch"}),
                **({"gi_id": 1, "ci_id": 0} if g == 0 else {}),
            }
        ],
        "ecc": {
            "corrected_volatile": 0,
            "uncorrected_volatile": 0,
            "corrected_aggregate": 12,
            "uncorrected_aggregate": 0,
        },
        "remapped_rows": {"correctable": 1, "uncorrectable": 0, "pending": False, "failure": False},
        "mem_clock_mhz": 2619,
        "mem_temp_c": 71.0,
        "enc_util_pct": 0.0,
        "dec_util_pct": 12.0,
        "pcie_replays": 3,
        "mem_reserved_bytes": 536_870_912,
        # The first GPU in MIG mode as 3g.40gb + 2g.20gb (+ one 2g.20gb unused, not listed).
        "mig": (
            [
                {
                    "gi_id": 1,
                    "ci_id": 0,
                    "profile": "3g.40gb",
                    "mem_used_bytes": 20_971_520_000,
                    "mem_total_bytes": 42_412_212_224,
                    "util_pct": 40.0,
                    "uuid": "MIG-9a0b7c1d-2e3f-5a4b-8c6d-7e8f9a0b1c2d",
                },
                {
                    "gi_id": 3,
                    "ci_id": 0,
                    "profile": "2g.20gb",
                    "mem_used_bytes": 1_073_741_824,
                    "mem_total_bytes": 21_072_183_296,
                    "uuid": f"MIG-{uuid(0)}/3/0",
                },
            ]
            if g == 0
            else []
        ),
        "nvlink": {"tx_bytes_per_s": 1.5e11 + g, "rx_bytes_per_s": 1.4e11 + g},
    }


def _nic(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "rx_bytes_per_s": 1.2e9,
        "tx_bytes_per_s": 1.1e9,
        "rx_errors": 3,
        "tx_errors": 0,
        "rx_drops": 120,
        "tx_drops": 0,
    }


def sample_dict() -> dict[str, Any]:
    """A valid, fully populated 8-GPU sample."""
    return {
        "v": 1,
        "node": "x1000c0s0b0n0",
        "ts": _TS,
        "seq": 1234,
        "interval_s": 5.0,
        "cpu": {
            "count": 224,
            "pct": 27.9,
            "per_core_pct": [round((i * 37) % 100 + 0.5, 1) for i in range(224)],
            "load1": 61.6,
            "load5": 58.8,
            "load15": 56.0,
        },
        "mem": {
            "total_bytes": 2_164_173_131_776,
            "used_bytes": 421_371_904_000,
            "available_bytes": 1_742_801_227_776,
            "swap_total_bytes": 8_589_934_592,
            "swap_used_bytes": 0,
        },
        "disks": [
            {
                "mount": "/",
                "device": "/dev/nvme0n1p2",
                "fstype": "ext4",
                "total_bytes": 1_900_000_000_000,
                "used_bytes": 420_000_000_000,
            },
            {
                "mount": "/raid",
                "device": "/dev/md0",
                "fstype": "ext4",
                "total_bytes": 30_000_000_000_000,
                "used_bytes": 1_000_000_000_000,
            },
        ],
        "disk_io": {"read_bytes_per_s": 1.7e8, "write_bytes_per_s": 4.2e7},
        "net": {
            "rx_bytes_per_s": 4.8e9,
            "tx_bytes_per_s": 4.4e9,
            "nics": [_nic(n) for n in ("eno1", "ibp26s0", "ibp60s0", "ibp77s0")],
        },
        "cpu_power_w": 537.1,
        "node_power_w": 8412.0,
        "node_power_source": "dcmi",
        "gpus": [_gpu(g) for g in range(8)],
        "xids": [{"gpu_index": 3, "xid": 79, "ts": _TS - 2.5}],
        "jobs": [
            {
                "id": "4242",
                "scheduler": "slurm",
                "account": "physics",
                "partition": "gpu",
                "started": _TS - 3600.0,
            },
            {
                "id": _POD_UID,
                "scheduler": "kubernetes",
                "namespace": "ml-team",
                "name": "trainer-7f9c",
                "started": _TS - 60.0,
            },
        ],
    }


def inventory_dict() -> dict[str, Any]:
    """A valid, fully populated inventory of the same node."""
    return {
        "v": 1,
        "node": "x1000c0s0b0n0",
        "ts": _TS,
        "host": "x1000c0s0b0n0.cluster.example",
        "agent_version": "0.1.0",
        "cpu_model": "AMD EPYC 9654 96-Core Processor",
        "cpu_count": 224,
        "cpu_cores": 112,
        "mem_total_bytes": 2_164_173_131_776,
        "gpus": [
            {
                "index": g,
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": uuid(g),
                "serial": f"1654000000{g:03d}",
                "pci_bus_id": f"00000000:{0x18 + g * 0x10:02X}:00.0",
                "power_limit_w": 700.0,
                "mig_mode": False,
                "mem_total_bytes": _GPU_MEM,
            }
            for g in range(8)
        ],
        "gpu_driver": "550.54.15",
        "gpu_status": "ok",
        "nics": [
            {
                "name": "eno1",
                "speed_mbps": 25_000,
                "mac": "02:fc:00:00:00:01",
                "model": "Broadcom Inc. and subsidiaries BCM57414 NetXtreme-E 10Gb/25Gb",
                "up": True,
            },
            {
                "name": "ibp26s0",
                "speed_mbps": 400_000,
                "mac": "80:00:02:08:fe:80:00:00:00:00:00:00:b8:59:9f:03:00:f2:3c:6e",
                "model": "Mellanox Technologies MT2910 Family [ConnectX-7]",
                "up": False,
            },
        ],
        "cpus": [{"model": "AMD EPYC 9654 96-Core Processor", "sockets": 2}],
        "mem_installed_bytes": 2_199_023_255_552,
        "mem_dimms": 24,
        "accelerators": [
            {
                "vendor_id": 0x1002,
                "device_id": 0x74A1,
                "name": "AMD Instinct MI300X",
                "pci_bus_id": "0000:c1:00.0",
                "pci_class": 0x120000,
            }
        ],
    }


def status_dict() -> dict[str, Any]:
    """A valid status message."""
    return {"v": 1, "node": "x1000c0s0b0n0", "status": "online", "ts": 1_800_000_000.0}


RAW = "\x00raw\x00"
"""A string value standing for raw JSON text (``1e400``, ``NaN``) msgspec will not encode."""


class Raw(NamedTuple):
    """JSON text to put in place of a value, verbatim."""

    text: str


def keys(path: str) -> list[str | int]:
    """``gpus[].ecc.x`` -> ``["gpus", 0, "ecc", "x"]``: the first element of each list."""
    out: list[str | int] = []
    for part in path.split("."):
        if part.endswith("[]"):
            out += [part[:-2], 0]
        else:
            out.append(part)
    return out


def json_path(path: str) -> str:
    """Where msgspec reports an error at ``path``: ``$.gpus[0].power_w``."""
    return "$." + path.replace("[]", "[0]")


def get(obj: Any, path: list[str | int]) -> Any:
    """The value at ``path`` (keys and list indexes)."""
    for key in path:
        obj = obj[key]
    return obj


def set_at(d: dict[str, Any], path: str, value: Any) -> None:
    """Set the first instance of table path ``path`` in ``d``."""
    ks = keys(path)
    get(d, ks[:-1])[ks[-1]] = value


def encode(d: dict[str, Any], raws: list[Raw] | None = None) -> bytes:
    """JSON of ``d`` with its :data:`RAW` markers replaced by ``raws``, first marker first."""
    payload = msgspec.json.encode(d)
    for raw in raws or ():
        payload = payload.replace(msgspec.json.encode(RAW), raw.text.encode(), 1)
    return payload
