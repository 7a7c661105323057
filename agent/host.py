"""Host metrics read from procfs and sysfs: CPU, memory, filesystems, disk and network I/O.

The counters come straight from ``proc_root`` (``stat``, ``loadavg``, ``meminfo``,
``diskstats``, ``net/dev``, ``self/mounts``) and ``sysfs_root``: the same files psutil reads,
but psutil can only be pointed at a test fixture through its module-global ``PROCFS_PATH``,
and its equivalent calls cost more CPU than this whole sampler (bench/bench_agent.py). Rates
follow :mod:`agent.rates`: deltas over the monotonic clock, ``None`` on the first sample and
after a reset.

Only physical disks and network interfaces are counted, so traffic is not counted twice
(a bridge and its ports, a bond and its members, both ends of a veth pair): see
:class:`NicFilter` for the interfaces.

Every value is kept inside the wire schema's range (:mod:`agent.bounds`): an impossible rate
(a counter that jumped) is ``None``, a required figure is clamped, lists keep their first
``MAX_*`` entries, and a filesystem or interface whose name does not fit is left out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Final, cast

from agent.bounds import Bounds
from agent.rates import KeyedCounterRate
from agent.sysfs import read_int, read_lines, read_text
from shared.clock import Clock
from shared.logging import get_logger
from shared.schema import (
    MAC_PATTERN,
    MAX_COUNTER,
    MAX_CPUS,
    MAX_DEVICE_BYTES_PER_S,
    MAX_DISKS,
    MAX_FS_BYTES,
    MAX_FSTYPE_LEN,
    MAX_HOST_MEM_BYTES,
    MAX_LOAD,
    MAX_MODEL_NAME_LEN,
    MAX_NIC_NAME_LEN,
    MAX_NIC_SPEED_MBPS,
    MAX_NICS,
    MAX_NODE_BYTES_PER_S,
    MAX_PATH_LEN,
    CpuStats,
    DiskIoStats,
    DiskStats,
    MemStats,
    NetStats,
    NicInfo,
    NicStats,
)

__all__ = ["HostInfo", "HostSample", "HostSampler", "NicFilter"]

_REFRESH_S = 60.0
"""Mounts and the set of physical disks change rarely: re-read them this often."""

_IMAGE_FSTYPES = frozenset({"squashfs", "iso9660", "erofs", "udf"})
"""Read-only images (snaps, container layers): always 100% full, so never worth reporting."""

_SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size

_MAC_RE: Final = re.compile(MAC_PATTERN)


@dataclass(frozen=True, slots=True)
class HostSample:
    """The host part of one sample."""

    cpu: CpuStats
    mem: MemStats
    disks: list[DiskStats]
    disk_io: DiskIoStats
    net: NetStats


@dataclass(frozen=True, slots=True)
class HostInfo:
    """Static facts about the host, for the inventory."""

    cpu_model: str
    cpu_count: int
    cpu_cores: int | None
    mem_total_bytes: int
    nics: list[NicInfo]


_CpuTicks = tuple[int, int]  # (busy, total) in USER_HZ ticks


@dataclass(frozen=True, slots=True)
class NicFilter:
    """Which network interfaces count, in the totals, the per-NIC list and the inventory.

    By default the physical ones: those with a ``device`` link in
    ``/sys/class/net/<name>/``. Bridges, bonds, VLANs, veths, tunnels and ``ifb`` have
    none, and their traffic already passed through a physical interface. ``include`` globs
    (``bond*``) add virtual interfaces on purpose (then ``exclude`` the members, e.g.
    ``eth*``, or the traffic counts twice); ``exclude`` globs drop any interface and win
    over ``include``. ``lo`` never counts.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def counts(self, name: str, *, physical: bool) -> bool:
        """Whether interface ``name`` counts (``physical``: it has a ``device`` link)."""
        if name == "lo" or any(fnmatchcase(name, pattern) for pattern in self.exclude):
            return False
        return physical or any(fnmatchcase(name, pattern) for pattern in self.include)


class HostSampler:
    """Samples the host's counters; keeps the previous readings to turn them into rates.

    Not thread-safe: one call at a time (the service awaits each ``to_thread`` call in turn).
    """

    def __init__(
        self,
        clock: Clock,
        proc_root: Path = Path("/proc"),
        *,
        sysfs_root: Path = Path("/sys"),
        nic_filter: NicFilter | None = None,
    ) -> None:
        self._clock = clock
        self._bounds = Bounds(clock, get_logger("agent.host"))
        self._proc_root = proc_root
        self._sysfs_root = sysfs_root
        self._nic_filter = nic_filter if nic_filter is not None else NicFilter()
        self._net_class = str(sysfs_root / "class" / "net")
        self._nic_counts: dict[str, bool] = {}
        """Decision per interface name; cleared at each refresh (renames, hot-plug)."""
        self._stat_path = str(proc_root / "stat")
        self._loadavg_path = str(proc_root / "loadavg")
        self._meminfo_path = str(proc_root / "meminfo")
        self._diskstats_path = str(proc_root / "diskstats")
        self._netdev_path = str(proc_root / "net" / "dev")

        self._prev_cpu: _CpuTicks | None = None
        self._prev_cores: tuple[list[bytes], list[_CpuTicks]] | None = None
        self._disk_read = KeyedCounterRate[str]()
        self._disk_write = KeyedCounterRate[str]()
        self._net_rx = KeyedCounterRate[str]()
        self._net_tx = KeyedCounterRate[str]()

        self._refresh_due = float("-inf")
        self._mounts: list[tuple[str, str, str]] = []  # (device, mount point, fstype)
        self._physical_disks: frozenset[str] = frozenset()

    @property
    def proc_root(self) -> Path:
        """Where procfs is read from."""
        return self._proc_root

    @property
    def sysfs_root(self) -> Path:
        """Where sysfs is read from."""
        return self._sysfs_root

    def info(self) -> HostInfo:
        """Read the static facts: CPU model and counts, memory size, network interfaces."""
        b = self._bounds
        _, cores, _ = _read_stat(self._stat_path)
        mem_total = _read_meminfo(self._meminfo_path).get(b"MemTotal", 0) * 1024
        names = list(_read_netdev(self._netdev_path, self._counts))
        return HostInfo(
            cpu_model=b.text(
                _cpu_model(self._proc_root / "cpuinfo"), "cpu_model", MAX_MODEL_NAME_LEN
            ),
            cpu_count=b.clamped(len(cores), "cpu_count", MAX_CPUS, 1),
            cpu_cores=b.optional_int(
                _physical_cores(self._sysfs_root / "devices" / "system" / "cpu"),
                "cpu_cores",
                MAX_CPUS,
                1,
            ),
            mem_total_bytes=b.clamped(mem_total, "mem_total_bytes", MAX_HOST_MEM_BYTES, 0),
            nics=[self._nic_info(name) for name in b.first(names, "nics", MAX_NICS)],
        )

    def sample(self) -> HostSample:
        """Read every counter once and return the host part of a sample."""
        now = self._clock.monotonic()
        if now >= self._refresh_due:
            self._refresh(now)
        return HostSample(
            cpu=self._cpu(),
            mem=self._mem(),
            disks=self._disks(),
            disk_io=self._disk_io(now),
            net=self._net(now),
        )

    def _counts(self, name: str) -> bool:
        """Whether NIC ``name`` counts; sysfs is asked once per name and refresh."""
        counts = self._nic_counts.get(name)
        if counts is None:
            if self._bounds.name(name, "nics[].name", MAX_NIC_NAME_LEN) is None:
                counts = False  # not a name the schema takes (IFNAMSIZ): leave it out
            else:
                physical = os.path.exists(f"{self._net_class}/{name}/device")
                counts = self._nic_filter.counts(name, physical=physical)
            self._nic_counts[name] = counts
        return counts

    def _refresh(self, now: float) -> None:
        self._refresh_due = now + _REFRESH_S
        self._nic_counts = {}  # also forgets the veths of containers gone since
        b = self._bounds
        self._mounts = []
        for device, mount, fstype in _physical_mounts(self._proc_root):
            # A path cut to fit, or one not UTF-8 with its bytes replaced, would name another
            # file: such a filesystem is left out.
            if not _utf8(device) or not _utf8(mount):
                b.rejected("disks[].mount", _replaced(f"{device} {mount}"))
            elif (
                b.name(device, "disks[].device", MAX_PATH_LEN) is not None
                and b.name(mount, "disks[].mount", MAX_PATH_LEN) is not None
            ):
                self._mounts.append(
                    (device, mount, b.text(fstype, "disks[].fstype", MAX_FSTYPE_LEN))
                )
        block = self._sysfs_root / "block"
        try:
            names = os.listdir(block)
        except FileNotFoundError:
            names = []
        # dm-*, md*, loop*, zram* have no `device` link; counting them would count I/O twice.
        self._physical_disks = frozenset(n for n in names if (block / n / "device").exists())

    def _cpu(self) -> CpuStats:
        total, cores, names = _read_stat(self._stat_path)
        prev, self._prev_cpu = self._prev_cpu, total
        pct = None if prev is None else _busy_pct(prev, total)
        per_core: list[float] | None = None
        prev_cores, self._prev_cores = self._prev_cores, (names, cores)
        # A CPU that went on- or offline changes the list: skip that interval.
        if prev_cores is not None and prev_cores[0] == names:
            pcts = list(map(_busy_pct, prev_cores[1], cores))
            per_core = None if None in pcts else cast("list[float]", pcts)
        with open(self._loadavg_path, "rb") as f:
            load = f.read().split(maxsplit=3)
        b = self._bounds
        if per_core is not None:
            per_core = b.first(per_core, "cpu.per_core_pct", MAX_CPUS)
        return CpuStats(
            count=b.clamped(len(cores), "cpu.count", MAX_CPUS, 1),
            pct=pct,
            per_core_pct=None if per_core is None else tuple(per_core),
            load1=b.clamped(float(load[0]), "cpu.load1", MAX_LOAD, 0.0),
            load5=b.clamped(float(load[1]), "cpu.load5", MAX_LOAD, 0.0),
            load15=b.clamped(float(load[2]), "cpu.load15", MAX_LOAD, 0.0),
        )

    def _mem(self) -> MemStats:
        info = _read_meminfo(self._meminfo_path)
        b = self._bounds
        total = b.clamped(info.get(b"MemTotal", 0) * 1024, "mem.total_bytes", MAX_HOST_MEM_BYTES, 0)
        if b"MemAvailable" in info:
            available = info[b"MemAvailable"] * 1024
        else:  # kernels before 3.14
            available = sum(info.get(k, 0) for k in (b"MemFree", b"Buffers", b"Cached")) * 1024
        # Within [0, total] whatever the file says: used and available then are too.
        available = min(max(available, 0), total)
        swap_total = b.clamped(
            info.get(b"SwapTotal", 0) * 1024, "mem.swap_total_bytes", MAX_HOST_MEM_BYTES, 0
        )
        swap_free = min(max(info.get(b"SwapFree", 0) * 1024, 0), swap_total)
        # "used" is what cannot be reclaimed (free(1) since procps-ng 4.0.1): total - available.
        return MemStats(
            total_bytes=total,
            used_bytes=total - available,
            available_bytes=available,
            swap_total_bytes=swap_total,
            swap_used_bytes=swap_total - swap_free,
        )

    def _disks(self) -> list[DiskStats]:
        disks: list[DiskStats] = []
        mounts = self._mounts
        for n, (device, mount, fstype) in enumerate(mounts):
            if len(disks) == MAX_DISKS:
                # Not even statvfs'd: a node with thousands of mounts stays cheap to sample.
                self._bounds.truncated("disks", kept=MAX_DISKS, dropped=len(mounts) - n)
                break
            try:
                st = os.statvfs(mount)
            except OSError:
                continue  # unmounted since the last refresh, or unreadable
            if st.f_blocks == 0:
                continue
            total = st.f_blocks * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            if not (0 <= used <= total <= MAX_FS_BYTES):  # both required: the disk goes
                self._bounds.rejected("disks[].total_bytes", (mount, total, used))
                continue
            disks.append(
                DiskStats(
                    mount=mount, device=device, fstype=fstype, total_bytes=total, used_bytes=used
                )
            )
        return disks

    def _disk_io(self, now: float) -> DiskIoStats:
        reads: dict[str, int] = {}
        writes: dict[str, int] = {}
        physical = self._physical_disks
        with open(self._diskstats_path, "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 10:
                    continue
                name = fields[2].decode()
                if name in physical:
                    reads[name] = int(fields[5]) * _SECTOR_BYTES
                    writes[name] = int(fields[9]) * _SECTOR_BYTES
        b = self._bounds
        return DiskIoStats(
            # One disk's counter jump makes the node's total unknown for that interval.
            read_bytes_per_s=b.optional(
                _sum_known(self._disk_read.update(reads, now).values()),
                "disk_io.read_bytes_per_s",
                MAX_NODE_BYTES_PER_S,
            ),
            write_bytes_per_s=b.optional(
                _sum_known(self._disk_write.update(writes, now).values()),
                "disk_io.write_bytes_per_s",
                MAX_NODE_BYTES_PER_S,
            ),
        )

    def _net(self, now: float) -> NetStats:
        b = self._bounds
        counters = _read_netdev(self._netdev_path, self._counts)
        rx_rates = self._net_rx.update({n: c[0] for n, c in counters.items()}, now)
        tx_rates = self._net_tx.update({n: c[1] for n, c in counters.items()}, now)
        nics: list[NicStats] = []
        # The totals count every interface, also those past the list's MAX_NICS, but only
        # the rates that passed their check: a counter jump on one NIC is that NIC's None.
        rx_known: list[float] = []
        tx_known: list[float] = []
        for name, (_, _, rx_errors, tx_errors, rx_drops, tx_drops) in counters.items():
            rx, tx = rx_rates[name], tx_rates[name]
            if rx is not None:
                rx = b.optional(round(rx, 1), "net.nics[].rx_bytes_per_s", MAX_DEVICE_BYTES_PER_S)
                if rx is not None:
                    rx_known.append(rx)
            if tx is not None:
                tx = b.optional(round(tx, 1), "net.nics[].tx_bytes_per_s", MAX_DEVICE_BYTES_PER_S)
                if tx is not None:
                    tx_known.append(tx)
            if len(nics) == MAX_NICS:
                continue
            nics.append(
                NicStats(
                    name=name,
                    rx_bytes_per_s=rx,
                    tx_bytes_per_s=tx,
                    # Kernel counters are u64; past 2**53 - 1 they saturate there.
                    rx_errors=b.clamped(rx_errors, "net.nics[].rx_errors", MAX_COUNTER, 0),
                    tx_errors=b.clamped(tx_errors, "net.nics[].tx_errors", MAX_COUNTER, 0),
                    rx_drops=b.clamped(rx_drops, "net.nics[].rx_drops", MAX_COUNTER, 0),
                    tx_drops=b.clamped(tx_drops, "net.nics[].tx_drops", MAX_COUNTER, 0),
                )
            )
        if len(counters) > MAX_NICS:
            b.truncated("net.nics", kept=MAX_NICS, dropped=len(counters) - MAX_NICS)
        return NetStats(
            rx_bytes_per_s=b.optional(
                _sum_known(rx_known), "net.rx_bytes_per_s", MAX_NODE_BYTES_PER_S
            ),
            tx_bytes_per_s=b.optional(
                _sum_known(tx_known), "net.tx_bytes_per_s", MAX_NODE_BYTES_PER_S
            ),
            nics=tuple(nics),
        )

    def _nic_info(self, name: str) -> NicInfo:
        net = self._sysfs_root / "class" / "net" / name
        speed = read_int(net / "speed")  # EINVAL while the link is down; -1 when unknown
        mac = read_text(net / "address")
        b = self._bounds
        return NicInfo(
            name=name,
            speed_mbps=(
                b.optional_int(speed, "nics[].speed_mbps", MAX_NIC_SPEED_MBPS, 1)
                if speed is not None and speed > 0
                else None
            ),
            mac=b.matching(mac, "nics[].mac", _MAC_RE) if mac and mac.strip("0:") else None,
        )


def _busy_pct(before: _CpuTicks, after: _CpuTicks) -> float | None:
    total = after[1] - before[1]
    if total <= 0:
        return None
    # iowait can go backwards on tickless kernels, so clamp to the schema's range.
    return round(min(100.0, max(0.0, 100.0 * (after[0] - before[0]) / total)), 1)


def _sum_known(rates: Iterable[float | None]) -> float | None:
    """Sum the known rates; ``None`` when none is known (first sample).

    A NIC or disk that just appeared has no rate yet and is left out of that interval's
    total, so container churn (veth pairs) does not blank the node's totals.
    """
    known = [r for r in rates if r is not None]
    return round(sum(known), 1) if known else None


def _read_stat(path: str) -> tuple[_CpuTicks, list[_CpuTicks], list[bytes]]:
    """Aggregate and per-CPU (busy, total) ticks, and the per-CPU line names."""
    total: _CpuTicks = (0, 0)
    cores: list[_CpuTicks] = []
    names: list[bytes] = []
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n"):
        if not line.startswith(b"cpu"):
            break  # the cpu lines come first
        fields = line.split()
        # user nice system idle iowait irq softirq steal; guest time is already in user/nice.
        ticks = list(map(int, fields[1:9]))
        all_ticks = sum(ticks)
        busy = all_ticks - ticks[3] - ticks[4]
        if fields[0] == b"cpu":
            total = (busy, all_ticks)
        else:
            cores.append((busy, all_ticks))
            names.append(fields[0])
    return total, cores, names


def _read_meminfo(path: str) -> dict[bytes, int]:
    """``/proc/meminfo`` as numbers in the file's unit (kB for the fields used here)."""
    out: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            value = rest.split(maxsplit=1)
            if value:
                out[key] = int(value[0])
    return out


def _read_netdev(
    path: str, counts: Callable[[str], bool]
) -> dict[str, tuple[int, int, int, int, int, int]]:
    """Interfaces that ``counts``: (rx_bytes, tx_bytes, rx_errs, tx_errs, rx_drop, tx_drop)."""
    out: dict[str, tuple[int, int, int, int, int, int]] = {}
    with open(path, "rb") as f:
        for line in f:
            raw, sep, rest = line.partition(b":")
            if not sep:
                continue  # the two header lines
            name = raw.strip().decode()
            if not counts(name):
                continue
            v = rest.split()
            rx, tx = int(v[0]), int(v[8])
            out[name] = (rx, tx, int(v[2]), int(v[10]), int(v[3]), int(v[11]))
    return out


def _unescape_mount(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
    if "\\" not in field:
        return field
    for esc, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(esc, char)
    return field


def _utf8(path: str) -> bool:
    """Whether ``path``, read with ``surrogateescape``, was UTF-8 (the wire's text)."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


def _replaced(path: str) -> str:
    """``path`` for a log line: its bytes that are not UTF-8 as U+FFFD."""
    return path.encode(errors="surrogateescape").decode(errors="replace")


def _physical_mounts(proc_root: Path) -> list[tuple[str, str, str]]:
    """Mounted block-device filesystems, one per device (bind mounts and subvolumes skipped)."""
    physical = {"zfs"}  # zfs is "nodev" in /proc/filesystems but holds real data
    for line in (proc_root / "filesystems").read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) == 1:
            physical.add(fields[0])
    physical -= _IMAGE_FSTYPES
    seen: set[str] = set()
    mounts = []
    # Paths' bytes kept as they are (os.fsdecode's way): the caller leaves out one not UTF-8
    mounts_text = (proc_root / "self" / "mounts").read_text("utf-8", errors="surrogateescape")
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount, fstype = fields[0], _unescape_mount(fields[1]), fields[2]
        if fstype not in physical or device in seen or device.startswith("/dev/loop"):
            continue
        seen.add(device)
        mounts.append((device, mount, fstype))
    return mounts


def _cpu_model(cpuinfo: Path) -> str:
    for line in (read_lines(cpuinfo) or "").splitlines():
        key, sep, value = line.partition(":")
        # x86 says "model name"; arm64 says nothing useful except on some kernels "Model name".
        if sep and key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def _physical_cores(cpu_dir: Path) -> int | None:
    """Distinct sibling sets = physical cores (what psutil does; works on x86 and arm64)."""
    siblings = set()
    for topology in cpu_dir.glob("cpu[0-9]*/topology"):
        text = read_text(topology / "core_cpus_list") or read_text(
            topology / "thread_siblings_list"
        )
        if text:
            siblings.add(text)
    return len(siblings) or None
