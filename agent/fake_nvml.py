"""An in-process stand-in for the part of ``pynvml`` that :class:`agent.gpu.NvmlBackend` uses.

For tests and demos on machines without NVIDIA GPUs: ``NvmlBackend(FakeNvml(...))`` is the
"fake" GPU backend. It returns pynvml's own ctypes structures and raises pynvml's own
exception classes, so the backend runs the same code paths as on a GPU node. The load and
power profile is a deterministic function of ``seed`` and the clock; the energy counter is
the exact integral of the power, so interval power equals mean power.
"""

# ruff: noqa: N802, N815  (method and constant names are pynvml's, so the fake can stand in)

from __future__ import annotations

import ctypes
import math
import random
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pynvml

from agent.fake_mig import H100_PROFILES, MAX_MIG_DEVICES, FakeMig, layout
from shared.clock import Clock, SystemClock

__all__ = ["FakeMode", "FakeNvml"]

FakeMode = Literal["ok", "no_library", "no_driver", "no_permission"]

_DGX_H100_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
_MIB = 1024 * 1024
_GPU_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle
_SW_POWER_CAP = 0x4  # nvmlClocksEventReasonSwPowerCap
_HBM3_CLOCK_MHZ = 2619  # H100 SXM's memory clock, the same under load and idle
_MEM_RESERVED = 512 * _MIB
_CODEC_PERIOD_US = 167_000  # NVML's encoder/decoder sampling period on recent GPUs
_NVLINK_TX_PEAK = 0.4 * 450e9  # B/s at 100 % load: 40 % of NVLink 4's 450 GB/s per direction
_NVLINK_RX_SHARE = 0.95  # received: a little less than sent
_ALL_LINKS = 0xFFFFFFFF  # scopeId UINT_MAX: a throughput field summed over every link


@dataclass(slots=True)
class _FakeGpu:
    index: int
    address: int
    uuid: str
    serial: str
    bus: int
    phase: float
    omega: float
    energy_offset_mj: float
    unsupported: frozenset[str]
    pcie_replays: int
    nvlink_offset_kib: tuple[float, float] = (0.0, 0.0)
    """Where the (tx, rx) data counters stood at t = 0, in KiB."""
    lost: bool = False
    mig: list[FakeMig] | None = None
    """MIG mode on, with these MIG devices; ``None``: MIG mode off."""


def _process(pid: int, used: int, mig: FakeMig | None) -> Any:
    """A process record as pynvml returns it (instance ids 0xFFFFFFFF outside MIG mode)."""
    return pynvml.nvmlFriendlyObject(
        {
            "pid": pid,
            "usedGpuMemory": used,
            "gpuInstanceId": 0xFFFFFFFF if mig is None else mig.gi_id,
            "computeInstanceId": 0xFFFFFFFF if mig is None else mig.ci_id,
        }
    )


@dataclass(slots=True, eq=False)
class _EventSet:
    gpus: set[int] = field(default_factory=set)
    pending: deque[tuple[int, int]] = field(default_factory=deque)  # (gpu index, xid)
    freed: bool = False


class FakeNvml:
    """Fake NVML with ``gpus`` identical GPUs (an 8 x H100 node by default).

    ``mode`` makes ``nvmlInit`` fail as on a node without the library, the driver, or the
    permission. ``unsupported`` maps a GPU index to pynvml function names that raise
    ``NVMLError_NotSupported`` there, or to ``NVML_CLOCK_MEM`` (that clock type alone is
    unsupported) and ``NVML_FI_DEV_MEMORY_TEMP`` (``nvmlDeviceGetFieldValues`` succeeds and
    that field's own status says NotSupported, as on a GPU without a memory sensor);
    ``missing_functions`` raise
    ``NVMLError_FunctionNotFound`` everywhere (an older driver; ``nvmlDeviceGetMemoryInfo_v2``
    names the versioned memory call). ``load_pct`` pins every GPU's utilisation; ``None``
    gives each GPU its own slow sine between 5 and 95 %. Every device call is counted in
    :attr:`calls` by ``(function name, gpu index)`` (a MIG device's under its GPU's index).

    ``nvlink_links``: NVLinks per GPU (18, as an H100 SXM; 0: a PCIe card without NVLink,
    whose NVLink fields answer NotSupported). Their data counters (KiB, summed over the links
    for ``scopeId`` UINT_MAX, as NVML does) grow with the load: up to 180 GB/s sent and
    171 GB/s received; ``NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX`` in ``unsupported`` makes
    both NotSupported on that GPU.

    ``mig`` puts GPUs in MIG mode: GPU index -> the GPU instance profiles created on it
    (``["1g.10gb"] * 7``, ``["3g.40gb", "2g.20gb", "2g.20gb"]``; an empty list is MIG mode
    with no instance), each with one compute instance over the whole GPU instance, as an
    H100 80GB has them (:mod:`agent.fake_mig`). As NVML documents: utilisation is
    NotSupported on a MIG device and on a GPU in MIG mode; a MIG device answers its UUID,
    memory, attributes and instance ids, and NotSupported for what belongs to its GPU
    (power, temperature, clocks); its handle is invalid once :meth:`set_mig` destroyed it.
    Its processes come from its own handle (``mig_processes=False``: NotSupported there, as
    in vGPU host mode); the GPU's handle answers them all only with ``mig_aggregate``.
    """

    # pynvml's own classes and constants, so `except nvml.NVMLError_NotSupported` matches.
    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_ArgumentVersionMismatch = pynvml.NVMLError_ArgumentVersionMismatch
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    if hasattr(pynvml, "NVMLLibraryMismatchError"):  # nvidia-ml-py 12.550 on: mirror the binding
        NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError

    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_FI_DEV_MEMORY_TEMP = pynvml.NVML_FI_DEV_MEMORY_TEMP
    NVML_FI_DEV_NVLINK_LINK_COUNT = pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
    NVML_SUCCESS = pynvml.NVML_SUCCESS
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_VALUE_TYPE_DOUBLE = pynvml.NVML_VALUE_TYPE_DOUBLE
    NVML_VALUE_TYPE_UNSIGNED_INT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    NVML_VALUE_TYPE_UNSIGNED_LONG = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG
    NVML_MEMORY_ERROR_TYPE_CORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_AGGREGATE_ECC = pynvml.NVML_AGGREGATE_ECC
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_GPU_INSTANCE_PROFILE_COUNT = pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT
    nvmlMemory_v2 = pynvml.nvmlMemory_v2
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(
        self,
        gpus: int = 8,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        name: str = "NVIDIA H100 80GB HBM3",
        mem_total_bytes: int = 81_559 * _MIB,
        power_limit_w: float = 700.0,
        idle_power_w: float = 70.0,
        driver_version: str = "550.54.15",
        mode: FakeMode = "ok",
        unsupported: Mapping[int, Iterable[str]] | None = None,
        missing_functions: Iterable[str] = (),
        load_pct: float | None = None,
        mig: Mapping[int, Sequence[str]] | None = None,
        nvlink_links: int = 18,
        mig_aggregate: bool = False,
        mig_processes: bool = True,
    ) -> None:
        if load_pct is not None and not 0.0 <= load_pct <= 100.0:
            raise ValueError(f"load_pct must be within 0..100, got {load_pct}")
        if not 0 <= nvlink_links <= pynvml.NVML_NVLINK_MAX_LINKS:
            raise ValueError(
                f"nvlink_links must be within 0..{pynvml.NVML_NVLINK_MAX_LINKS}, got {nvlink_links}"
            )
        self._nvlink_links = nvlink_links
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._name = name
        self._mem_total = mem_total_bytes
        self._limit_w = power_limit_w
        self._idle_w = idle_power_w
        self._driver = driver_version
        self._mode = mode
        self._missing = frozenset(missing_functions)
        self._load = load_pct
        self._initialized = 0
        self._lock = threading.Condition()  # guards the event sets; XID waiters sleep on it
        self._event_sets: list[_EventSet] = []
        self.calls: Counter[tuple[str, int]] = Counter()
        """Device calls made, by ``(pynvml function name, gpu index)``."""
        self._processes: dict[int, list[tuple[int, int, int | None]]] = {}
        self._mig_aggregate = mig_aggregate
        self._mig_processes = mig_processes
        self._migs: dict[int, FakeMig] = {}  # id(handle) -> MIG device
        self._mig_handles: dict[int, Any] = {}  # address -> the MIG device's handle

        rng = random.Random(seed)
        unsupported = unsupported or {}
        self._gpus: list[_FakeGpu] = []
        self._handles: list[Any] = []
        self._by_handle_id: dict[int, _FakeGpu] = {}
        now = self._clock.monotonic()
        for i in range(gpus):
            gpu = _FakeGpu(
                index=i,
                address=0x7F00_0000 + 0x1000 * i,
                uuid=f"GPU-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                serial=f"1654{seed % 1000:03d}{i:06d}",
                bus=_DGX_H100_BUSES[i] if gpus <= len(_DGX_H100_BUSES) else 0x10 + i,
                phase=rng.uniform(0.0, 2 * math.pi),
                omega=2 * math.pi / rng.uniform(60.0, 180.0),
                energy_offset_mj=0.0,
                unsupported=frozenset(unsupported.get(i, ())),
                pcie_replays=i,  # a few replays since driver load; each GPU its own count
            )
            # The counter starts where a driver loaded some hours ago would be.
            gpu.energy_offset_mj = rng.uniform(1e9, 5e9) - 1000 * self._energy_j(gpu, now)
            # Some TiB moved since driver load, each GPU its own (not drawn from the seed's
            # generator: the fleet a seed gives stays as it was).
            self._set_nvlink(gpu, now, float((i + 1) << 32))
            self._gpus.append(gpu)
            handle = ctypes.cast(ctypes.c_void_p(gpu.address), pynvml.c_nvmlDevice_t)
            self._handles.append(handle)
            # Handles live as long as the fake, so their ids are a cheap, stable key.
            self._by_handle_id[id(handle)] = gpu
        for index, profiles in (mig or {}).items():
            self.set_mig(index, profiles)

    # -- test controls ----------------------------------------------------------------------

    def call_count(self, function: str, gpu: int | None = None) -> int:
        """How often ``function`` was called (on ``gpu``, or on any GPU)."""
        if gpu is not None:
            return self.calls[(function, gpu)]
        return sum(n for (fn, _), n in self.calls.items() if fn == function)

    def reset_energy(self, gpu: int | None = None) -> None:
        """Restart the energy counter at 0, as a driver reload does (all GPUs if ``None``)."""
        now = self._clock.monotonic()
        for g in self._gpus if gpu is None else [self._gpus[gpu]]:
            g.energy_offset_mj = -1000 * self._energy_j(g, now)

    def reset_nvlink(self, gpu: int | None = None) -> None:
        """Restart the NVLink data counters at 0, as a driver reload does (all GPUs if
        ``None``)."""
        now = self._clock.monotonic()
        for g in self._gpus if gpu is None else [self._gpus[gpu]]:
            self._set_nvlink(g, now, 0.0)

    def nvlink_bytes_per_s(self, gpu: int) -> tuple[float, float]:
        """The fake's true NVLink (tx, rx) rate of ``gpu`` now, in B/s."""
        tx = _NVLINK_TX_PEAK * self._util(self._gpus[gpu], self._clock.monotonic()) / 100
        return tx, tx * _NVLINK_RX_SHARE

    def inject_xid(self, gpu: int, xid: int) -> None:
        """Raise XID ``xid`` on ``gpu``: every event set registered for it will deliver it."""
        with self._lock:
            for event_set in self._event_sets:
                if gpu in event_set.gpus and not event_set.freed:
                    event_set.pending.append((gpu, xid))
            self._lock.notify_all()

    def set_processes(
        self, gpu: int, processes: Iterable[tuple[int, int] | tuple[int, int, int]] | None
    ) -> None:
        """From now on ``gpu`` runs these ``(pid, used bytes)`` (a real process's PID, say),
        whatever its load, or ``(pid, used bytes, GPU instance id)`` on a GPU in MIG mode;
        ``None``: back to the profile's training processes."""
        if processes is None:
            self._processes.pop(gpu, None)
        else:
            self._processes[gpu] = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in processes]

    def set_mig(self, gpu: int, profiles: Sequence[str] | None) -> None:
        """Destroy ``gpu``'s MIG devices (their handles turn invalid) and create these GPU
        instance profiles (``None``: MIG mode off); ``ValueError`` if an H100 cannot."""
        g = self._gpus[gpu]
        for dev in g.mig or ():
            dev.destroyed = True
        g.mig = None if profiles is None else layout(gpu, profiles)

    def lose_gpu(self, gpu: int) -> None:
        """From now on every call on ``gpu`` raises ``NVMLError_GpuIsLost``."""
        self._gpus[gpu].lost = True

    def power_w(self, gpu: int) -> float:
        """The fake's true power draw of ``gpu`` now, in W."""
        return self._power_w(self._gpus[gpu], self._clock.monotonic())

    # -- the profile --------------------------------------------------------------------------

    def _util(self, gpu: _FakeGpu, t: float) -> float:
        if self._load is not None:
            return self._load
        return 50.0 + 45.0 * math.sin(gpu.omega * t + gpu.phase)

    def _power_w(self, gpu: _FakeGpu, t: float) -> float:
        span = (self._limit_w - self._idle_w) * 0.9
        return self._idle_w + span * self._util(gpu, t) / 100.0

    def _energy_j(self, gpu: _FakeGpu, t: float) -> float:
        """Integral of :meth:`_power_w` (up to a constant)."""
        span = (self._limit_w - self._idle_w) * 0.9
        if self._load is not None:
            return self._power_w(gpu, t) * t
        mean = self._idle_w + span * 0.5
        amplitude = span * 0.45
        return mean * t - amplitude / gpu.omega * math.cos(gpu.omega * t + gpu.phase)

    def _util_s(self, gpu: _FakeGpu, t: float) -> float:
        """Integral of :meth:`_util` (percent-seconds, up to a constant)."""
        if self._load is not None:
            return self._load * t
        return 50.0 * t - 45.0 / gpu.omega * math.cos(gpu.omega * t + gpu.phase)

    def _nvlink_kib(self, gpu: _FakeGpu, t: float) -> tuple[float, float]:
        """The (tx, rx) data counters at ``t``, in KiB: the integral of the traffic."""
        tx = _NVLINK_TX_PEAK / 100 * self._util_s(gpu, t) / 1024
        off_tx, off_rx = gpu.nvlink_offset_kib
        return off_tx + tx, off_rx + tx * _NVLINK_RX_SHARE

    def _set_nvlink(self, gpu: _FakeGpu, t: float, kib: float) -> None:
        """Make both of ``gpu``'s NVLink counters read ``kib`` at ``t``."""
        gpu.nvlink_offset_kib = (0.0, 0.0)
        tx, rx = self._nvlink_kib(gpu, t)
        gpu.nvlink_offset_kib = (kib - tx, kib - rx)

    def _mem_used(self, gpu: _FakeGpu, t: float) -> int:
        if gpu.mig is not None:
            return sum(self._mig_mem_used(gpu, m, t) for m in gpu.mig)
        return 1024 * _MIB + int(self._util(gpu, t) / 100 * 0.7 * self._mem_total)

    def _mig_mem_used(self, gpu: _FakeGpu, mig: FakeMig, t: float) -> int:
        return 64 * _MIB + int(self._util(gpu, t) / 100 * 0.7 * mig.profile.memory_mb * _MIB)

    # -- the pynvml surface -------------------------------------------------------------------

    def _check_init(self) -> None:
        if not self._initialized:
            raise self.NVMLError_Uninitialized()

    def _device(self, handle: Any, function: str) -> _FakeGpu:
        """The GPU of a GPU handle; NotSupported for a MIG device's handle."""
        gpu, mig = self._resolve(handle, function)
        if mig is not None:
            raise self.NVMLError_NotSupported()
        return gpu

    def _resolve(self, handle: Any, function: str) -> tuple[_FakeGpu, FakeMig | None]:
        """The GPU, and the MIG device when ``handle`` is one's."""
        self._check_init()
        mig = self._migs.get(id(handle))
        if mig is not None:
            gpu = self._gpus[mig.gpu_index]
        else:
            gpu = self._by_handle_id.get(id(handle)) or self._by_address(handle)
        self.calls[(function, gpu.index)] += 1
        if function in self._missing:
            raise self.NVMLError_FunctionNotFound()
        if gpu.lost:
            raise self.NVMLError_GpuIsLost()
        if function in gpu.unsupported:
            raise self.NVMLError_NotSupported()
        if mig is not None and mig.destroyed:
            raise self.NVMLError_InvalidArgument()
        return gpu, mig

    def _mig_device(self, handle: Any, function: str) -> tuple[_FakeGpu, FakeMig]:
        """The MIG device of a MIG device's handle; InvalidArgument for a GPU's."""
        gpu, mig = self._resolve(handle, function)
        if mig is None:
            raise self.NVMLError_InvalidArgument()
        return gpu, mig

    def _by_address(self, handle: Any) -> _FakeGpu:
        # A copy of a handle (event data carries one): compare the pointer values.
        address = ctypes.cast(handle, ctypes.c_void_p).value
        for gpu in self._gpus:
            if gpu.address == address:
                return gpu
        raise self.NVMLError_InvalidArgument()

    def nvmlInit(self) -> None:
        """Fails according to ``mode``."""
        if self._mode == "no_library":
            raise self.NVMLError_LibraryNotFound()
        if self._mode == "no_driver":
            raise self.NVMLError_DriverNotLoaded()
        if self._mode == "no_permission":
            raise self.NVMLError_NoPermission()
        self._initialized += 1

    def nvmlShutdown(self) -> None:
        """Balance one :meth:`nvmlInit`."""
        self._check_init()
        self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        """The configured driver version."""
        self._check_init()
        return self._driver

    def nvmlDeviceGetCount(self) -> int:
        """Number of fake GPUs."""
        self._check_init()
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        """An opaque ``c_nvmlDevice_t`` like the real one (never dereferenced)."""
        self._check_init()
        if not 0 <= index < len(self._gpus):
            raise self.NVMLError_InvalidArgument()
        return self._handles[index]

    def nvmlDeviceGetName(self, handle: Any) -> str:
        """Marketing name."""
        self._device(handle, "nvmlDeviceGetName")
        return self._name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        """``GPU-<uuid4>``, fixed by the seed; a MIG device's ``MIG-<uuid>``."""
        gpu, mig = self._resolve(handle, "nvmlDeviceGetUUID")
        if mig is None:
            return gpu.uuid
        # Fixed by the GPU and the instance's handle: a recreated instance gets a new one.
        return f"MIG-{uuid.uuid5(uuid.UUID(gpu.uuid.removeprefix('GPU-')), str(mig.address))}"

    def nvmlDeviceGetSerial(self, handle: Any) -> str:
        """Board serial number."""
        return self._device(handle, "nvmlDeviceGetSerial").serial

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        """``nvmlPciInfo_t`` with the DGX H100 bus ids."""
        gpu = self._device(handle, "nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        info.domain, info.bus, info.device = 0, gpu.bus, 0
        info.busId = f"00000000:{gpu.bus:02X}:00.0".encode()
        return info

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        """Power limit in mW."""
        self._device(handle, "nvmlDeviceGetEnforcedPowerLimit")
        return round(self._limit_w * 1000)

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        """``[current, pending]``: enabled where ``mig`` gave the GPU a layout."""
        gpu = self._device(handle, "nvmlDeviceGetMigMode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig is not None else 0
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        """7, MIG mode or not (an H100)."""
        self._device(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return MAX_MIG_DEVICES

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        """The ``index``-th MIG device, NotFound past the last one (or outside MIG mode)."""
        gpu = self._device(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not 0 <= index < MAX_MIG_DEVICES:
            raise self.NVMLError_InvalidArgument()
        if gpu.mig is None or index >= len(gpu.mig):
            raise self.NVMLError_NotFound()
        mig = gpu.mig[index]
        mig_handle = self._mig_handles.get(mig.address)
        if mig_handle is None:  # one handle per MIG device, as for GPUs: ids stay unique
            mig_handle = ctypes.cast(ctypes.c_void_p(mig.address), pynvml.c_nvmlDevice_t)
            self._mig_handles[mig.address] = mig_handle
            self._migs[id(mig_handle)] = mig
        return mig_handle

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        """A MIG device's GPU instance id."""
        return self._mig_device(handle, "nvmlDeviceGetGpuInstanceId")[1].gi_id

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        """A MIG device's compute instance id."""
        return self._mig_device(handle, "nvmlDeviceGetComputeInstanceId")[1].ci_id

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:
        """``c_nvmlDeviceAttributes`` of a MIG device (its compute instance spans its GPU
        instance); a whole GPU's has no instance slices."""
        _, mig = self._resolve(handle, "nvmlDeviceGetAttributes")
        if mig is None:
            whole = H100_PROFILES[4]
            return pynvml.c_nvmlDeviceAttributes(
                multiprocessorCount=whole.sms, memorySizeMB=self._mem_total // _MIB
            )
        p = mig.profile
        return pynvml.c_nvmlDeviceAttributes(
            multiprocessorCount=p.sms,
            sharedCopyEngineCount=p.copy_engines,
            sharedDecoderCount=p.decoders,
            sharedEncoderCount=0,
            sharedJpegCount=p.jpegs,
            sharedOfaCount=p.ofas,
            gpuInstanceSliceCount=p.slices,
            computeInstanceSliceCount=p.slices,
            memorySizeMB=p.memory_mb,
        )

    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, handle: Any, profile: int, version: int = 2
    ) -> Any:
        """``c_nvmlGpuInstanceProfileInfo_v2_t`` (``version=1``: the v1 struct, no name);
        NotSupported for a profile an H100 lacks or outside MIG mode."""
        function = (
            "nvmlDeviceGetGpuInstanceProfileInfoV"
            if version == 2
            else "nvmlDeviceGetGpuInstanceProfileInfo"
        )
        gpu = self._device(handle, function)
        p = H100_PROFILES.get(profile)
        if gpu.mig is None or p is None:
            raise self.NVMLError_NotSupported()
        fields = {
            "id": p.id,
            "sliceCount": p.slices,
            "instanceCount": p.instances,
            "multiprocessorCount": p.sms,
            "copyEngineCount": p.copy_engines,
            "decoderCount": p.decoders,
            "jpegCount": p.jpegs,
            "ofaCount": p.ofas,
            "memorySizeMB": p.memory_mb,
        }
        if version == 1:
            return pynvml.c_nvmlGpuInstanceProfileInfo_t(**fields)
        info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
        for key, value in fields.items():
            setattr(info, key, value)
        info.name = p.name.encode()
        return info

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        """``c_nvmlMemory_v2_t`` when ``version`` is given, else ``c_nvmlMemory_t``."""
        function = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        gpu, mig = self._resolve(handle, function)
        if version and version != pynvml.nvmlMemory_v2:
            raise self.NVMLError_ArgumentVersionMismatch()
        t = self._clock.monotonic()
        if mig is not None:  # the GPU instance's memory; the driver's reservation is the GPU's
            used = self._mig_mem_used(gpu, mig, t)
            total, reserved = mig.profile.memory_mb * _MIB, 0
        else:
            used, total, reserved = self._mem_used(gpu, t), self._mem_total, _MEM_RESERVED
        if version:
            return pynvml.c_nvmlMemory_v2_t(
                version=version,
                total=total,
                reserved=reserved,
                free=total - reserved - used,
                used=used,
            )
        return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        """``c_nvmlUtilization_t`` (GPU and memory %); NotSupported in MIG mode."""
        gpu = self._device(handle, "nvmlDeviceGetUtilizationRates")
        if gpu.mig is not None:
            raise self.NVMLError_NotSupported()
        util = self._util(gpu, self._clock.monotonic())
        return pynvml.c_nvmlUtilization_t(gpu=round(util), memory=round(util * 0.6))

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        """Instantaneous power in mW."""
        gpu = self._device(handle, "nvmlDeviceGetPowerUsage")
        return round(self._power_w(gpu, self._clock.monotonic()) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        """Energy since "driver load" in mJ."""
        gpu = self._device(handle, "nvmlDeviceGetTotalEnergyConsumption")
        return int(gpu.energy_offset_mj + 1000 * self._energy_j(gpu, self._clock.monotonic()))

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        """GPU temperature in °C, rising with power."""
        gpu = self._device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise self.NVMLError_InvalidArgument()
        return round(30 + 0.07 * self._power_w(gpu, self._clock.monotonic()))

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        """SM clock in MHz (boost under load, idle clock otherwise), or the memory clock."""
        gpu = self._device(handle, "nvmlDeviceGetClockInfo")
        if clock_type == pynvml.NVML_CLOCK_MEM:
            if "NVML_CLOCK_MEM" in gpu.unsupported:
                raise self.NVMLError_NotSupported()
            return _HBM3_CLOCK_MHZ
        if clock_type != pynvml.NVML_CLOCK_SM:
            raise self.NVMLError_InvalidArgument()
        return 1980 if self._util(gpu, self._clock.monotonic()) >= 5 else 345

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[Any]) -> Any:
        """``c_nvmlFieldValue_t`` per field id (or ``(field id, scope id)``, as pynvml takes
        them): memory temperature (°C, rising with power, 5 °C above the GPU's), the NVLink
        count, and the NVLink data counters (KiB; scope UINT_MAX: every link, a link id: its
        share); any other field's status is NotSupported."""
        gpu = self._device(handle, "nvmlDeviceGetFieldValues")
        t = self._clock.monotonic()
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for fv, requested in zip(values, field_ids, strict=True):
            field_id, scope = requested if isinstance(requested, tuple) else (requested, 0)
            fv.fieldId, fv.scopeId = field_id, scope
            fv.timestamp = round(self._clock.time() * 1e6)
            value = self._field(gpu, field_id, scope, t)
            if value is None:
                fv.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                fv.nvmlReturn = pynvml.NVML_SUCCESS
                fv.valueType, attr, number = value
                setattr(fv.value, attr, number)
        return values

    def _field(
        self, gpu: _FakeGpu, field_id: int, scope: int, t: float
    ) -> tuple[int, str, int] | None:
        """(value type, union member, value) of one field, ``None``: NotSupported."""
        if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP:
            if "NVML_FI_DEV_MEMORY_TEMP" in gpu.unsupported:
                return None
            temp = round(35 + 0.07 * self._power_w(gpu, t))
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal", temp
        links = self._nvlink_links
        if "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX" in gpu.unsupported:
            links = 0
        if field_id == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, "uiVal", links
        throughput = (
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        )
        if field_id not in throughput or not links or (scope != _ALL_LINKS and scope >= links):
            return None
        kib = self._nvlink_kib(gpu, t)[throughput.index(field_id)]
        share = kib if scope == _ALL_LINKS else kib / links
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, "ullVal", int(share)

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        """``[utilisation %, sampling period us]``: a little video encoding with the load."""
        gpu = self._device(handle, "nvmlDeviceGetEncoderUtilization")
        return [round(self._util(gpu, self._clock.monotonic()) * 0.05), _CODEC_PERIOD_US]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        """``[utilisation %, sampling period us]``: data-loader decoding, twice the encoder."""
        gpu = self._device(handle, "nvmlDeviceGetDecoderUtilization")
        return [round(self._util(gpu, self._clock.monotonic()) * 0.1), _CODEC_PERIOD_US]

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        """PCIe replays since driver load: the GPU's index (constant)."""
        return self._device(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replays

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        """Bitmask: GPU idle, or software power cap near the limit."""
        return self._reasons(self._device(handle, "nvmlDeviceGetCurrentClocksEventReasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        """The pre-R535 name of :meth:`nvmlDeviceGetCurrentClocksEventReasons`."""
        return self._reasons(self._device(handle, "nvmlDeviceGetCurrentClocksThrottleReasons"))

    def _reasons(self, gpu: _FakeGpu) -> int:
        t = self._clock.monotonic()
        if self._util(gpu, t) < 5:
            return _GPU_IDLE
        return _SW_POWER_CAP if self._power_w(gpu, t) >= 0.95 * self._limit_w else 0

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        """P0 under load, P8 idle."""
        gpu = self._device(handle, "nvmlDeviceGetPerformanceState")
        return 0 if self._util(gpu, self._clock.monotonic()) >= 5 else 8

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        """One training process per GPU from 10 % load on (or what :meth:`set_processes`
        set). In MIG mode one per MIG device, on its own handle, with its instance ids; the
        GPU's handle answers them all only with ``mig_aggregate`` (NVML: "only if the caller
        has appropriate privileges"), else NoPermission."""
        function = "nvmlDeviceGetComputeRunningProcesses"
        gpu, mig = self._resolve(handle, function)
        if gpu.mig is None:
            if mig is not None:  # pragma: no cover (no MIG handle outside MIG mode)
                raise self.NVMLError_InvalidArgument()
            return [_process(pid, used, None) for pid, used, _ in self._running(gpu)]
        if mig is None and not self._mig_aggregate:
            raise self.NVMLError_NoPermission()
        if mig is not None and not self._mig_processes:
            raise self.NVMLError_NotSupported()  # per-instance queries: not in vGPU host mode
        by_gi = {m.gi_id: m for m in gpu.mig}
        return [
            _process(pid, used, by_gi.get(gi) if gi is not None else None)
            for pid, used, gi in self._running(gpu)
            if mig is None or gi == mig.gi_id
        ]

    def _running(self, gpu: _FakeGpu) -> list[tuple[int, int, int | None]]:
        """``(pid, used bytes, GPU instance id)`` of what runs on ``gpu`` now."""
        chosen = self._processes.get(gpu.index)
        if chosen is not None:
            return chosen
        t = self._clock.monotonic()
        if self._util(gpu, t) < 10:
            return []
        if gpu.mig is None:
            return [(4000 + gpu.index, self._mem_used(gpu, t) - 512 * _MIB, None)]
        return [
            (10_000 + 100 * gpu.index + m.gi_id, self._mig_mem_used(gpu, m, t) - 32 * _MIB, m.gi_id)
            for m in gpu.mig
        ]

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter_type: int) -> int:
        """No ECC errors (a healthy GPU)."""
        self._device(handle, "nvmlDeviceGetTotalEccErrors")
        return 0

    def nvmlDeviceGetRemappedRows(self, handle: Any) -> tuple[int, int, int, int]:
        """``(correctable, uncorrectable, pending, failure)``: none."""
        self._device(handle, "nvmlDeviceGetRemappedRows")
        return (0, 0, 0, 0)

    def nvmlEventSetCreate(self) -> Any:
        """A new, empty event set."""
        self._check_init()
        event_set = _EventSet()
        with self._lock:
            self._event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        """Only XID events are modelled."""
        gpu = self._device(handle, "nvmlDeviceRegisterEvents")
        if not event_types & pynvml.nvmlEventTypeXidCriticalError:
            raise self.NVMLError_NotSupported()
        with self._lock:
            event_set.gpus.add(gpu.index)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        """Block up to ``timeout_ms`` (real time) for an event, else ``NVMLError_Timeout``."""
        self._check_init()
        with self._lock:
            self._lock.wait_for(lambda: event_set.pending or event_set.freed, timeout_ms / 1000)
            if event_set.freed or not event_set.pending:
                raise self.NVMLError_Timeout()
            index, xid = event_set.pending.popleft()
        data = pynvml.c_nvmlEventData_t()
        data.device = self.nvmlDeviceGetHandleByIndex(index)
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = xid
        return data

    def nvmlEventSetFree(self, event_set: Any) -> None:
        """Release an event set."""
        self._check_init()
        with self._lock:
            event_set.freed = True
            self._event_sets.remove(event_set)
            self._lock.notify_all()
