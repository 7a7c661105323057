"""What pools are made of: CPU packages, memory modules, accelerators NVML does not see, NIC models.

Read once, for the inventory, from ``proc_root`` and ``sysfs_root`` (tests point them at a
fixture tree):

- CPU packages per model: the distinct ``physical id`` of each ``model name`` in
  ``/proc/cpuinfo``; where cpuinfo has no ``physical id`` (arm64, some VMs), the distinct
  ``topology/physical_package_id`` of ``/sys/devices/system/cpu/cpu*``.
- Installed memory and DIMM count from the kernel's EDAC (``edac/mc/mc*/dimm*/size`` in MiB,
  or the older ``csrow*/size_mb``); ``None`` when EDAC is not loaded.
- Accelerators: PCI devices (``/sys/bus/pci/devices/*/{class,vendor,device}``) of class
  3D controller (0x0302), display "other" (0x0380), processing accelerator (0x1200), and VGA
  (0x0300) from GPU vendors only (a server's VGA is its BMC's ASPEED or Matrox chip). NVIDIA
  devices NVML reports are left out (they are ``gpus``); an NVIDIA GPU on the bus that NVML
  does not report stays in, which is how the collector sees a GPU NVML lost.
- NIC model from the interface's PCI ids, link state from ``operstate``.

Names come from the system's ``pci.ids`` (pciutils/hwdata) when present, else from a short
built-in table of accelerator vendors, else ``"1002:74a1"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.bounds import Bounds
from agent.sysfs import read_int, read_lines, read_text
from shared.schema import (
    MAX_ACCELERATORS,
    MAX_CPU_PACKAGES,
    MAX_DIMMS,
    MAX_HOST_MEM_BYTES,
    MAX_MODEL_NAME_LEN,
    PCI_BUS_ID_PATTERN,
    AcceleratorInfo,
    CpuPackage,
)

__all__ = [
    "PCI_IDS_PATHS",
    "Hardware",
    "PciNames",
    "accelerators",
    "cpu_packages",
    "memory_modules",
    "nic_details",
    "read_hardware",
]

PCI_IDS_PATHS: Final = (
    Path("/usr/share/misc/pci.ids"),
    Path("/usr/share/hwdata/pci.ids"),
    Path("/usr/share/pci.ids"),
)

_BUS_ID_RE: Final = re.compile(PCI_BUS_ID_PATTERN)
NVIDIA: Final = 0x10DE
_GPU_VGA_VENDORS: Final = frozenset({0x1002, NVIDIA})  # AMD/ATI, NVIDIA
_ACCEL_CLASSES: Final = frozenset({0x0302, 0x0380, 0x1200})  # (class << 8) | subclass
_VGA_CLASS: Final = 0x0300

_VENDORS: Final = {
    0x1002: "Advanced Micro Devices, Inc. [AMD/ATI]",
    0x10DE: "NVIDIA Corporation",
    0x8086: "Intel Corporation",
    0x1DA3: "Habana Labs Ltd.",
    0x1E52: "Tenstorrent Inc",
    0x17CB: "Qualcomm Technologies, Inc",
    0x1E0F: "Groq",
}
"""Fallback names where no pci.ids is installed (accelerator vendors only)."""

_DEVICES: Final = {
    (0x1002, 0x738C): "Instinct MI100",
    (0x1002, 0x7408): "Instinct MI250X",
    (0x1002, 0x740C): "Instinct MI250X / MI250",
    (0x1002, 0x740F): "Instinct MI210",
    (0x1002, 0x74A1): "Instinct MI300X",
    (0x1DA3, 0x1000): "Gaudi HL-2000",
    (0x1DA3, 0x1020): "Gaudi2",
}


class PciNames:
    """PCI vendor and device names, from a ``pci.ids`` file read on first use."""

    def __init__(self, paths: Sequence[Path] = PCI_IDS_PATHS) -> None:
        self._paths = paths
        self._vendors: dict[int, str] | None = None
        self._devices: dict[tuple[int, int], str] = {}

    def _load(self) -> dict[int, str]:
        vendors: dict[int, str] = {}
        for path in self._paths:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            vendor: int | None = None
            for line in text.splitlines():
                if not line or line[0] == "#":
                    continue
                if line.startswith("C "):  # the class list ends the vendors
                    break
                if line[0] != "\t":
                    vendor = _hex(line[:4])
                    if vendor is not None:
                        vendors[vendor] = line[4:].strip()
                elif vendor is not None and line[1] != "\t":
                    device = _hex(line[1:5])
                    if device is not None:
                        self._devices[(vendor, device)] = line[5:].strip()
            break
        return vendors

    def name(self, vendor: int, device: int) -> str:
        """``"<vendor name> <device name>"``, or the ids in hex when unknown."""
        if self._vendors is None:
            self._vendors = self._load()
        v = self._vendors.get(vendor) or _VENDORS.get(vendor)
        d = self._devices.get((vendor, device)) or _DEVICES.get((vendor, device))
        if v is None:
            return f"{vendor:04x}:{device:04x}"
        return f"{v} {d}" if d else f"{v} device {device:04x}"


@dataclass(frozen=True, slots=True)
class Hardware:
    """The inventory's hardware fields beyond the host's counters."""

    cpus: list[CpuPackage]
    mem_installed_bytes: int | None
    mem_dimms: int | None
    accelerators: list[AcceleratorInfo]


def read_hardware(
    proc_root: Path,
    sysfs_root: Path,
    *,
    nvml_bus_ids: Iterable[str],
    bounds: Bounds,
    names: PciNames | None = None,
) -> Hardware:
    """Read CPU packages, memory modules and accelerators; every value inside the schema."""
    names = names if names is not None else PciNames()
    installed, dimms = memory_modules(sysfs_root)
    cpus = [
        CpuPackage(
            model=bounds.text(model, "cpus[].model", MAX_MODEL_NAME_LEN),
            sockets=bounds.clamped(n, "cpus[].sockets", MAX_CPU_PACKAGES, 1),
        )
        for model, n in cpu_packages(proc_root, sysfs_root)
    ]
    return Hardware(
        cpus=bounds.first(cpus, "cpus", MAX_CPU_PACKAGES),
        mem_installed_bytes=bounds.optional_int(
            installed, "mem_installed_bytes", MAX_HOST_MEM_BYTES, 0
        ),
        mem_dimms=bounds.optional_int(dimms, "mem_dimms", MAX_DIMMS, 1),
        accelerators=bounds.first(
            accelerators(sysfs_root, nvml_bus_ids, names), "accelerators", MAX_ACCELERATORS
        ),
    )


def cpu_packages(proc_root: Path, sysfs_root: Path) -> list[tuple[str, int]]:
    """``(model, sockets)`` per CPU model, in order of first appearance."""
    text = read_lines(proc_root / "cpuinfo") or ""
    packages: dict[str, set[str]] = {}
    model = "unknown"
    seen_model = False
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "processor" not in fields:
            continue
        if fields.get("model name"):
            model, seen_model = fields["model name"], True
        physical = fields.get("physical id")
        if physical is not None:
            packages.setdefault(model, set()).add(physical)
    if packages:
        return [(m, len(ids)) for m, ids in packages.items()]
    # No "physical id" (arm64, some hypervisors): count packages in sysfs.
    ids = set()
    for cpu in (sysfs_root / "devices" / "system" / "cpu").glob("cpu[0-9]*"):
        pid = read_text(cpu / "topology" / "physical_package_id")
        if pid is not None:
            ids.add(pid)
    if ids:
        return [(model if seen_model else "unknown", len(ids))]
    return []


def memory_modules(sysfs_root: Path) -> tuple[int | None, int | None]:
    """``(installed bytes, populated DIMMs)`` from EDAC, ``(None, None)`` without it."""
    mib = 0
    count = 0
    mc = sysfs_root / "devices" / "system" / "edac" / "mc"
    for size_file in sorted(mc.glob("mc[0-9]*/dimm[0-9]*/size")):
        size = read_int(size_file)
        if size:
            mib += size
            count += 1
    if not count:  # kernels before 3.x and some drivers: chip-select rows only
        for size_file in sorted(mc.glob("mc[0-9]*/csrow[0-9]*/size_mb")):
            size = read_int(size_file)
            if size:
                mib += size
                count += 1
        if count:
            return mib * 2**20, None  # a csrow is not a module
    if not count:
        return None, None
    return mib * 2**20, count


def accelerators(
    sysfs_root: Path, nvml_bus_ids: Iterable[str], names: PciNames
) -> list[AcceleratorInfo]:
    """GPUs and accelerators on the PCI bus, less the NVIDIA ones NVML reports."""
    seen = {_bus_key(b) for b in nvml_bus_ids}
    out = []
    for dev in sorted((sysfs_root / "bus" / "pci" / "devices").glob("*")):
        pci_class = read_int(dev / "class", base=16)
        vendor = read_int(dev / "vendor", base=16)
        device = read_int(dev / "device", base=16)
        if pci_class is None or vendor is None or device is None:
            continue
        if not (0 <= vendor <= 0xFFFF and 0 <= device <= 0xFFFF and 0 <= pci_class <= 0xFFFFFF):
            continue
        cls = pci_class >> 8
        if not (cls in _ACCEL_CLASSES or (cls == _VGA_CLASS and vendor in _GPU_VGA_VENDORS)):
            continue
        if vendor == NVIDIA and _bus_key(dev.name) in seen:
            continue
        out.append(
            AcceleratorInfo(
                vendor_id=vendor,
                device_id=device,
                name=names.name(vendor, device)[:MAX_MODEL_NAME_LEN],
                pci_bus_id=dev.name if _BUS_ID_RE.match(dev.name) else None,
                pci_class=pci_class,
            )
        )
    return out


def nic_details(sysfs_root: Path, name: str, names: PciNames) -> tuple[str | None, bool | None]:
    """``(model, link up)`` of interface ``name``: model from its PCI ids, link from operstate."""
    net = sysfs_root / "class" / "net" / name
    pci = _pci_device(net / "device")
    vendor = None if pci is None else read_int(pci / "vendor", base=16)
    device = None if pci is None else read_int(pci / "device", base=16)
    model = None
    if vendor is not None and device is not None and 0 <= vendor <= 0xFFFF:
        model = names.name(vendor, device & 0xFFFF)[:MAX_MODEL_NAME_LEN]
    state = read_text(net / "operstate")
    up = {"up": True, "down": False, "lowerlayerdown": False}.get(state or "")
    return model, up


def _pci_device(device: Path) -> Path | None:
    """The PCI function behind an interface's ``device`` link: the link itself, or for a
    virtio NIC its parent (the virtio device's own ``vendor``/``device`` are virtio ids, not
    PCI ones). ``None`` when neither is on the PCI bus. A tree without ``subsystem`` links
    (a test fixture) is taken as PCI."""
    for candidate in (device, device / ".."):
        subsystem = candidate / "subsystem"
        if not subsystem.is_symlink():
            return candidate if candidate is device and device.is_dir() else None
        if subsystem.resolve().name == "pci":
            return candidate
    return None


def _bus_key(bus_id: str) -> str:
    """``00000000:3B:00.0`` and ``0000:3b:00.0`` -> ``0000:3b:00.0`` (NVML pads the domain)."""
    domain, sep, rest = bus_id.strip().lower().partition(":")
    if not sep or not domain or not rest:
        return ""
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return ""


def _hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None
