"""Wire schema v1: what agents publish and the collector accepts.

Both sides import these structs, so the agent cannot publish what the collector would
reject. Decoding with :func:`decode_sample` validates types and ranges in one C pass
(msgspec); anything that fails raises :class:`shared.errors.SchemaError`.

Units are in the field names (``_bytes``, ``_w``, ``_j``, ``_pct``, ``_mhz``, ``_c``).
Rates that need two counter readings are ``None`` on the first sample and after a
counter went backwards (reset, wrap, driver reload): "unknown", never ``0``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeVar

import msgspec

from shared.errors import SchemaError

__all__ = [
    "SCHEMA_VERSION",
    "CpuStats",
    "DiskIoStats",
    "DiskStats",
    "GpuEcc",
    "GpuInfo",
    "GpuProcess",
    "GpuRemappedRows",
    "GpuSample",
    "Inventory",
    "MemStats",
    "NetStats",
    "NicInfo",
    "NicStats",
    "NodeStatus",
    "Sample",
    "XidEvent",
    "decode_inventory",
    "decode_sample",
    "decode_status",
    "encode",
]

SCHEMA_VERSION: Final = 1

# Constrained scalar types. Bounds are physical sanity limits, not alert thresholds:
# a value outside them is a broken sensor or a forged message.
Pct = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
_INT64_MAX: Final = 2**63 - 1  # SQLite stores integers as signed 64-bit
Bytes = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
Rate = Annotated[float, msgspec.Meta(ge=0.0)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
Watts = Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0)]
Joules = Annotated[float, msgspec.Meta(ge=0.0)]
Celsius = Annotated[float, msgspec.Meta(ge=-60.0, le=200.0)]
Mhz = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Timestamp = Annotated[float, msgspec.Meta(gt=0.0, lt=1e10)]  # before the year 2286
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=False):
    """Base: immutable; unknown fields are tolerated so v1 readers accept v1.x writers."""


class CpuStats(_Struct, frozen=True):
    """CPU utilisation over the last interval and load averages."""

    count: Annotated[int, msgspec.Meta(ge=1)]
    pct: Pct | None = None
    per_core_pct: list[Pct] | None = None
    load1: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    load5: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    load15: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0


class MemStats(_Struct, frozen=True):
    """Physical memory and swap."""

    total_bytes: Bytes
    used_bytes: Bytes
    available_bytes: Bytes
    swap_total_bytes: Bytes = 0
    swap_used_bytes: Bytes = 0


class DiskStats(_Struct, frozen=True):
    """One mounted filesystem."""

    mount: str
    device: str
    fstype: str
    total_bytes: Bytes
    used_bytes: Bytes


class DiskIoStats(_Struct, frozen=True):
    """Whole-node block I/O rates."""

    read_bytes_per_s: Rate | None = None
    write_bytes_per_s: Rate | None = None


class NicStats(_Struct, frozen=True):
    """One network interface: rates over the interval, error/drop counters since boot."""

    name: str
    rx_bytes_per_s: Rate | None = None
    tx_bytes_per_s: Rate | None = None
    rx_errors: Count = 0
    tx_errors: Count = 0
    rx_drops: Count = 0
    tx_drops: Count = 0


class NetStats(_Struct, frozen=True):
    """Network totals over all non-loopback interfaces, plus each interface."""

    rx_bytes_per_s: Rate | None = None
    tx_bytes_per_s: Rate | None = None
    nics: list[NicStats] = msgspec.field(default_factory=list)


class GpuProcess(_Struct, frozen=True):
    """A compute process on a GPU."""

    pid: Annotated[int, msgspec.Meta(ge=0)]
    used_mem_bytes: Bytes | None = None


class GpuEcc(_Struct, frozen=True):
    """ECC error counts (volatile = since driver load, aggregate = lifetime)."""

    corrected_volatile: Count | None = None
    uncorrected_volatile: Count | None = None
    corrected_aggregate: Count | None = None
    uncorrected_aggregate: Count | None = None


class GpuRemappedRows(_Struct, frozen=True):
    """Row remapping state (A100 and newer)."""

    correctable: Count
    uncorrectable: Count
    pending: bool
    failure: bool


class GpuSample(_Struct, frozen=True):
    """One GPU at one tick. A field the device does not support is ``None``."""

    index: Annotated[int, msgspec.Meta(ge=0, le=1023)]
    uuid: str
    util_pct: Pct | None = None
    mem_util_pct: Pct | None = None
    mem_used_bytes: Bytes | None = None
    mem_total_bytes: Bytes | None = None
    power_w: Watts | None = None
    """Instantaneous (or driver-averaged) power from ``nvmlDeviceGetPowerUsage``."""
    power_interval_w: Watts | None = None
    """Mean power over the last interval from the energy counter: the accurate figure."""
    energy_j: Joules | None = None
    """Energy counter since driver load."""
    temp_c: Celsius | None = None
    sm_clock_mhz: Mhz | None = None
    clock_event_reasons: Count | None = None
    pstate: Annotated[int, msgspec.Meta(ge=0, le=32)] | None = None
    processes: list[GpuProcess] = msgspec.field(default_factory=list)
    ecc: GpuEcc | None = None
    """Only on slow ticks."""
    remapped_rows: GpuRemappedRows | None = None
    """Only on slow ticks."""


class XidEvent(_Struct, frozen=True):
    """An XID error reported by the driver since the previous sample."""

    gpu_index: Annotated[int, msgspec.Meta(ge=0)]
    xid: Count
    ts: Timestamp


class Sample(_Struct, frozen=True):
    """One node at one tick: the payload of ``capwatch/v1/nodes/<node>/sample``."""

    v: Literal[1]
    node: NodeId
    ts: Timestamp
    """Wall-clock time of the sample, Unix seconds. (node, ts) identifies a sample."""
    seq: Count
    """Per-agent-process counter, so a gap shows lost samples."""
    interval_s: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)]
    cpu: CpuStats
    mem: MemStats
    disks: list[DiskStats] = msgspec.field(default_factory=list)
    disk_io: DiskIoStats = msgspec.field(default_factory=DiskIoStats)
    net: NetStats = msgspec.field(default_factory=NetStats)
    cpu_power_w: Watts | None = None
    """CPU package (+DRAM where exposed) power from RAPL; ``None`` when unreadable."""
    gpus: list[GpuSample] = msgspec.field(default_factory=list)
    xids: list[XidEvent] = msgspec.field(default_factory=list)


class GpuInfo(_Struct, frozen=True):
    """Static facts about one GPU."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    name: str
    uuid: str
    serial: str | None = None
    pci_bus_id: str | None = None
    power_limit_w: Watts | None = None
    mig_mode: bool | None = None
    mem_total_bytes: Bytes | None = None


class NicInfo(_Struct, frozen=True):
    """Static facts about one network interface."""

    name: str
    speed_mbps: Count | None = None
    mac: str | None = None


class Inventory(_Struct, frozen=True):
    """Retained payload of ``capwatch/v1/nodes/<node>/inventory``."""

    v: Literal[1]
    node: NodeId
    ts: Timestamp
    host: str
    agent_version: str
    cpu_model: str
    cpu_count: Annotated[int, msgspec.Meta(ge=1)]
    cpu_cores: Count | None
    mem_total_bytes: Bytes
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    gpu_driver: str | None = None
    gpu_status: str = "ok"
    """``ok`` or why there are no GPUs (``no_driver``, ``no_library``, ...)."""
    nics: list[NicInfo] = msgspec.field(default_factory=list)


class NodeStatus(_Struct, frozen=True):
    """Retained payload of ``capwatch/v1/nodes/<node>/status``; the broker's will sends offline."""

    v: Literal[1]
    node: NodeId
    status: Literal["online", "offline"]
    ts: Timestamp | None = None


_encoder = msgspec.json.Encoder()
_sample_decoder = msgspec.json.Decoder(Sample)
_inventory_decoder = msgspec.json.Decoder(Inventory)
_status_decoder = msgspec.json.Decoder(NodeStatus)


def encode(obj: Sample | Inventory | NodeStatus) -> bytes:
    """Serialise a wire struct to compact JSON bytes."""
    return _encoder.encode(obj)


_T = TypeVar("_T")


def _decode(decoder: msgspec.json.Decoder[_T], payload: bytes | bytearray | memoryview) -> _T:
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        # msgspec names the path ("... - at `$.gpus[0].util_pct`"); a wrong `v` is its own reason
        # so operators can tell a version skew from a broken sensor.
        reason = "version" if str(exc).endswith("at `$.v`") else "invalid"
        raise SchemaError(str(exc), reason=reason) from exc
    except msgspec.DecodeError as exc:
        raise SchemaError(str(exc), reason="not_json") from exc


def decode_sample(payload: bytes | bytearray | memoryview) -> Sample:
    """Decode and validate a sample; raise :class:`SchemaError` naming the bad field."""
    return _decode(_sample_decoder, payload)


def decode_inventory(payload: bytes | bytearray | memoryview) -> Inventory:
    """Decode and validate an inventory message."""
    return _decode(_inventory_decoder, payload)


def decode_status(payload: bytes | bytearray | memoryview) -> NodeStatus:
    """Decode and validate a status message."""
    return _decode(_status_decoder, payload)
