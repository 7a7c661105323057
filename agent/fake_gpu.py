"""The fake NVML's GPUs: what each one is and how it behaves over time.

:class:`agent.fake_nvml.FakeNvml` is pynvml's surface (handles, errors, structures, call
counts); this module is the device model behind it. Each :class:`FakeGpu` follows its own
slow sine of utilisation between 5 and 95 % (or the pinned ``load_pct`` of its
:class:`Profile`); power follows utilisation between idle and 90 % of the limit; the energy
counter is the exact integral of the power (so interval power equals mean power), and the
NVLink data counters the integral of traffic proportional to the load. Deterministic in the
clock's monotonic time ``t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import pynvml

from agent.fake_mig import FakeMig

__all__ = ["MIB", "FakeGpu", "Profile", "Running"]

MIB: Final = 1024 * 1024
_NVLINK_TX_PEAK: Final = 0.4 * 450e9
"""B/s sent at 100 % load: 40 % of NVLink 4's 450 GB/s per direction."""
_NVLINK_RX_SHARE: Final = 0.95
"""Received: a little less than sent."""
_ALL_LINKS: Final = 0xFFFFFFFF
"""``scopeId`` UINT_MAX: a throughput field summed over every link."""
_BUSY_PCT: Final = 5.0
"""Below this utilisation the GPU idles (idle clocks, P8)."""
_TRAINING_PCT: Final = 10.0
"""From this utilisation on a training process runs (one per GPU, or per MIG device)."""

Running = list[tuple[int, int, int | None]]
"""``(pid, used bytes, GPU instance id or None)`` of each process on a GPU."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What every GPU of one fake shares: its load, power range and memory."""

    load_pct: float | None
    """Every GPU's utilisation pinned; ``None``: each its own sine."""
    limit_w: float
    idle_w: float
    mem_total: int
    nvlink_links: int
    """NVLinks per GPU (0: a PCIe card without NVLink)."""


@dataclass(slots=True)
class FakeGpu:
    """One fake GPU: identity, state, and its readings at time ``t``."""

    index: int
    address: int
    uuid: str
    serial: str
    bus: int
    phase: float
    omega: float
    unsupported: frozenset[str]
    pcie_replays: int
    profile: Profile
    energy_offset_mj: float = 0.0
    nvlink_offset_kib: tuple[float, float] = (0.0, 0.0)
    """Where the (tx, rx) data counters stood at t = 0, in KiB."""
    lost: bool = False
    mig: list[FakeMig] | None = None
    """MIG mode on, with these MIG devices; ``None``: MIG mode off."""
    processes: Running | None = None
    """What a test set to run here whatever the load; ``None``: the profile's."""

    def util(self, t: float) -> float:
        """Utilisation, %."""
        if self.profile.load_pct is not None:
            return self.profile.load_pct
        return 50.0 + 45.0 * math.sin(self.omega * t + self.phase)

    def busy(self, t: float) -> bool:
        """Not idling (boost clocks, P0)."""
        return self.util(t) >= _BUSY_PCT

    def power_w(self, t: float) -> float:
        """Instantaneous power, W."""
        p = self.profile
        return p.idle_w + (p.limit_w - p.idle_w) * 0.9 * self.util(t) / 100.0

    def energy_mj(self, t: float) -> int:
        """The energy counter, mJ (since "driver load")."""
        return int(self.energy_offset_mj + 1000 * self._energy_j(t))

    def set_energy(self, t: float, mj: float) -> None:
        """Make the energy counter read ``mj`` at ``t``."""
        self.energy_offset_mj = mj - 1000 * self._energy_j(t)

    def _energy_j(self, t: float) -> float:
        """Integral of :meth:`power_w` (up to a constant)."""
        p = self.profile
        if p.load_pct is not None:
            return self.power_w(t) * t
        span = (p.limit_w - p.idle_w) * 0.9
        mean, amplitude = p.idle_w + span * 0.5, span * 0.45
        return mean * t - amplitude / self.omega * math.cos(self.omega * t + self.phase)

    def _util_s(self, t: float) -> float:
        """Integral of :meth:`util` (percent-seconds, up to a constant)."""
        if self.profile.load_pct is not None:
            return self.profile.load_pct * t
        return 50.0 * t - 45.0 / self.omega * math.cos(self.omega * t + self.phase)

    def nvlink_bytes_per_s(self, t: float) -> tuple[float, float]:
        """The true NVLink (tx, rx) rate, B/s."""
        tx = _NVLINK_TX_PEAK * self.util(t) / 100
        return tx, tx * _NVLINK_RX_SHARE

    def nvlink_kib(self, t: float) -> tuple[float, float]:
        """The (tx, rx) data counters, KiB: the integral of the traffic."""
        tx = _NVLINK_TX_PEAK / 100 * self._util_s(t) / 1024
        off_tx, off_rx = self.nvlink_offset_kib
        return off_tx + tx, off_rx + tx * _NVLINK_RX_SHARE

    def set_nvlink(self, t: float, kib: float) -> None:
        """Make both NVLink counters read ``kib`` at ``t``."""
        self.nvlink_offset_kib = (0.0, 0.0)
        tx, rx = self.nvlink_kib(t)
        self.nvlink_offset_kib = (kib - tx, kib - rx)

    def mem_used(self, t: float) -> int:
        """Framebuffer used, bytes (in MIG mode: the sum over its MIG devices)."""
        if self.mig is not None:
            return sum(self.mig_mem_used(m, t) for m in self.mig)
        return 1024 * MIB + int(self.util(t) / 100 * 0.7 * self.profile.mem_total)

    def mig_mem_used(self, mig: FakeMig, t: float) -> int:
        """A MIG device's framebuffer used, bytes."""
        return 64 * MIB + int(self.util(t) / 100 * 0.7 * mig.profile.memory_mb * MIB)

    def running(self, t: float) -> Running:
        """What runs here: :attr:`processes` if set, else one training process from 10 %
        load on (one per MIG device in MIG mode)."""
        if self.processes is not None:
            return self.processes
        if self.util(t) < _TRAINING_PCT:
            return []
        if self.mig is None:
            return [(4000 + self.index, self.mem_used(t) - 512 * MIB, None)]
        return [
            (10_000 + 100 * self.index + m.gi_id, self.mig_mem_used(m, t) - 32 * MIB, m.gi_id)
            for m in self.mig
        ]

    def field_value(self, field_id: int, scope: int, t: float) -> tuple[int, str, int] | None:
        """(value type, ``c_nvmlValue_t`` member, value) of one field of
        ``nvmlDeviceGetFieldValues``; ``None``: NotSupported. Memory temperature (°C, rising
        with power, 5 °C above the GPU's), the NVLink count, and the NVLink data counters
        (KiB; scope UINT_MAX: every link, a link id: its share)."""
        if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP:
            if "NVML_FI_DEV_MEMORY_TEMP" in self.unsupported:
                return None
            temp = round(35 + 0.07 * self.power_w(t))
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal", temp
        links = self.profile.nvlink_links
        if "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX" in self.unsupported:
            links = 0
        if field_id == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal", links
        throughput = (
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        )
        if field_id not in throughput or not links or (scope != _ALL_LINKS and scope >= links):
            return None
        kib = self.nvlink_kib(t)[throughput.index(field_id)]
        share = kib if scope == _ALL_LINKS else kib / links
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, "ullVal", int(share)
