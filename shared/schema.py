"""Wire schema v1: what agents publish and the collector accepts.

Both sides import these structs, so the agent cannot publish what the collector would
reject. Decoding with :func:`decode_sample` validates types and ranges in one C pass
(msgspec), then the sample's node name and GPU UUIDs (not again while they are its node's
last sample's: :class:`_KnownUuids`), its processes' and jobs' users, ids and Kubernetes names
(not again while they matched lately: :class:`_KnownText`) and that it names each GPU once;
anything that fails raises
:class:`shared.errors.SchemaError` naming the field path. Constructing a struct in Python
does not check ranges: only decoding does.

Units are in the field names (``_bytes``, ``_w``, ``_j``, ``_pct``, ``_mhz``, ``_c``).
Rates that need two counter readings are ``None`` on the first sample and after a
counter went backwards (reset, wrap, driver reload): "unknown", never ``0``.

Every number, list and string has a bound (the ``MAX_*`` constants below): shared/schema.md
gives each field's unit, range and reason, and the arithmetic that keeps the collector's
per-sample sums inside SQLite's signed 64-bit integers.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, TypeVar

import msgspec

from shared.errors import SchemaError
from shared.text import UNSHOWN as _UNSHOWN
from shared.topics import MAX_NODE_ID_LEN, NODE_ID_RE

__all__ = [
    "GPU_STATUS_PATTERN",
    "GPU_UUID_PATTERN",
    "INT64_MAX",
    "JOB_ID_PATTERN",
    "K8S_NAME_PATTERN",
    "MAC_PATTERN",
    "MAX_ACCELERATORS",
    "MAX_CLOCK_EVENT_REASONS",
    "MAX_CLOCK_MHZ",
    "MAX_COUNTER",
    "MAX_CPUS",
    "MAX_CPU_PACKAGES",
    "MAX_CPU_POWER_W",
    "MAX_DEVICE_BYTES_PER_S",
    "MAX_DIMMS",
    "MAX_DISKS",
    "MAX_ENERGY_J",
    "MAX_FSTYPE_LEN",
    "MAX_FS_BYTES",
    "MAX_GPUS",
    "MAX_GPU_MEM_BYTES",
    "MAX_GPU_POWER_W",
    "MAX_GPU_STATUS_LEN",
    "MAX_HOSTNAME_LEN",
    "MAX_HOST_MEM_BYTES",
    "MAX_ID_LEN",
    "MAX_INTERVAL_S",
    "MAX_JOBS",
    "MAX_JOB_NAME_LEN",
    "MAX_LOAD",
    "MAX_MIG_DEVICES",
    "MAX_MIG_INSTANCE_ID",
    "MAX_MODEL_NAME_LEN",
    "MAX_NICS",
    "MAX_NIC_NAME_LEN",
    "MAX_NIC_SPEED_MBPS",
    "MAX_NODE_BYTES_PER_S",
    "MAX_NODE_ID_LEN",
    "MAX_NODE_POWER_W",
    "MAX_NVLINK_BYTES_PER_S",
    "MAX_PATH_LEN",
    "MAX_PAYLOAD_BYTES",
    "MAX_PCIE_REPLAYS",
    "MAX_PCI_CLASS",
    "MAX_PCI_ID",
    "MAX_PID",
    "MAX_PROCESSES_PER_GPU",
    "MAX_PSTATE",
    "MAX_SERIAL_LEN",
    "MAX_TEMP_C",
    "MAX_TS_S",
    "MAX_USER_LEN",
    "MAX_VERSION_LEN",
    "MAX_XID",
    "MAX_XIDS",
    "METRICS_ADDRESS_PATTERN",
    "MIG_PROFILE_PATTERN",
    "MIG_UUID_PATTERN",
    "MIN_INTERVAL_S",
    "MIN_TEMP_C",
    "MIN_TS_S",
    "NODE_ID_PATTERN",
    "NODE_POWER_SOURCES",
    "NODE_POWER_SOURCE_PATTERN",
    "PCI_BUS_ID_PATTERN",
    "SCHEMA_VERSION",
    "USER_PATTERN",
    "AcceleratorInfo",
    "CpuPackage",
    "CpuStats",
    "DiskIoStats",
    "DiskStats",
    "GpuEcc",
    "GpuInfo",
    "GpuNvlink",
    "GpuProcess",
    "GpuRemappedRows",
    "GpuSample",
    "Inventory",
    "Job",
    "MemStats",
    "MigSample",
    "NetStats",
    "NicInfo",
    "NicStats",
    "NodeStatus",
    "Sample",
    "Watermark",
    "XidEvent",
    "decode_inventory",
    "decode_sample",
    "decode_status",
    "decode_watermark",
    "encode",
]

SCHEMA_VERSION: Final = 1

# Bounds are physical sanity limits, not alert thresholds: a value outside them is a broken
# sensor, a counter glitch or a forged message, and the whole message is rejected. Each one is
# explained in shared/schema.md; the collector imports them (e.g. MAX_GPUS) to size its own
# arithmetic. All inclusive, except MAX_TS_S (a timestamp must be before it).

MAX_PAYLOAD_BYTES: Final = 1_000_000
"""The largest message payload the collector accepts (``too_large`` past it), under the
shipped broker's ``max_packet_size`` of 1 MiB (deploy/mosquitto.conf). The list and string
bounds below allow larger samples (64 GPUs x 256 processes with every field are ~5 MB), so
this is the bound that holds: the costliest valid sample that fits (GPU processes) takes
~12 ms to validate (``bench/bench_fairness.py``); each node's ingest budget
(:mod:`shared.budget`) bounds how often."""

INT64_MAX: Final = 2**63 - 1
"""SQLite stores integers as signed 64-bit: no stored value or per-sample sum may exceed it."""

# -- list lengths
MAX_GPUS: Final = 64
MAX_CPUS: Final = 8192
"""Linux's largest NR_CPUS (CONFIG_MAXSMP); bounds ``per_core_pct`` and the CPU counts."""
MAX_DISKS: Final = 256
MAX_NICS: Final = 1024
MAX_PROCESSES_PER_GPU: Final = 256
MAX_XIDS: Final = 1024
MAX_CPU_PACKAGES: Final = 64
"""CPU sockets per node: the largest single-image servers have 32."""
MAX_ACCELERATORS: Final = 64
"""Accelerators NVML does not report, per node: as MAX_GPUS."""
MAX_MIG_DEVICES: Final = 16
"""MIG devices per GPU: NVML's ``nvmlDeviceGetMaxMigDeviceCount`` is 7 on A100, H100 and
B200; twice that leaves room for a part with more slices."""
MAX_JOBS: Final = 256
"""Jobs (Slurm jobs, Kubernetes pods) with a process on a node's GPUs: 64 GPUs shared by
four jobs each."""

# -- string lengths and patterns. Patterns end in \Z, not $: Python's $ also matches before a
# trailing newline, so "GPU-...\n" would pass.
MAX_NIC_NAME_LEN: Final = 15
"""IFNAMSIZ - 1."""
MAX_PATH_LEN: Final = 4096
"""PATH_MAX: mount points and device paths."""
MAX_FSTYPE_LEN: Final = 64
MAX_MODEL_NAME_LEN: Final = 256
MAX_SERIAL_LEN: Final = 64
MAX_HOSTNAME_LEN: Final = 253
MAX_VERSION_LEN: Final = 80
"""NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE; also the agent version."""
MAX_GPU_STATUS_LEN: Final = 32
MAX_ID_LEN: Final = 64
"""Scheduler identifiers: Slurm job ids, steps, accounts, partitions; Kubernetes pod UIDs."""
MAX_USER_LEN: Final = 64
"""A user name (useradd allows 32; directory services longer), or the numeric uid."""
USER_PATTERN: Final = rf"^[^ {_UNSHOWN}](?:[^{_UNSHOWN}]{{0,{MAX_USER_LEN - 2}}}[^ {_UNSHOWN}])?\Z"
"""A process's user: 1 to MAX_USER_LEN characters that show as themselves (not
:data:`shared.text.UNSHOWN`), no space first or last. POSIX names, uids and directory services'
forms (``jdoe@EXAMPLE.COM``, ``EXAMPLE\\jdoe``, ``john smith``, non-ASCII letters) pass. It
is an identifier (an alert's ``user`` label), so the agent leaves out one that does not
match rather than change it."""
MAX_JOB_NAME_LEN: Final = 253
"""A Kubernetes pod name: a DNS subdomain (RFC 1123), at most 253 characters."""
JOB_ID_PATTERN: Final = rf"^[A-Za-z0-9][A-Za-z0-9_.:+-]{{0,{MAX_ID_LEN - 1}}}\Z"
"""A Slurm job id (``4242``, an array task's ``4242_7``), step (``0``, ``batch``, ``extern``,
het ``0+1``), account or partition, or a pod UID: letters, digits and ``_ . : + -``."""
K8S_NAME_PATTERN: Final = r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?\Z"
"""A Kubernetes object name (namespace, pod, container): lower-case RFC 1123, ≤ 253
characters (namespaces and containers are labels of ≤ 63, a subset)."""
_UUID = r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
GPU_UUID_PATTERN: Final = (
    rf"^(?:GPU-{_UUID}|MIG-{_UUID}|MIG-GPU-{_UUID}/[0-9]{{1,3}}/[0-9]{{1,3}})\Z"
)
"""NVML: ``GPU-<uuid>``; MIG devices ``MIG-<uuid>`` (R470+) or ``MIG-GPU-<uuid>/<gi>/<ci>``."""
MIG_UUID_PATTERN: Final = rf"^(?:MIG-{_UUID}|MIG-GPU-{_UUID}/[0-9]{{1,3}}/[0-9]{{1,3}})\Z"
"""A MIG device's UUID, the MIG forms of :data:`GPU_UUID_PATTERN`."""
PCI_BUS_ID_PATTERN: Final = r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\Z"
"""``domain:bus:device.function``, e.g. ``00000000:3B:00.0`` (4-digit legacy domain too)."""
MAC_PATTERN: Final = r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){0,31}\Z"
"""Up to MAX_ADDR_LEN (32) octets: Ethernet has 6, InfiniBand 20."""
NODE_ID_PATTERN: Final = NODE_ID_RE.pattern
"""The rule of :data:`shared.topics.NODE_ID_RE` (one safe MQTT topic level)."""
GPU_STATUS_PATTERN: Final = rf"^[a-z][a-z0-9_]{{0,{MAX_GPU_STATUS_LEN - 1}}}\Z"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
METRICS_ADDRESS_PATTERN: Final = (
    rf"^(?:[A-Za-z0-9][A-Za-z0-9._-]{{0,252}}|\[[0-9A-Fa-f:.]{{2,45}}\]):{_PORT}\Z"
)
"""``HOST:PORT`` as Prometheus takes a target: a DNS name or IPv4 address (at most 253
characters), or ``[IPv6]``; port 1-65535. At most 259 characters in all."""
"""``ok``, ``no_driver``, ...: a lower-case word, so a new agent's reason still decodes."""
MIG_PROFILE_PATTERN: Final = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}\Z"
"""A GPU instance profile as NVML and nvidia-smi name it without their ``MIG `` prefix:
``1g.10gb``, ``3g.40gb``, ``1g.10gb+me``, ``1g.12gb-me``; at most 32 characters."""
NODE_POWER_SOURCES: Final = ("dcmi", "redfish", "hwmon")
"""Where a node's input power was read: the BMC in band (IPMI DCMI "Get Power Reading"),
the BMC's Redfish service, or the kernel's hwmon PSU sensors."""
NODE_POWER_SOURCE_PATTERN: Final = r"^[a-z][a-z0-9_]{0,15}\Z"
"""A lower-case word (one of :data:`NODE_POWER_SOURCES` today), so a newer agent's source
still decodes; the collector labels a word it does not know ``other``."""

# -- numbers
MIN_TS_S: Final = 946_684_800.0
"""2000-01-01T00:00:00Z: an earlier wall clock is a node whose RTC was reset."""
MAX_TS_S: Final = 4_102_444_800.0
"""2100-01-01T00:00:00Z."""
MIN_INTERVAL_S: Final = 0.01
MAX_INTERVAL_S: Final = 3600.0
MAX_GPU_MEM_BYTES: Final = 2**42
"""4 TiB per GPU (B300 has 288 GB)."""
MAX_HOST_MEM_BYTES: Final = 2**48
"""256 TiB of RAM or swap per node (the largest single-image servers have 48 TiB)."""
MAX_FS_BYTES: Final = 2**54
"""16 PiB per filesystem."""
MAX_DEVICE_BYTES_PER_S: Final = 5e11
"""500 GB/s = 4 Tb/s per network interface (a bond of 8 x 400G is 400 GB/s)."""
MAX_NODE_BYTES_PER_S: Final = 5e12
"""5 TB/s node totals (disk I/O, network): more than a node's memory system can move."""
MAX_NVLINK_BYTES_PER_S: Final = 4e12
"""One GPU's NVLink traffic in one direction, all its links: 4 TB/s, over twice NVLink 6's
1.8 TB/s per direction (Rubin; NVLink 4 on H100 is 450 GB/s, NVLink 5 on B200 900 GB/s)."""
MAX_NIC_SPEED_MBPS: Final = 4_000_000
"""4 Tb/s link speed, the same figure as MAX_DEVICE_BYTES_PER_S."""
MAX_GPU_POWER_W: Final = 5_000.0
MAX_CPU_POWER_W: Final = 10_000.0
MAX_NODE_POWER_W: Final = 100_000.0
"""A whole node's input power: 100 kW, seven times the largest 8-GPU server's nameplate
(14.3 kW); a whole NVL72 rack is ~120 kW, but it is a rack of nodes, not one node."""
MAX_ENERGY_J: Final = 1e12
"""45 years at 700 W; as mJ (NVML's unit) 1e15 < 2**53, so float64 keeps every mJ."""
MIN_TEMP_C: Final = -60.0
MAX_TEMP_C: Final = 200.0
MAX_CLOCK_MHZ: Final = 10_000
MAX_MIG_INSTANCE_ID: Final = 255
"""GPU and compute instance ids: NVML numbers them from 0 within one GPU (0-14 on A100 and
H100); the MIG device UUID form ``MIG-GPU-<uuid>/<gi>/<ci>`` allows three digits."""
MAX_PSTATE: Final = 32
"""P0-P15; NVML's ``NVML_PSTATE_UNKNOWN`` is 32."""
MAX_CLOCK_EVENT_REASONS: Final = 2**32 - 1
"""Bitmask; NVML defines bits up to 0x400."""
MAX_XID: Final = 2**32 - 1
MAX_PCIE_REPLAYS: Final = 2**32 - 1
"""NVML's PCIe replay counter is an unsigned int."""
MAX_LOAD: Final = 4_194_304.0
"""A load average counts tasks, and Linux has at most PID_MAX_LIMIT (2**22) of them."""
MAX_PID: Final = 4_194_304
"""Linux's PID_MAX_LIMIT on 64-bit."""
MAX_DIMMS: Final = 1024
"""Memory modules per node: 32 sockets x 24 DIMM slots is 768."""
MAX_PCI_ID: Final = 0xFFFF
"""PCI vendor and device ids are 16 bits."""
MAX_PCI_CLASS: Final = 0xFFFFFF
"""PCI class code: class, subclass, programming interface (24 bits)."""
MAX_COUNTER: Final = 2**53 - 1
"""Error/drop/ECC counters, remapped rows, seq: exact in float64 JSON readers, and
MAX_NICS of them sum below INT64_MAX."""

# Constrained scalar types.
Pct = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=MAX_HOST_MEM_BYTES)]
"""Host memory and swap."""
GpuBytes = Annotated[int, msgspec.Meta(ge=0, le=MAX_GPU_MEM_BYTES)]
FsBytes = Annotated[int, msgspec.Meta(ge=0, le=MAX_FS_BYTES)]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_DEVICE_BYTES_PER_S)]
"""One network interface, bytes/s."""
NodeRate = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_NODE_BYTES_PER_S)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
Watts = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_GPU_POWER_W)]
"""One GPU."""
CpuWatts = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_CPU_POWER_W)]
Joules = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_ENERGY_J)]
Celsius = Annotated[float, msgspec.Meta(ge=MIN_TEMP_C, le=MAX_TEMP_C)]
Mhz = Annotated[int, msgspec.Meta(ge=0, le=MAX_CLOCK_MHZ)]
Load = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_LOAD)]
CpuCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_CPUS)]
GpuIndex = Annotated[int, msgspec.Meta(ge=0, le=MAX_GPUS - 1)]
Timestamp = Annotated[float, msgspec.Meta(ge=MIN_TS_S, lt=MAX_TS_S)]
NodeId = Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]
GpuUuid = Annotated[str, msgspec.Meta(pattern=GPU_UUID_PATTERN)]


# Strings: the length caps keep one message from carrying megabytes in a field.
NicName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NIC_NAME_LEN)]
PathText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_LEN)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_NAME_LEN)]


class _Struct(
    msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=False, gc=False
):
    """Base: immutable; unknown fields are tolerated so v1 readers accept v1.x writers.

    ``gc=False``: the cyclic garbage collector does not track these (immutable data, no
    reference cycles possible). The collector holds every node's latest sample in its live
    view; tracked, those 100k+ objects made each collection pass scan them all, which cost
    ~40 us per ingested sample at 12,500 nodes. For the same reason a sample's arrays are
    tuples, not lists: a tuple holding only untracked objects is untracked at the first
    collection that sees it, a list never is (that left ~14 tracked lists per node, and a full
    collection over a 12,500-node live view took ~32 ms instead of ~5).
    """


class CpuStats(_Struct, frozen=True):
    """CPU utilisation over the last interval and load averages."""

    count: CpuCount
    pct: Pct | None = None
    per_core_pct: Annotated[tuple[Pct, ...], msgspec.Meta(max_length=MAX_CPUS)] | None = None
    load1: Load = 0.0
    load5: Load = 0.0
    load15: Load = 0.0


class MemStats(_Struct, frozen=True):
    """Physical memory and swap."""

    total_bytes: Bytes
    used_bytes: Bytes
    available_bytes: Bytes
    swap_total_bytes: Bytes = 0
    swap_used_bytes: Bytes = 0


class DiskStats(_Struct, frozen=True):
    """One mounted filesystem."""

    mount: PathText
    device: PathText
    fstype: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FSTYPE_LEN)]
    total_bytes: FsBytes
    used_bytes: FsBytes


class DiskIoStats(_Struct, frozen=True):
    """Whole-node block I/O rates."""

    read_bytes_per_s: NodeRate | None = None
    write_bytes_per_s: NodeRate | None = None


class NicStats(_Struct, frozen=True):
    """One network interface: rates over the interval, error/drop counters since boot."""

    name: NicName
    rx_bytes_per_s: Rate | None = None
    tx_bytes_per_s: Rate | None = None
    rx_errors: Count = 0
    tx_errors: Count = 0
    rx_drops: Count = 0
    tx_drops: Count = 0


class NetStats(_Struct, frozen=True):
    """Network totals over all non-loopback interfaces, plus each interface."""

    rx_bytes_per_s: NodeRate | None = None
    tx_bytes_per_s: NodeRate | None = None
    nics: Annotated[tuple[NicStats, ...], msgspec.Meta(max_length=MAX_NICS)] = ()


JobId = str
"""Matches :data:`JOB_ID_PATTERN`: :func:`decode_sample` checks it, not msgspec (see
:class:`_KnownText`)."""
K8sName = str
"""Matches :data:`K8S_NAME_PATTERN`: :func:`decode_sample` checks it, not msgspec."""
MigInstanceId = Annotated[int, msgspec.Meta(ge=0, le=MAX_MIG_INSTANCE_ID)]


class GpuProcess(_Struct, frozen=True, omit_defaults=True):
    """A compute process on a GPU, and whose it is (where the agent could tell).

    ``omit_defaults``: a field the agent could not attribute is absent, not ``null``, so an
    unattributed process costs no more bytes than before these fields.
    """

    pid: Annotated[int, msgspec.Meta(ge=0, le=MAX_PID)]
    used_mem_bytes: GpuBytes | None = None
    user: str | None = None
    """The process's user name (the numeric uid where the node cannot name it):
    :data:`USER_PATTERN` (:func:`decode_sample` checks it, not msgspec)."""
    job: JobId | None = None
    """The Slurm job id or the pod UID this process belongs to: the ``id`` of an entry of the
    sample's ``jobs``, which says more about it."""
    step: JobId | None = None
    """The Slurm job step (``0``, ``batch``, ``extern``, ``interactive``)."""
    container: K8sName | None = None
    """The Kubernetes container (of the pod named by ``job``)."""
    gi_id: MigInstanceId | None = None
    """In MIG mode: the GPU instance the process runs in (an entry of the GPU's ``mig``);
    absent outside MIG mode and where NVML did not say."""
    ci_id: MigInstanceId | None = None
    """In MIG mode: its compute instance within ``gi_id``."""


class Job(_Struct, frozen=True, omit_defaults=True):
    """A Slurm job or a Kubernetes pod with processes on this node's GPUs."""

    id: JobId
    """Slurm: the job id; Kubernetes: the pod UID."""
    scheduler: Literal["slurm", "kubernetes"]
    account: JobId | None = None
    """Slurm account (from the job's environment)."""
    partition: JobId | None = None
    """Slurm partition (from the job's environment)."""
    namespace: K8sName | None = None
    """Kubernetes namespace of the pod."""
    name: K8sName | None = None
    """Kubernetes pod name."""
    started: Timestamp | None = None
    """When the earliest of its processes on this node's GPUs started (Unix seconds)."""


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


NvlinkRate = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_NVLINK_BYTES_PER_S)]


class GpuNvlink(_Struct, frozen=True, omit_defaults=True):
    """A GPU's NVLink traffic over the last interval, all its links together, in bytes/s:
    the data (payload) counters NVML keeps per direction (``NVML_FI_DEV_NVLINK_THROUGHPUT_
    DATA_TX`` / ``_RX``), which DCGM's ``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` sums. A rate
    needs two readings: ``None`` (left out) on the first, and after a counter reset."""

    tx_bytes_per_s: NvlinkRate | None = None
    rx_bytes_per_s: NvlinkRate | None = None


class MigSample(_Struct, frozen=True, omit_defaults=True):
    """One MIG device (a compute instance within a GPU instance) of a GPU in MIG mode.

    NVML reports memory per MIG device, not utilisation (``nvmlDeviceGetUtilizationRates``
    answers NotSupported on MIG devices and on their parent): ``util_pct`` is carried should
    a driver report it. Power, temperature and clocks belong to the whole GPU (its
    :class:`GpuSample`). ``omit_defaults``: an unknown field costs no bytes.
    """

    gi_id: MigInstanceId
    """GPU instance id (dcgm-exporter's ``GPU_I_ID``)."""
    ci_id: MigInstanceId
    """Compute instance id within the GPU instance."""
    profile: Annotated[str, msgspec.Meta(pattern=MIG_PROFILE_PATTERN)] | None = None
    """The GPU instance profile, ``1g.10gb`` (dcgm-exporter's ``GPU_I_PROFILE``)."""
    mem_used_bytes: GpuBytes | None = None
    mem_total_bytes: GpuBytes | None = None
    util_pct: Pct | None = None
    uuid: Annotated[str, msgspec.Meta(pattern=MIG_UUID_PATTERN)] | None = None
    """The MIG device's UUID, ``MIG-<uuid>``: what ``CUDA_VISIBLE_DEVICES`` and Kubernetes'
    device plugin name it by (``None``: an agent before this field)."""


class GpuSample(_Struct, frozen=True):
    """One GPU at one tick. A field the device does not support is ``None``.

    ``uuid`` matches :data:`GPU_UUID_PATTERN`: :func:`decode_sample` checks it, not msgspec
    (see :data:`_known_uuids`)."""

    index: GpuIndex
    uuid: str
    util_pct: Pct | None = None
    mem_util_pct: Pct | None = None
    mem_used_bytes: GpuBytes | None = None
    mem_total_bytes: GpuBytes | None = None
    power_w: Watts | None = None
    """Instantaneous (or driver-averaged) power from ``nvmlDeviceGetPowerUsage``."""
    power_interval_w: Watts | None = None
    """Mean power over the last interval from the energy counter: the accurate figure."""
    energy_j: Joules | None = None
    """Energy counter since driver load."""
    temp_c: Celsius | None = None
    sm_clock_mhz: Mhz | None = None
    clock_event_reasons: Annotated[int, msgspec.Meta(ge=0, le=MAX_CLOCK_EVENT_REASONS)] | None = (
        None
    )
    pstate: Annotated[int, msgspec.Meta(ge=0, le=MAX_PSTATE)] | None = None
    processes: Annotated[
        tuple[GpuProcess, ...], msgspec.Meta(max_length=MAX_PROCESSES_PER_GPU)
    ] = ()
    ecc: GpuEcc | None = None
    """Only on slow ticks."""
    remapped_rows: GpuRemappedRows | None = None
    """Only on slow ticks."""
    mem_clock_mhz: Mhz | None = None
    """Memory clock (``nvmlDeviceGetClockInfo(NVML_CLOCK_MEM)``)."""
    mem_temp_c: Celsius | None = None
    """Memory (HBM) temperature, NVML field ``NVML_FI_DEV_MEMORY_TEMP``; GPUs without a
    memory sensor leave it ``None``."""
    enc_util_pct: Pct | None = None
    """Video encoder utilisation over NVML's sampling period."""
    dec_util_pct: Pct | None = None
    """Video decoder utilisation over NVML's sampling period."""
    pcie_replays: Annotated[int, msgspec.Meta(ge=0, le=MAX_PCIE_REPLAYS)] | None = None
    """PCIe replay (retry) counter since driver load."""
    mem_reserved_bytes: GpuBytes | None = None
    """Memory the driver reserves (``nvmlDeviceGetMemoryInfo`` v2); ``None`` before R510."""
    mig: Annotated[tuple[MigSample, ...], msgspec.Meta(max_length=MAX_MIG_DEVICES)] = ()
    """The GPU's MIG devices, by GPU instance id; empty outside MIG mode (or from an agent
    before this field)."""
    nvlink: GpuNvlink | None = None
    """NVLink traffic; ``None`` on a GPU without NVLink (or from an agent before this
    field)."""


class XidEvent(_Struct, frozen=True):
    """An XID error reported by the driver since the previous sample."""

    gpu_index: GpuIndex
    xid: Annotated[int, msgspec.Meta(ge=0, le=MAX_XID)]
    ts: Timestamp


def _one_each(gpus: tuple[GpuSample, ...] | list[GpuInfo]) -> None:
    """A message names each GPU once: two under one index or UUID would be merged into one
    by everything keyed on them (the rules, the rollups' GPU records). ``ValueError``: an
    inventory's ``__post_init__`` raises it, which msgspec reports as the message's
    ``ValidationError``; :func:`decode_sample` refuses a sample with it (both reason
    ``invalid``)."""
    n = len(gpus)
    if n < 2 or (len({g.index for g in gpus}) == n and len({g.uuid for g in gpus}) == n):
        return  # every sample: two set sizes, ~0.7 us for 8 GPUs
    for field in ("index", "uuid"):
        seen: set[object] = set()
        for g in gpus:
            value = getattr(g, field)
            if value in seen:
                raise ValueError(f"two GPUs with {field} {value!r} in `$.gpus`")
            seen.add(value)


class Sample(_Struct, frozen=True):
    """One node at one tick: the payload of ``capwatch/v1/nodes/<node>/sample``.

    ``node`` matches :data:`NODE_ID_PATTERN`: :func:`decode_sample` checks it, not msgspec
    (see :class:`_KnownUuids`)."""

    v: Literal[1]
    node: str
    ts: Timestamp
    """Wall-clock time of the sample, Unix seconds. (node, ts) identifies a sample."""
    seq: Count
    """Per-agent-process counter, so a gap shows lost samples."""
    interval_s: Annotated[float, msgspec.Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)]
    cpu: CpuStats
    mem: MemStats
    epoch: Count | None = None
    """The agent's boot counter (one more at each start; ``seq`` restarts at 0 with it):
    a jump in ``seq`` within one epoch is a gap. ``None``: an agent before this field."""
    disks: Annotated[tuple[DiskStats, ...], msgspec.Meta(max_length=MAX_DISKS)] = ()
    disk_io: DiskIoStats = msgspec.field(default_factory=DiskIoStats)
    net: NetStats = msgspec.field(default_factory=NetStats)
    cpu_power_w: CpuWatts | None = None
    """CPU package (+DRAM where exposed) power from RAPL; ``None`` when unreadable."""
    node_power_w: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_NODE_POWER_W)] | None = None
    """The whole node's input power (what its PSUs draw), from ``node_power_source``;
    ``None``: no source answered (or an agent before this field)."""
    node_power_source: Annotated[str, msgspec.Meta(pattern=NODE_POWER_SOURCE_PATTERN)] | None = None
    """Where ``node_power_w`` was read: ``dcmi``, ``redfish`` or ``hwmon``."""
    gpus: Annotated[tuple[GpuSample, ...], msgspec.Meta(max_length=MAX_GPUS)] = ()
    xids: Annotated[tuple[XidEvent, ...], msgspec.Meta(max_length=MAX_XIDS)] = ()
    jobs: Annotated[tuple[Job, ...], msgspec.Meta(max_length=MAX_JOBS)] = ()
    """The jobs the GPUs' processes belong to (``gpus[].processes[].job`` names them).
    Each GPU once (:func:`_one_each`): :func:`decode_sample` checks it."""


class GpuInfo(_Struct, frozen=True):
    """Static facts about one GPU."""

    index: GpuIndex
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_NAME_LEN)]
    uuid: GpuUuid
    serial: Annotated[str, msgspec.Meta(max_length=MAX_SERIAL_LEN)] | None = None
    pci_bus_id: Annotated[str, msgspec.Meta(pattern=PCI_BUS_ID_PATTERN)] | None = None
    power_limit_w: Watts | None = None
    mig_mode: bool | None = None
    mem_total_bytes: GpuBytes | None = None


class NicInfo(_Struct, frozen=True):
    """Static facts about one network interface."""

    name: NicName
    speed_mbps: Annotated[int, msgspec.Meta(ge=1, le=MAX_NIC_SPEED_MBPS)] | None = None
    mac: Annotated[str, msgspec.Meta(pattern=MAC_PATTERN)] | None = None
    model: ModelName | None = None
    """The adapter's vendor and device name (from its PCI ids); ``None``: not a PCI device,
    or an agent before this field."""
    up: bool | None = None
    """Link up (``operstate``) when the inventory was taken; ``None``: unknown."""


class CpuPackage(_Struct, frozen=True):
    """CPU packages (sockets) of one model."""

    model: Annotated[str, msgspec.Meta(max_length=MAX_MODEL_NAME_LEN)]
    sockets: Annotated[int, msgspec.Meta(ge=1, le=MAX_CPU_PACKAGES)]


PciId = Annotated[int, msgspec.Meta(ge=0, le=MAX_PCI_ID)]


class AcceleratorInfo(_Struct, frozen=True):
    """A GPU or accelerator on the PCI bus that NVML does not report (another vendor's, or an
    NVIDIA one NVML lost)."""

    vendor_id: PciId
    device_id: PciId
    name: ModelName
    """Vendor and device name, or ``"<vendor>:<device>"`` in hex when the agent cannot name it."""
    pci_bus_id: Annotated[str, msgspec.Meta(pattern=PCI_BUS_ID_PATTERN)] | None = None
    pci_class: Annotated[int, msgspec.Meta(ge=0, le=MAX_PCI_CLASS)] | None = None


class Inventory(_Struct, frozen=True):
    """Retained payload of ``capwatch/v1/nodes/<node>/inventory``."""

    v: Literal[1]
    node: NodeId
    ts: Timestamp
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HOSTNAME_LEN)]
    agent_version: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_VERSION_LEN)]
    cpu_model: Annotated[str, msgspec.Meta(max_length=MAX_MODEL_NAME_LEN)]
    cpu_count: CpuCount
    cpu_cores: CpuCount | None
    mem_total_bytes: Bytes
    gpus: Annotated[list[GpuInfo], msgspec.Meta(max_length=MAX_GPUS)] = msgspec.field(
        default_factory=list
    )
    gpu_driver: Annotated[str, msgspec.Meta(max_length=MAX_VERSION_LEN)] | None = None
    gpu_status: Annotated[str, msgspec.Meta(pattern=GPU_STATUS_PATTERN)] = "ok"
    """``ok`` or why there are no GPUs (``no_driver``, ``no_library``, ...)."""
    nics: Annotated[list[NicInfo], msgspec.Meta(max_length=MAX_NICS)] = msgspec.field(
        default_factory=list
    )
    # What pools are made of (optional: agents before these fields still validate).
    cpus: Annotated[list[CpuPackage], msgspec.Meta(max_length=MAX_CPU_PACKAGES)] = msgspec.field(
        default_factory=list
    )
    """CPU packages per model; empty from an agent before this field (then ``cpu_model``)."""
    mem_installed_bytes: Bytes | None = None
    """Installed memory (sum of the DIMMs the kernel's EDAC reports); ``mem_total_bytes`` is
    what the kernel manages, a few percent less. ``None``: unreadable."""
    mem_dimms: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMMS)] | None = None
    """Populated memory modules, where readable."""
    accelerators: Annotated[list[AcceleratorInfo], msgspec.Meta(max_length=MAX_ACCELERATORS)] = (
        msgspec.field(default_factory=list)
    )
    metrics_address: Annotated[str, msgspec.Meta(pattern=METRICS_ADDRESS_PATTERN)] | None = None
    """Where the agent serves ``/metrics``, ``HOST:PORT`` (``--metrics-advertise``); the
    collector's Prometheus service discovery (``/sd``) lists it. ``None``: no /metrics."""

    def __post_init__(self) -> None:
        _one_each(self.gpus)


class NodeStatus(_Struct, frozen=True):
    """Retained payload of ``capwatch/v1/nodes/<node>/status``; the broker's will sends offline."""

    v: Literal[1]
    node: NodeId
    status: Literal["online", "offline"]
    ts: Timestamp | None = None


class Watermark(_Struct, frozen=True):
    """Retained payload of ``capwatch/v1/watermarks/<node>``, written by the collector.

    Everything the node sent with an epoch below ``epoch``, and of ``epoch`` every ``seq``
    up to and including ``seq``, is in the store (committed): the agent may forget it.
    ``top`` is the highest ``seq`` of ``epoch`` stored; ``top > seq`` says samples between
    are missing (lost by the broker, or given up by the agent).
    """

    v: Literal[1]
    node: NodeId
    epoch: Count
    seq: Annotated[int, msgspec.Meta(ge=-1, le=MAX_COUNTER)]
    """-1: not even ``seq`` 0 of ``epoch`` is stored yet."""
    top: Count


_encoder = msgspec.json.Encoder()
_sample_decoder = msgspec.json.Decoder(Sample)
_inventory_decoder = msgspec.json.Decoder(Inventory)
_status_decoder = msgspec.json.Decoder(NodeStatus)
_watermark_decoder = msgspec.json.Decoder(Watermark)


def encode(obj: Sample | Inventory | NodeStatus | Watermark) -> bytes:
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
    except RecursionError as exc:
        # JSON nested ~1,000 deep (in a field we would ignore) exhausts msgspec's recursion.
        raise SchemaError("JSON nested too deeply", reason="not_json") from exc


_GPU_UUID_RE: Final = re.compile(GPU_UUID_PATTERN)
_UUIDS_KEPT: Final = 9 << 14
"""Nodes and UUIDs :data:`_known_uuids` holds at most, a node counting one beside its UUIDs
(then it starts again, empty): a fleet of 16,384 8-GPU nodes; ~21 MB at worst (invented
63-character node names with one 52-character UUID each, or none: 21.2 and 20.4 MB held at
most over 200,000 such samples, ``bench/bench_known_caches.py``). A sample's node is held
before the ingest compares it with its topic's (:mod:`collector.ingest.validate`): a node
sending GPU-less samples under invented names adds a name a message, which counting UUIDs
alone never bounded."""


class _KnownUuids:
    """Each node's GPU UUIDs in the last sample :func:`decode_sample` returned (each matched
    :data:`GPU_UUID_PATTERN`), by the node it named (which matched :data:`NODE_ID_PATTERN`),
    and how many nodes and UUIDs that is in all (:data:`_UUIDS_KEPT`).

    A node's GPUs are the same from one sample to the next: a sample that names its node's
    UUIDs again is not matched against the pattern again, nor is a node name held here.
    msgspec's ``pattern`` on the fields searched each of them in each sample, ~4,700
    instructions a string (42,000 of the ~180,000 an 8-GPU sample's decode took,
    ``bench/bench_validate.py --callgrind --steps``); a dict lookup and comparing equal
    strings are a few dozen. The strings kept are the newest sample's, which the collector's
    live view holds anyway."""

    __slots__ = ("by_node", "count")

    def __init__(self) -> None:
        self.by_node: dict[str, tuple[str, ...]] = {}
        self.count = 0


_known_uuids: Final = _KnownUuids()

_TEXT_KEPT: Final = 1 << 15
"""Strings :data:`_known_text` holds at most of each kind (then that kind starts again,
empty): the users, job ids and pod names of a large fleet's running jobs; ~31 MB at worst
for the three sets (64-character users of 4-byte characters, 64-character ids, 253-character
Kubernetes names: 30.8 MB held at most over 200,000 such samples,
``bench/bench_known_caches.py``)."""
_USER_RE: Final = re.compile(USER_PATTERN)
_JOB_ID_RE: Final = re.compile(JOB_ID_PATTERN)
_K8S_NAME_RE: Final = re.compile(K8S_NAME_PATTERN)


class _KnownText:
    """The process users, job ids (and steps, accounts, partitions) and Kubernetes names
    that matched their pattern in samples :func:`decode_sample` returned lately, a set of
    each kind (:data:`_TEXT_KEPT`).

    A node's jobs run for hours, on the same GPUs under the same user: a sample names the
    strings its last one did. msgspec's ``pattern`` on these fields searched each of them in
    each sample: an 8-GPU sample of a Slurm node (a process a GPU with its user, job and
    step, one job with its account and partition) decoded in 22.2 us against 8.5 us
    without them (27 searches); a set lookup is a few dozen instructions."""

    __slots__ = ("ids", "k8s", "users")

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.ids: set[str] = set()
        self.k8s: set[str] = set()


_known_text: Final = _KnownText()


def _match(value: str, known: set[str], regex: re.Pattern[str], path: str) -> None:
    """``value`` (not in ``known``) checked against ``regex``, as msgspec checked it (its
    words, at ``path``), then kept in ``known``."""
    if regex.search(value) is None:
        raise SchemaError(
            f"Expected `str` matching regex {regex.pattern!r} - at `$.{path}`", reason="invalid"
        )
    if len(known) >= _TEXT_KEPT:
        known.clear()
    known.add(value)


def _check_jobs(sample: Sample) -> None:
    """The strings of ``sample``'s processes and jobs match their patterns
    (:class:`_KnownText`), in the order msgspec met them: the GPUs' processes, then the
    jobs."""
    known = _known_text
    users, ids, k8s = known.users, known.ids, known.k8s
    for i, g in enumerate(sample.gpus):
        processes = g.processes
        if not processes:  # most GPUs of most samples: no enumerate made
            continue
        for j, p in enumerate(processes):
            user, job, step, container = p.user, p.job, p.step, p.container
            if user is not None and user not in users:
                _match(user, users, _USER_RE, f"gpus[{i}].processes[{j}].user")
            if job is not None and job not in ids:
                _match(job, ids, _JOB_ID_RE, f"gpus[{i}].processes[{j}].job")
            if step is not None and step not in ids:
                _match(step, ids, _JOB_ID_RE, f"gpus[{i}].processes[{j}].step")
            if container is not None and container not in k8s:
                _match(container, k8s, _K8S_NAME_RE, f"gpus[{i}].processes[{j}].container")
    jobs = sample.jobs
    if not jobs:
        return
    for i, job_ in enumerate(jobs):
        for name, value, known_, regex in (
            ("id", job_.id, ids, _JOB_ID_RE),
            ("account", job_.account, ids, _JOB_ID_RE),
            ("partition", job_.partition, ids, _JOB_ID_RE),
            ("namespace", job_.namespace, k8s, _K8S_NAME_RE),
            ("name", job_.name, k8s, _K8S_NAME_RE),
        ):
            if value is not None and value not in known_:
                _match(value, known_, regex, f"jobs[{i}].{name}")


def decode_sample(payload: bytes | bytearray | memoryview) -> Sample:
    """Decode and validate a sample; raise :class:`SchemaError` naming the bad field."""
    sample = _decode(_sample_decoder, payload)
    gpus = sample.gpus
    uuids = tuple([g.uuid for g in gpus])
    known = _known_uuids
    by_node = known.by_node
    node = sample.node
    held = by_node.get(node)
    if held is None and NODE_ID_RE.search(node) is None:  # a node known is a name that matched
        raise SchemaError(
            f"Expected `str` matching regex {NODE_ID_PATTERN!r} - at `$.node`", reason="invalid"
        )
    new = held != uuids
    if new:
        for i, uuid in enumerate(uuids):
            if _GPU_UUID_RE.search(uuid) is None:  # msgspec's check, and its words
                raise SchemaError(
                    f"Expected `str` matching regex {GPU_UUID_PATTERN!r} - at `$.gpus[{i}].uuid`",
                    reason="invalid",
                )
    _check_jobs(sample)
    n = len(uuids)
    # Each GPU once (_one_each): the UUIDs held are their node's last sample's, distinct.
    if n > 1 and (len({g.index for g in gpus}) < n or (new and len(set(uuids)) < n)):
        try:
            _one_each(gpus)
        except ValueError as exc:
            raise SchemaError(str(exc), reason="invalid") from exc
    if new:
        count = known.count + 1 + len(uuids) - (0 if held is None else 1 + len(held))
        if count > _UUIDS_KEPT:  # invented node names: checked again, never more than this
            by_node.clear()
            count = 1 + len(uuids)
        known.count = count
    by_node[node] = uuids
    return sample


def decode_inventory(payload: bytes | bytearray | memoryview) -> Inventory:
    """Decode and validate an inventory message."""
    return _decode(_inventory_decoder, payload)


def decode_status(payload: bytes | bytearray | memoryview) -> NodeStatus:
    """Decode and validate a status message."""
    return _decode(_status_decoder, payload)


def decode_watermark(payload: bytes | bytearray | memoryview) -> Watermark:
    """Decode and validate a watermark message."""
    return _decode(_watermark_decoder, payload)
