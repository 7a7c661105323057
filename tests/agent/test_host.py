"""HostSampler over a fake procfs/sysfs tree (exact values) and over the real machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from agent.host import HostSampler, NicFilter
from shared.clock import FakeClock, SystemClock

_NETDEV_HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|"
    "bytes    packets errs drop fifo colls carrier compressed\n"
)


class FakeHost:
    """A procfs and sysfs tree under ``root`` whose counters a test moves, then :meth:`write`.

    Starts as a 4-CPU (2 cores x 2 threads) node with disk ``vda`` (plus a partition, a loop
    device and a device-mapper volume that must not be counted), NICs ``lo`` and ``eth0``.
    NICs named in :attr:`physical_nics` get a ``device`` link in sysfs, the others none.
    """

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.data = root / "data"
        self.data.mkdir(parents=True)
        # name -> user nice system idle iowait irq softirq steal guest guest_nice
        self.cpus: dict[str, list[int]] = {
            f"cpu{i}": [1000, 0, 0, 9000, 0, 0, 0, 0, 0, 0] for i in range(4)
        }
        self.loadavg = "0.50 1.25 2.00 2/345 6789"
        self.meminfo = {
            "MemTotal": 16_000_000,
            "MemFree": 2_000_000,
            "MemAvailable": 12_000_000,
            "Buffers": 100_000,
            "Cached": 5_000_000,
            "SwapTotal": 4_000_000,
            "SwapFree": 3_000_000,
        }
        # name -> (sectors read, sectors written)
        self.disks: dict[str, tuple[int, int]] = {
            "vda": (1000, 2000),
            "vda1": (900, 1900),
            "loop0": (50, 0),
            "dm-0": (800, 1800),
        }
        # name -> (rx_bytes, tx_bytes, rx_errs, tx_errs, rx_drop, tx_drop)
        self.nics: dict[str, tuple[int, int, int, int, int, int]] = {
            "lo": (5000, 5000, 0, 0, 0, 0),
            "eth0": (1_000_000, 2_000_000, 3, 4, 5, 6),
        }
        self.physical_nics = {"eth0"}
        self.filesystems = ["nodev\tsysfs", "nodev\tproc", "nodev\ttmpfs", "\text4", "\tsquashfs"]
        self.mounts = [
            "proc /proc proc rw 0 0",
            f"/dev/vda {self.data} ext4 rw,relatime 0 0",
            f"/dev/vda {self.data}/bind ext4 rw,relatime 0 0",  # bind mount: same device
            "tmpfs /run tmpfs rw 0 0",
            f"/dev/loop0 {self.data} squashfs ro 0 0",
            f"/dev/loop1 {self.data} ext4 ro 0 0",
        ]
        self.cpuinfo = "".join(
            f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C\n\n" for i in range(4)
        )
        self._write_sysfs()
        self.write()

    def _write_sysfs(self) -> None:
        block = self.sys / "block"
        (block / "vda" / "device").mkdir(parents=True)
        (block / "loop0").mkdir()
        (block / "dm-0").mkdir()
        net = self.sys / "class" / "net"
        for name, speed, mac in (
            ("eth0", "100000", "0c:42:a1:00:00:01"),
            ("lo", "-1", "00:00:00:00:00:00"),
        ):
            (net / name).mkdir(parents=True)
            (net / name / "speed").write_text(speed + "\n")
            (net / name / "address").write_text(mac + "\n")
        for cpu, siblings in (("cpu0", "0,2"), ("cpu1", "1,3"), ("cpu2", "0,2"), ("cpu3", "1,3")):
            topology = self.sys / "devices" / "system" / "cpu" / cpu / "topology"
            topology.mkdir(parents=True)
            (topology / "core_cpus_list").write_text(siblings + "\n")

    def write(self) -> None:
        """Write the current counters to the tree."""
        (self.proc / "net").mkdir(parents=True, exist_ok=True)
        (self.proc / "self").mkdir(exist_ok=True)
        total = [sum(col) for col in zip(*self.cpus.values(), strict=True)]
        stat = ["cpu  " + " ".join(map(str, total))]
        stat += [f"{name} " + " ".join(map(str, ticks)) for name, ticks in self.cpus.items()]
        stat += ["intr 12345 0 0", "ctxt 67890", "btime 1700000000"]
        (self.proc / "stat").write_text("\n".join(stat) + "\n")
        (self.proc / "loadavg").write_text(self.loadavg + "\n")
        (self.proc / "meminfo").write_text(
            "".join(f"{k}:{v:>16} kB\n" for k, v in self.meminfo.items())
            + "HugePages_Total:       0\n"
        )
        (self.proc / "diskstats").write_text(
            "".join(
                f"   8       {i} {name} 10 0 {rd} 5 20 0 {wr} 7 0 12 12 0 0 0 0 0 0\n"
                for i, (name, (rd, wr)) in enumerate(self.disks.items())
            )
        )
        for name in self.nics:
            nic = self.sys / "class" / "net" / name
            nic.mkdir(parents=True, exist_ok=True)
            if name in self.physical_nics:
                (nic / "device").mkdir(exist_ok=True)
        (self.proc / "net" / "dev").write_text(
            _NETDEV_HEADER
            + "".join(
                f"{name:>6}: {rx} 10 {rxe} {rxd} 0 0 0 0 {tx} 20 {txe} {txd} 0 0 0 0\n"
                for name, (rx, tx, rxe, txe, rxd, txd) in self.nics.items()
            )
        )
        (self.proc / "filesystems").write_text("\n".join(self.filesystems) + "\n")
        (self.proc / "self" / "mounts").write_text("\n".join(self.mounts) + "\n")
        (self.proc / "cpuinfo").write_text(self.cpuinfo)

    def sampler(self, clock: FakeClock, nic_filter: NicFilter | None = None) -> HostSampler:
        """A HostSampler reading this tree."""
        return HostSampler(clock, proc_root=self.proc, sysfs_root=self.sys, nic_filter=nic_filter)


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    """A fresh fake host tree."""
    return FakeHost(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


def test_first_sample_has_no_rates(fake: FakeHost, clock: FakeClock) -> None:
    """Rates need two readings: the first sample reports them as None, not 0."""
    s = fake.sampler(clock).sample()
    assert s.cpu.pct is None
    assert s.cpu.per_core_pct is None
    assert s.disk_io.read_bytes_per_s is None
    assert s.disk_io.write_bytes_per_s is None
    assert s.net.rx_bytes_per_s is None
    assert s.net.tx_bytes_per_s is None
    assert [(n.name, n.rx_bytes_per_s, n.tx_bytes_per_s) for n in s.net.nics] == [
        ("eth0", None, None)
    ]


def test_cpu_percent_comes_from_tick_deltas(fake: FakeHost, clock: FakeClock) -> None:
    """Busy share of the ticks elapsed, per core and in total; iowait counts as idle."""
    host = fake.sampler(clock)
    host.sample()
    fake.cpus["cpu0"][0] += 100  # 100 busy of 100
    fake.cpus["cpu1"][0] += 25  # 25 busy, 75 idle
    fake.cpus["cpu1"][3] += 75
    fake.cpus["cpu2"][3] += 50  # idle and iowait only
    fake.cpus["cpu2"][4] += 50
    fake.cpus["cpu3"][2] += 10  # system and softirq are busy, steal too
    fake.cpus["cpu3"][6] += 10
    fake.cpus["cpu3"][7] += 10
    fake.cpus["cpu3"][3] += 70
    fake.write()
    clock.advance(5)
    cpu = host.sample().cpu
    assert cpu.per_core_pct == (100.0, 25.0, 0.0, 30.0)
    assert cpu.pct == 38.8  # 155 busy of 400 ticks
    assert cpu.count == 4
    assert (cpu.load1, cpu.load5, cpu.load15) == (0.5, 1.25, 2.0)


def test_cpu_going_offline_skips_per_core_interval(fake: FakeHost, clock: FakeClock) -> None:
    """When the set of online CPUs changes, per-core values are skipped for that interval."""
    host = fake.sampler(clock)
    host.sample()
    del fake.cpus["cpu3"]
    fake.cpus["cpu0"][0] += 100
    fake.cpus["cpu1"][3] += 100
    fake.cpus["cpu2"][3] += 100
    fake.write()
    clock.advance(5)
    cpu = host.sample().cpu
    assert cpu.per_core_pct is None
    assert cpu.count == 3
    fake.cpus["cpu0"][3] += 100
    fake.cpus["cpu1"][0] += 100
    fake.cpus["cpu2"][3] += 100
    fake.write()
    clock.advance(5)
    assert host.sample().cpu.per_core_pct == (0.0, 100.0, 0.0)


def test_memory_used_is_total_minus_available(fake: FakeHost, clock: FakeClock) -> None:
    """Memory in bytes; used = total - available; swap used = total - free."""
    mem = fake.sampler(clock).sample().mem
    assert mem.total_bytes == 16_000_000 * 1024
    assert mem.available_bytes == 12_000_000 * 1024
    assert mem.used_bytes == 4_000_000 * 1024
    assert mem.swap_total_bytes == 4_000_000 * 1024
    assert mem.swap_used_bytes == 1_000_000 * 1024


def test_disk_io_counts_physical_disks_only(fake: FakeHost, clock: FakeClock) -> None:
    """Bytes/s from 512-byte sectors of whole physical disks; partitions, loop, dm ignored."""
    host = fake.sampler(clock)
    host.sample()
    fake.disks = {
        "vda": (1000 + 4000, 2000 + 8000),
        "vda1": (900 + 4000, 1900 + 8000),
        "loop0": (50 + 99999, 0),
        "dm-0": (800 + 4000, 1800 + 8000),
    }
    fake.write()
    clock.advance(2)
    io = host.sample().disk_io
    assert io.read_bytes_per_s == 4000 * 512 / 2
    assert io.write_bytes_per_s == 8000 * 512 / 2


def test_network_rates_skip_loopback(fake: FakeHost, clock: FakeClock) -> None:
    """Per-NIC and total bytes/s over the monotonic interval; error and drop counters as is."""
    host = fake.sampler(clock)
    host.sample()
    fake.nics["lo"] = (9_000_000, 9_000_000, 0, 0, 0, 0)
    fake.nics["eth0"] = (1_000_000 + 500_000, 2_000_000 + 250_000, 3, 4, 5, 7)
    fake.write()
    clock.advance(5)
    net = host.sample().net
    assert net.rx_bytes_per_s == 100_000.0
    assert net.tx_bytes_per_s == 50_000.0
    (eth0,) = net.nics
    assert (eth0.name, eth0.rx_bytes_per_s, eth0.tx_bytes_per_s) == ("eth0", 100_000.0, 50_000.0)
    assert (eth0.rx_errors, eth0.tx_errors, eth0.rx_drops, eth0.tx_drops) == (3, 4, 5, 7)


def test_new_and_reset_interfaces_have_no_rate(fake: FakeHost, clock: FakeClock) -> None:
    """A NIC seen for the first time or whose counter went backwards has no rate that
    interval; the total sums the NICs whose rate is known."""
    host = fake.sampler(clock)
    host.sample()
    fake.nics["eth0"] = (1_000_000 + 10_000, 2_000_000 + 10_000, 0, 0, 0, 0)
    fake.nics["ib0"] = (7_000_000, 7_000_000, 0, 0, 0, 0)
    fake.physical_nics.add("ib0")
    fake.write()
    clock.advance(1)
    net = host.sample().net
    assert {n.name: n.rx_bytes_per_s for n in net.nics} == {"eth0": 10_000.0, "ib0": None}
    assert net.rx_bytes_per_s == 10_000.0

    fake.nics["eth0"] = (100, 100, 0, 0, 0, 0)  # driver reload: counters restart
    fake.nics["ib0"] = (7_000_000 + 3_000, 7_000_000 + 1_000, 0, 0, 0, 0)
    fake.write()
    clock.advance(1)
    net = host.sample().net
    assert {n.name: n.rx_bytes_per_s for n in net.nics} == {"eth0": None, "ib0": 3_000.0}
    assert net.tx_bytes_per_s == 1_000.0


def _container_host(fake: FakeHost) -> None:
    """eth0 and eth1 physical (eth1 a bond member), plus a bond, a bridge and a veth."""
    fake.nics.update(
        {
            "eth1": (5_000_000, 6_000_000, 0, 0, 0, 0),
            "bond0": (6_000_000, 8_000_000, 0, 0, 0, 0),
            "docker0": (1_000, 1_000, 0, 0, 0, 0),
            "veth1a2b3c": (1_000, 1_000, 0, 0, 0, 0),
        }
    )
    fake.physical_nics.add("eth1")
    fake.write()


def _step_all_nics(fake: FakeHost, clock: FakeClock, rx_bytes: int) -> None:
    fake.nics = {name: (c[0] + rx_bytes, c[1], *c[2:]) for name, c in fake.nics.items()}
    fake.write()
    clock.advance(1)


def test_virtual_interfaces_are_left_out_by_default(fake: FakeHost, clock: FakeClock) -> None:
    """Bonds, bridges and veths have no device link: not in the totals, the NIC list or the
    inventory, so their traffic is not counted twice."""
    _container_host(fake)
    host = fake.sampler(clock)
    assert [n.name for n in host.info().nics] == ["eth0", "eth1"]
    host.sample()
    _step_all_nics(fake, clock, 1_000_000)
    net = host.sample().net
    assert [n.name for n in net.nics] == ["eth0", "eth1"]
    assert net.rx_bytes_per_s == 2_000_000.0


def test_include_adds_virtual_interfaces_and_exclude_wins(fake: FakeHost, clock: FakeClock) -> None:
    """include bond*: the bond counts; exclude eth1 (its member): the member does not, even
    though it is physical; exclude also beats include."""
    _container_host(fake)
    nic_filter = NicFilter(include=("bond*", "veth*"), exclude=("eth1", "veth*"))
    host = fake.sampler(clock, nic_filter)
    assert [n.name for n in host.info().nics] == ["eth0", "bond0"]
    host.sample()
    _step_all_nics(fake, clock, 1_000_000)
    net = host.sample().net
    assert [n.name for n in net.nics] == ["eth0", "bond0"]
    assert net.rx_bytes_per_s == 2_000_000.0


def test_interface_appearing_later_is_classified_too(fake: FakeHost, clock: FakeClock) -> None:
    """A container started after the agent adds a veth: it stays out; a NIC plugged in counts
    from its first sample (without a rate until the second)."""
    host = fake.sampler(clock)
    host.sample()
    fake.nics["vethnew"] = (10, 10, 0, 0, 0, 0)
    fake.nics["eth2"] = (10, 10, 0, 0, 0, 0)
    fake.physical_nics.add("eth2")
    _step_all_nics(fake, clock, 1_000)
    net = host.sample().net
    assert {n.name: n.rx_bytes_per_s for n in net.nics} == {"eth0": 1_000.0, "eth2": None}


def test_loopback_never_counts() -> None:
    """lo stays out even when an include pattern matches it."""
    nic_filter = NicFilter(include=("*",))
    assert not nic_filter.counts("lo", physical=False)
    assert nic_filter.counts("docker0", physical=False)
    assert not NicFilter(exclude=("en*",)).counts("enp1s0", physical=True)


def test_filesystems_are_physical_and_deduplicated(fake: FakeHost, clock: FakeClock) -> None:
    """Only block-device filesystems, once per device; images (squashfs, loop) skipped."""
    (disk,) = fake.sampler(clock).sample().disks
    st = os.statvfs(fake.data)
    assert (disk.mount, disk.device, disk.fstype) == (str(fake.data), "/dev/vda", "ext4")
    assert disk.total_bytes == st.f_blocks * st.f_frsize
    assert 0 < disk.used_bytes <= disk.total_bytes


def test_mount_point_escapes_are_decoded(fake: FakeHost, clock: FakeClock) -> None:
    """/proc/self/mounts writes a space as \\040; the sampler reports the real path."""
    spaced = fake.data / "my disk"
    spaced.mkdir()
    fake.mounts = [f"/dev/sdb1 {fake.data}/my\\040disk ext4 rw 0 0"]
    fake.write()
    (disk,) = fake.sampler(clock).sample().disks
    assert disk.mount == str(spaced)


def test_a_mount_point_that_is_not_utf8_is_left_out(fake: FakeHost, clock: FakeClock) -> None:
    """A mount point whose name is not UTF-8 (a Latin-1 USB stick's label) crashed the
    sampler (/proc/self/mounts read strict). It is left out, as a path cut to fit is: with
    its bytes replaced it would name another file; the other disks are still measured."""
    odd = os.fsencode(fake.data) + b"/caf\xe9"
    os.mkdir(odd)
    fake.write()
    with (fake.proc / "self" / "mounts").open("ab") as f:
        f.write(b"/dev/sdb1 " + odd + b" ext4 rw 0 0\n")
    (disk,) = fake.sampler(clock).sample().disks
    assert (disk.device, disk.mount) == ("/dev/vda", str(fake.data))


def test_unmounted_filesystem_is_skipped(fake: FakeHost, clock: FakeClock) -> None:
    """A mount point that vanished between refreshes is left out, not an error."""
    fake.mounts = [f"/dev/sdb1 {fake.data}/gone ext4 rw 0 0"]
    fake.write()
    assert fake.sampler(clock).sample().disks == []


def test_info_reads_static_facts(fake: FakeHost, clock: FakeClock) -> None:
    """CPU model and counts, memory size and NICs with speed and MAC."""
    info = fake.sampler(clock).info()
    assert info.cpu_model == "Intel(R) Xeon(R) Platinum 8480C"
    assert info.cpu_count == 4
    assert info.cpu_cores == 2
    assert info.mem_total_bytes == 16_000_000 * 1024
    assert [(n.name, n.speed_mbps, n.mac) for n in info.nics] == [
        ("eth0", 100_000, "0c:42:a1:00:00:01")
    ]


def test_info_keeps_a_cpu_model_with_a_byte_that_is_not_utf8(
    fake: FakeHost, clock: FakeClock
) -> None:
    """A byte that is not UTF-8 in /proc/cpuinfo (a firmware's model string) is replaced,
    not a crash; the rest of the model name stays."""
    (fake.proc / "cpuinfo").write_bytes(b"processor\t: 0\nmodel name\t: Xeon\xff 8480C\n\n")
    assert fake.sampler(clock).info().cpu_model == "Xeon\ufffd 8480C"


def test_info_without_topology_or_link(fake: FakeHost, clock: FakeClock) -> None:
    """Unknown core count and link speed are None, not guesses."""
    for cpu in (fake.sys / "devices" / "system" / "cpu").iterdir():
        (cpu / "topology" / "core_cpus_list").unlink()
    (fake.sys / "class" / "net" / "eth0" / "speed").write_text("-1\n")
    fake.cpuinfo = "processor\t: 0\nCPU part\t: 0xd40\n"
    fake.write()
    info = fake.sampler(clock).info()
    assert info.cpu_cores is None
    assert info.cpu_model == "unknown"
    assert info.nics[0].speed_mbps is None


def test_real_machine_agrees_with_psutil() -> None:
    """On this machine, the procfs readings match psutil's independent ones."""
    host = HostSampler(SystemClock())
    info = host.info()
    assert info.cpu_count == psutil.cpu_count(logical=True)
    assert info.mem_total_bytes == psutil.virtual_memory().total
    first = host.sample()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn CPU so that ticks elapse
        pass
    second = host.sample()
    assert first.cpu.pct is None
    assert second.cpu.pct is not None
    assert 0.0 < second.cpu.pct <= 100.0
    assert second.cpu.per_core_pct is not None
    assert len(second.cpu.per_core_pct) == info.cpu_count
    physical = {
        n
        for n in psutil.net_io_counters(pernic=True)
        if Path(f"/sys/class/net/{n}/device").exists()
    }
    assert {n.name for n in second.net.nics} == physical
    devices = {p.device for p in psutil.disk_partitions(all=False)}
    assert {d.device for d in second.disks} <= devices
    assert abs(second.mem.available_bytes - psutil.virtual_memory().available) < 256 * 2**20
