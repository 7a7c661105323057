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
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pynvml

from agent.fake_events import XidEvents
from agent.fake_gpu import MIB, FakeGpu, Profile
from agent.fake_mig import H100_PROFILES, MAX_MIG_DEVICES, FakeMig, attributes, layout, profile_info
from shared.clock import Clock, SystemClock

__all__ = ["FakeMode", "FakeNvml"]

FakeMode = Literal["ok", "no_library", "no_driver", "no_permission"]

_DGX_H100_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
_GPU_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle
_SW_POWER_CAP = 0x4  # nvmlClocksEventReasonSwPowerCap
_HBM3_CLOCK_MHZ = 2619  # H100 SXM's memory clock, the same under load and idle
_MEM_RESERVED = 512 * MIB
_CODEC_PERIOD_US = 167_000  # NVML's encoder/decoder sampling period on recent GPUs


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
        mem_total_bytes: int = 81_559 * MIB,
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
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._name = name
        self._profile = Profile(
            load_pct, power_limit_w, idle_power_w, mem_total_bytes, nvlink_links
        )
        self._driver = driver_version
        self._mode = mode
        self._missing = frozenset(missing_functions)
        self._initialized = 0
        self._events = XidEvents()
        self.calls: Counter[tuple[str, int]] = Counter()
        """Device calls made, by ``(pynvml function name, gpu index)``."""
        self._mig_aggregate = mig_aggregate
        self._mig_processes = mig_processes
        self._migs: dict[int, FakeMig] = {}  # id(handle) -> MIG device
        self._mig_handles: dict[int, Any] = {}  # address -> the MIG device's handle

        rng = random.Random(seed)
        unsupported = unsupported or {}
        self._gpus: list[FakeGpu] = []
        self._handles: list[Any] = []
        self._by_handle_id: dict[int, FakeGpu] = {}
        now = self._clock.monotonic()
        for i in range(gpus):
            gpu = FakeGpu(
                index=i,
                address=0x7F00_0000 + 0x1000 * i,
                uuid=f"GPU-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                serial=f"1654{seed % 1000:03d}{i:06d}",
                bus=_DGX_H100_BUSES[i] if gpus <= len(_DGX_H100_BUSES) else 0x10 + i,
                phase=rng.uniform(0.0, 2 * math.pi),
                omega=2 * math.pi / rng.uniform(60.0, 180.0),
                unsupported=frozenset(unsupported.get(i, ())),
                pcie_replays=i,  # a few replays since driver load; each GPU its own count
                profile=self._profile,
            )
            # The counter starts where a driver loaded some hours ago would be.
            gpu.set_energy(now, rng.uniform(1e9, 5e9))
            # Some TiB moved since driver load, each GPU its own (not drawn from the seed's
            # generator: the fleet a seed gives stays as it was).
            gpu.set_nvlink(now, float((i + 1) << 32))
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
            g.set_energy(now, 0.0)

    def reset_nvlink(self, gpu: int | None = None) -> None:
        """Restart the NVLink data counters at 0, as a driver reload does (all GPUs if
        ``None``)."""
        now = self._clock.monotonic()
        for g in self._gpus if gpu is None else [self._gpus[gpu]]:
            g.set_nvlink(now, 0.0)

    def nvlink_bytes_per_s(self, gpu: int) -> tuple[float, float]:
        """The fake's true NVLink (tx, rx) rate of ``gpu`` now, in B/s."""
        return self._gpus[gpu].nvlink_bytes_per_s(self._clock.monotonic())

    def inject_xid(self, gpu: int, xid: int) -> None:
        """Raise XID ``xid`` on ``gpu``: every event set registered for it will deliver it."""
        self._events.inject(gpu, xid)

    def set_processes(
        self, gpu: int, processes: Iterable[tuple[int, int] | tuple[int, int, int]] | None
    ) -> None:
        """From now on ``gpu`` runs these ``(pid, used bytes)`` (a real process's PID, say),
        whatever its load, or ``(pid, used bytes, GPU instance id)`` on a GPU in MIG mode;
        ``None``: back to the profile's training processes."""
        self._gpus[gpu].processes = (
            None
            if processes is None
            else [(p[0], p[1], p[2] if len(p) > 2 else None) for p in processes]
        )

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
        return self._gpus[gpu].power_w(self._clock.monotonic())

    # -- the pynvml surface -------------------------------------------------------------------

    def _check_init(self) -> None:
        if not self._initialized:
            raise self.NVMLError_Uninitialized()

    def _device(self, handle: Any, function: str) -> FakeGpu:
        """The GPU of a GPU handle; NotSupported for a MIG device's handle."""
        gpu, mig = self._resolve(handle, function)
        if mig is not None:
            raise self.NVMLError_NotSupported()
        return gpu

    def _resolve(self, handle: Any, function: str) -> tuple[FakeGpu, FakeMig | None]:
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

    def _mig_device(self, handle: Any, function: str) -> tuple[FakeGpu, FakeMig]:
        """The MIG device of a MIG device's handle; InvalidArgument for a GPU's."""
        gpu, mig = self._resolve(handle, function)
        if mig is None:
            raise self.NVMLError_InvalidArgument()
        return gpu, mig

    def _by_address(self, handle: Any) -> FakeGpu:
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
        return round(self._profile.limit_w * 1000)

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
        mig_profile = None if mig is None else mig.profile
        return attributes(mig_profile, self._profile.mem_total // MIB)

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
        return profile_info(p, version)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        """``c_nvmlMemory_v2_t`` when ``version`` is given, else ``c_nvmlMemory_t``."""
        function = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        gpu, mig = self._resolve(handle, function)
        if version and version != pynvml.nvmlMemory_v2:
            raise self.NVMLError_ArgumentVersionMismatch()
        t = self._clock.monotonic()
        if mig is not None:  # the GPU instance's memory; the driver's reservation is the GPU's
            used = gpu.mig_mem_used(mig, t)
            total, reserved = mig.profile.memory_mb * MIB, 0
        else:
            used, total, reserved = gpu.mem_used(t), self._profile.mem_total, _MEM_RESERVED
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
        util = gpu.util(self._clock.monotonic())
        return pynvml.c_nvmlUtilization_t(gpu=round(util), memory=round(util * 0.6))

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        """Instantaneous power in mW."""
        gpu = self._device(handle, "nvmlDeviceGetPowerUsage")
        return round(gpu.power_w(self._clock.monotonic()) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        """Energy since "driver load" in mJ."""
        gpu = self._device(handle, "nvmlDeviceGetTotalEnergyConsumption")
        return gpu.energy_mj(self._clock.monotonic())

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        """GPU temperature in °C, rising with power."""
        gpu = self._device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise self.NVMLError_InvalidArgument()
        return round(30 + 0.07 * gpu.power_w(self._clock.monotonic()))

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        """SM clock in MHz (boost under load, idle clock otherwise), or the memory clock."""
        gpu = self._device(handle, "nvmlDeviceGetClockInfo")
        if clock_type == pynvml.NVML_CLOCK_MEM:
            if "NVML_CLOCK_MEM" in gpu.unsupported:
                raise self.NVMLError_NotSupported()
            return _HBM3_CLOCK_MHZ
        if clock_type != pynvml.NVML_CLOCK_SM:
            raise self.NVMLError_InvalidArgument()
        return 1980 if gpu.busy(self._clock.monotonic()) else 345

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
            value = gpu.field_value(field_id, scope, t)
            if value is None:
                fv.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                fv.nvmlReturn = pynvml.NVML_SUCCESS
                fv.valueType, attr, number = value
                setattr(fv.value, attr, number)
        return values

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        """``[utilisation %, sampling period us]``: a little video encoding with the load."""
        gpu = self._device(handle, "nvmlDeviceGetEncoderUtilization")
        return [round(gpu.util(self._clock.monotonic()) * 0.05), _CODEC_PERIOD_US]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        """``[utilisation %, sampling period us]``: data-loader decoding, twice the encoder."""
        gpu = self._device(handle, "nvmlDeviceGetDecoderUtilization")
        return [round(gpu.util(self._clock.monotonic()) * 0.1), _CODEC_PERIOD_US]

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        """PCIe replays since driver load: the GPU's index (constant)."""
        return self._device(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replays

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        """Bitmask: GPU idle, or software power cap near the limit."""
        return self._reasons(self._device(handle, "nvmlDeviceGetCurrentClocksEventReasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        """The pre-R535 name of :meth:`nvmlDeviceGetCurrentClocksEventReasons`."""
        return self._reasons(self._device(handle, "nvmlDeviceGetCurrentClocksThrottleReasons"))

    def _reasons(self, gpu: FakeGpu) -> int:
        t = self._clock.monotonic()
        if not gpu.busy(t):
            return _GPU_IDLE
        return _SW_POWER_CAP if gpu.power_w(t) >= 0.95 * self._profile.limit_w else 0

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        """P0 under load, P8 idle."""
        gpu = self._device(handle, "nvmlDeviceGetPerformanceState")
        return 0 if gpu.busy(self._clock.monotonic()) else 8

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
            return [
                _process(pid, used, None) for pid, used, _ in gpu.running(self._clock.monotonic())
            ]
        if mig is None and not self._mig_aggregate:
            raise self.NVMLError_NoPermission()
        if mig is not None and not self._mig_processes:
            raise self.NVMLError_NotSupported()  # per-instance queries: not in vGPU host mode
        by_gi = {m.gi_id: m for m in gpu.mig}
        return [
            _process(pid, used, by_gi.get(gi) if gi is not None else None)
            for pid, used, gi in gpu.running(self._clock.monotonic())
            if mig is None or gi == mig.gi_id
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
        return self._events.create()

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        """Only XID events are modelled."""
        gpu = self._device(handle, "nvmlDeviceRegisterEvents")
        if not event_types & pynvml.nvmlEventTypeXidCriticalError:
            raise self.NVMLError_NotSupported()
        self._events.register(event_set, gpu.index)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        """Block up to ``timeout_ms`` (real time) for an event, else ``NVMLError_Timeout``."""
        self._check_init()
        event = self._events.wait(event_set, timeout_ms / 1000)
        if event is None:
            raise self.NVMLError_Timeout()
        data = pynvml.c_nvmlEventData_t()
        data.device = self.nvmlDeviceGetHandleByIndex(event[0])
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = event[1]
        return data

    def nvmlEventSetFree(self, event_set: Any) -> None:
        """Release an event set."""
        self._check_init()
        self._events.free(event_set)
