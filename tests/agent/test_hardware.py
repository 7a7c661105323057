"""CPU packages, memory modules, accelerators and NIC models from fixture procfs and sysfs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent.bounds import Bounds
from agent.gpu import NvmlBackend
from agent.hardware import (
    PciNames,
    accelerators,
    cpu_packages,
    memory_modules,
    nic_details,
    read_hardware,
)
from shared.clock import FakeClock
from shared.schema import Inventory, decode_inventory, encode
from tests.agent.helpers import node_sampler
from tests.agent.test_host import FakeHost

_PCI_IDS = """\
# a few lines in pci.ids' format
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t74a1  Aqua Vanjaram [Instinct MI300X]
\t\t1002 74a1  subsystem line, ignored
10de  NVIDIA Corporation
\t2330  GH100 [H100 SXM5 80GB]
15b3  Mellanox Technologies
\t1021  MT2910 Family [ConnectX-7]
1a03  ASPEED Technology, Inc.
\t2000  ASPEED Graphics Family
C 00  Unclassified device
"""


def _cpuinfo(models: list[tuple[str, int, int]]) -> str:
    """(model, physical id, threads) blocks as /proc/cpuinfo writes them."""
    blocks = []
    n = 0
    for model, physical, threads in models:
        for _ in range(threads):
            blocks.append(
                f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\n"
                f"physical id\t: {physical}\ncore id\t\t: {n}\n"
            )
            n += 1
    return "\n".join(blocks) + "\n"


def _pci(sys: Path, bus: str, cls: int, vendor: int, device: int) -> None:
    d = sys / "bus" / "pci" / "devices" / bus
    d.mkdir(parents=True)
    (d / "class").write_text(f"0x{cls:06x}\n")
    (d / "vendor").write_text(f"0x{vendor:04x}\n")
    (d / "device").write_text(f"0x{device:04x}\n")


def _names(tmp_path: Path) -> PciNames:
    path = tmp_path / "pci.ids"
    path.write_text(_PCI_IDS)
    return PciNames([tmp_path / "absent.ids", path])


def test_cpu_packages_count_distinct_physical_ids_per_model(tmp_path: Path) -> None:
    """Two sockets of one model with 4 threads each are 2 packages, not 8."""
    (tmp_path / "cpuinfo").write_text(
        _cpuinfo([("AMD EPYC 9654", 0, 4), ("AMD EPYC 9654", 1, 4), ("Other CPU", 2, 2)])
    )
    assert cpu_packages(tmp_path, tmp_path / "sys") == [("AMD EPYC 9654", 2), ("Other CPU", 1)]


def test_cpu_packages_fall_back_to_sysfs_topology(tmp_path: Path) -> None:
    """Without ``physical id`` (arm64) the packages are the distinct physical_package_id."""
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\n")
    for cpu, pkg in [(0, 0), (1, 0), (2, 1), (3, 1)]:
        topo = tmp_path / "sys" / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{pkg}\n")
    assert cpu_packages(tmp_path, tmp_path / "sys") == [("unknown", 2)]


def test_memory_modules_sum_populated_edac_dimms(tmp_path: Path) -> None:
    """Empty slots (size 0) are not modules; sizes are MiB."""
    mc = tmp_path / "devices" / "system" / "edac" / "mc"
    for i, size in enumerate([65536, 65536, 0]):
        d = mc / "mc0" / f"dimm{i}"
        d.mkdir(parents=True)
        (d / "size").write_text(f"{size}\n")
    assert memory_modules(tmp_path) == (128 * 2**30, 2)
    assert memory_modules(tmp_path / "nothing") == (None, None)


def test_accelerators_keep_other_vendors_and_nvidia_gpus_nvml_lost(tmp_path: Path) -> None:
    """AMD MI300X and an NVIDIA GPU NVML does not report are listed; the BMC's VGA, NICs and
    the NVIDIA GPU NVML reports are not."""
    sys = tmp_path / "sys"
    _pci(sys, "0000:c1:00.0", 0x120000, 0x1002, 0x74A1)  # MI300X, processing accelerator
    _pci(sys, "0000:3b:00.0", 0x030200, 0x10DE, 0x2330)  # H100 NVML reports
    _pci(sys, "0000:4b:00.0", 0x030200, 0x10DE, 0x2330)  # H100 NVML lost
    _pci(sys, "0000:02:00.0", 0x030000, 0x1A03, 0x2000)  # ASPEED BMC VGA
    _pci(sys, "0000:5e:00.0", 0x020700, 0x15B3, 0x1021)  # ConnectX-7 (InfiniBand)
    found = accelerators(sys, ["00000000:3B:00.0"], _names(tmp_path))
    assert [(a.pci_bus_id, a.name) for a in found] == [
        ("0000:4b:00.0", "NVIDIA Corporation GH100 [H100 SXM5 80GB]"),
        ("0000:c1:00.0", "Advanced Micro Devices, Inc. [AMD/ATI] Aqua Vanjaram [Instinct MI300X]"),
    ]
    assert found[1].vendor_id == 0x1002
    assert found[1].pci_class == 0x120000


def test_unknown_pci_ids_are_named_in_hex_or_by_the_builtin_table(tmp_path: Path) -> None:
    """Without a pci.ids file, known accelerator vendors still get a name."""
    names = PciNames([tmp_path / "absent.ids"])
    assert names.name(0x1002, 0x74A1) == "Advanced Micro Devices, Inc. [AMD/ATI] Instinct MI300X"
    assert names.name(0xABCD, 0x0001) == "abcd:0001"


def test_read_hardware_clamps_to_the_schema(tmp_path: Path) -> None:
    """100 sockets are clamped to MAX_CPU_PACKAGES; the result encodes and decodes."""
    (tmp_path / "cpuinfo").write_text(
        "".join(f"processor\t: {i}\nmodel name\t: X\nphysical id\t: {i}\n\n" for i in range(100))
    )
    hw = read_hardware(
        tmp_path, tmp_path / "sys", nvml_bus_ids=[], bounds=Bounds(FakeClock()), names=PciNames([])
    )
    assert hw.cpus[0].sockets == 64
    assert hw.accelerators == []
    assert hw.mem_dimms is None


def test_node_inventory_carries_packages_memory_accelerators_and_nic_models(
    tmp_path: Path,
) -> None:
    """The agent's inventory over a fixture tree has every new field, and validates."""
    from agent.fake_nvml import FakeNvml  # noqa: PLC0415

    clock = FakeClock()
    fake = FakeHost(tmp_path)
    fake.write()
    (fake.proc / "cpuinfo").write_text(_cpuinfo([("AMD EPYC 9654", 0, 2), ("AMD EPYC 9654", 1, 2)]))
    dimm = fake.sys / "devices" / "system" / "edac" / "mc" / "mc0" / "dimm0"
    dimm.mkdir(parents=True)
    (dimm / "size").write_text("32768\n")
    _pci(fake.sys, "0000:c1:00.0", 0x120000, 0x1002, 0x74A1)
    eth0 = fake.sys / "class" / "net" / "eth0"  # physical: fake.write() made its device dir
    (eth0 / "device" / "vendor").write_text("0x15b3\n")
    (eth0 / "device" / "device").write_text("0x1021\n")
    (eth0 / "operstate").write_text("down\n")
    backend = NvmlBackend(FakeNvml(2, clock=clock), clock=clock)
    sampler = node_sampler(fake, clock, backend, pci_ids=[tmp_path / "pci.ids"])
    (tmp_path / "pci.ids").write_text(_PCI_IDS)
    try:
        inv = decode_inventory(encode(sampler.start()))
    finally:
        sampler.close()
    assert [(c.model, c.sockets) for c in inv.cpus] == [("AMD EPYC 9654", 2)]
    assert (inv.mem_installed_bytes, inv.mem_dimms) == (32 * 2**30, 1)
    assert [a.device_id for a in inv.accelerators] == [0x74A1]
    nics = {n.name: msgspec.structs.asdict(n) for n in inv.nics}
    assert nics["eth0"]["up"] is False
    assert nics["eth0"]["model"] == "Mellanox Technologies MT2910 Family [ConnectX-7]"


def test_virtio_nic_is_named_by_its_pci_parent_not_its_virtio_ids(tmp_path: Path) -> None:
    """A virtio NIC's device is on the virtio bus: the model comes from the PCI function above."""
    sys = tmp_path / "sys"
    (sys / "bus" / "pci").mkdir(parents=True)
    (sys / "bus" / "virtio").mkdir(parents=True)
    pci_fn = sys / "devices" / "pci0000:00" / "0000:00:03.0"
    virtio = pci_fn / "virtio2"
    virtio.mkdir(parents=True)
    (pci_fn / "subsystem").symlink_to(sys / "bus" / "pci")
    (pci_fn / "vendor").write_text("0x15b3\n")
    (pci_fn / "device").write_text("0x1021\n")
    (virtio / "subsystem").symlink_to(sys / "bus" / "virtio")
    (virtio / "vendor").write_text("0x1af4\n")
    (virtio / "device").write_text("0x0001\n")
    net = sys / "class" / "net" / "eth0"
    net.mkdir(parents=True)
    (net / "device").symlink_to(virtio)
    (net / "operstate").write_text("up\n")
    model, up = nic_details(sys, "eth0", _names(tmp_path))
    assert (model, up) == ("Mellanox Technologies MT2910 Family [ConnectX-7]", True)


def test_hostile_sysfs_stays_inside_the_wire_schema(tmp_path: Path) -> None:
    """Absurd EDAC sizes, 100 accelerators, ids past 16 bits and a 10 kB name still make a
    valid inventory part: dropped, truncated or cut, never a rejected message."""
    sys = tmp_path / "sys"
    mc = sys / "devices" / "system" / "edac" / "mc" / "mc0"
    for i in range(1030):  # more modules than MAX_DIMMS, each 2^40 MiB
        d = mc / f"dimm{i}"
        d.mkdir(parents=True)
        (d / "size").write_text(f"{2**40}\n")
    for i in range(100):
        _pci(sys, f"0000:{i:02x}:00.0", 0x120000, 0x1002, 0x74A1)
    _pci(sys, "0000:ff:00.0", 0x120000, 0x1FFFF, 0x1)  # vendor id past 16 bits: skipped
    (tmp_path / "pci.ids").write_text("1002  " + "A" * 10_000 + "\n")
    hw = read_hardware(
        tmp_path,
        sys,
        nvml_bus_ids=[],
        bounds=Bounds(FakeClock()),
        names=PciNames([tmp_path / "pci.ids"]),
    )
    assert (hw.mem_installed_bytes, hw.mem_dimms) == (None, None)
    assert len(hw.accelerators) == 64
    assert all(len(a.name) <= 256 for a in hw.accelerators)
    inv = decode_inventory(
        encode(
            msgspec.structs.replace(
                decode_inventory(encode(_minimal_inventory())),
                accelerators=hw.accelerators,
                cpus=hw.cpus,
            )
        )
    )
    assert len(inv.accelerators) == 64


def _minimal_inventory() -> Inventory:
    return Inventory(
        v=1,
        node="n1",
        ts=1.8e9,
        host="n1",
        agent_version="t",
        cpu_model="x",
        cpu_count=1,
        cpu_cores=None,
        mem_total_bytes=0,
    )
