"""GPU sampling behind a small backend interface; the real one talks to NVML.

NVML: NVIDIA's NVML API Reference Guide (docs.nvidia.com/deploy/nvml-api/), through
NVIDIA's Python bindings (``nvidia-ml-py``, module ``pynvml``).

:class:`NvmlBackend` takes the NVML module as a parameter: ``pynvml`` on a GPU node,
:class:`agent.fake_nvml.FakeNvml` in tests and demos. A node without a library, a driver or a
GPU is normal: the backend reports zero GPUs, says why once, and never raises.
"""

# ruff: noqa: N802, N815  (NvmlModule mirrors pynvml's names)

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeVar

from agent.bounds import Bounds
from agent.mig import GiProfile, gi_profile, profile_name
from agent.rates import CounterRate
from shared.clock import Clock, SystemClock
from shared.logging import get_logger
from shared.schema import (
    GPU_UUID_PATTERN,
    MAX_CLOCK_EVENT_REASONS,
    MAX_CLOCK_MHZ,
    MAX_COUNTER,
    MAX_ENERGY_J,
    MAX_GPU_MEM_BYTES,
    MAX_GPU_POWER_W,
    MAX_GPUS,
    MAX_MIG_DEVICES,
    MAX_MIG_INSTANCE_ID,
    MAX_MODEL_NAME_LEN,
    MAX_PCIE_REPLAYS,
    MAX_PID,
    MAX_PROCESSES_PER_GPU,
    MAX_PSTATE,
    MAX_SERIAL_LEN,
    MAX_TEMP_C,
    MAX_VERSION_LEN,
    MAX_XID,
    MAX_XIDS,
    MIG_PROFILE_PATTERN,
    MIN_TEMP_C,
    PCI_BUS_ID_PATTERN,
    GpuEcc,
    GpuInfo,
    GpuProcess,
    GpuRemappedRows,
    GpuSample,
    MigSample,
    XidEvent,
)

__all__ = [
    "OPTIONAL_NVML_SYMBOLS",
    "GpuBackend",
    "GpuInventory",
    "GpuStatus",
    "NullGpuBackend",
    "NvmlBackend",
    "NvmlModule",
]

GpuStatus = Literal["ok", "no_gpu", "no_library", "no_driver", "no_permission", "error", "disabled"]
"""``ok``, or why there are no GPUs; goes to ``Inventory.gpu_status``."""

OPTIONAL_NVML_SYMBOLS: Final = (
    "NVMLLibraryMismatchError",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)
"""pynvml names some nvidia-ml-py releases lack: the backend works without each of them."""

_CLOCK_REASONS_CALLS: Final = (
    ("clocks_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons"),
    ("clocks_throttle_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
)

_MIG_SYMBOLS: Final = (
    "NVMLError_NotFound",
    "NVMLError_InvalidArgument",
    "NVML_GPU_INSTANCE_PROFILE_COUNT",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetAttributes",
    "nvmlDeviceGetGpuInstanceProfileInfo",
)
"""What MIG enumeration needs: in every nvidia-ml-py since 11.450 (the floor has them all);
a binding without one reads no MIG devices rather than failing."""

_UUID_RE: Final = re.compile(GPU_UUID_PATTERN)
_PCI_BUS_ID_RE: Final = re.compile(PCI_BUS_ID_PATTERN)
_MIG_PROFILE_RE: Final = re.compile(MIG_PROFILE_PATTERN)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GpuInventory:
    """What :meth:`GpuBackend.start` found."""

    status: GpuStatus
    driver: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)


class GpuBackend(Protocol):
    """Where GPU samples come from. Calls come from one thread, except that the backend may
    run its own threads (XID events) until :meth:`close`."""

    def start(self) -> GpuInventory:
        """Open the library and read the static facts; never raises for "no GPUs here"."""
        ...

    def sample(self, now_mono: float, slow: bool) -> list[GpuSample]:
        """One sample per GPU; ``slow`` adds ECC counters and remapped rows."""
        ...

    def drain_xids(self) -> list[XidEvent]:
        """XID errors seen since the previous call, oldest first."""
        ...

    def close(self) -> None:
        """Stop background threads and release the library; safe to call twice."""
        ...


class NullGpuBackend:
    """No GPU sampling at all (``gpu_backend = "none"``)."""

    def start(self) -> GpuInventory:
        """Zero GPUs, status ``disabled``."""
        return GpuInventory(status="disabled")

    def sample(self, now_mono: float, slow: bool) -> list[GpuSample]:
        """Always empty."""
        return []

    def drain_xids(self) -> list[XidEvent]:
        """Always empty."""
        return []

    def close(self) -> None:
        """Nothing to release."""


class NvmlModule(Protocol):
    """The subset of ``pynvml`` (nvidia-ml-py) that :class:`NvmlBackend` needs in every release.

    Struct results (utilisation, memory, PCI info, event data) are typed ``Any`` as pynvml
    returns ctypes structures. Not listed here, because some releases lack them, the backend
    looks these up with ``getattr`` (:data:`OPTIONAL_NVML_SYMBOLS`): ``NVMLLibraryMismatchError``
    (12.550 on), ``nvmlDeviceGetCurrentClocksEventReasons`` (12.535 on) and
    ``nvmlDeviceGetCurrentClocksThrottleReasons`` (deprecated, to be removed with CUDA 14).
    """

    NVMLError: type[Exception]
    NVMLError_NotSupported: type[Exception]
    NVMLError_FunctionNotFound: type[Exception]
    NVMLError_ArgumentVersionMismatch: type[Exception]
    NVMLError_LibraryNotFound: type[Exception]
    NVMLError_DriverNotLoaded: type[Exception]
    NVMLError_NoPermission: type[Exception]
    NVMLError_GpuIsLost: type[Exception]
    NVMLError_Timeout: type[Exception]
    NVMLError_NotFound: type[Exception]
    NVMLError_InvalidArgument: type[Exception]

    NVML_TEMPERATURE_GPU: int
    NVML_CLOCK_SM: int
    NVML_CLOCK_MEM: int
    NVML_FI_DEV_MEMORY_TEMP: int
    NVML_SUCCESS: int
    NVML_ERROR_NOT_SUPPORTED: int
    NVML_VALUE_TYPE_DOUBLE: int
    NVML_VALUE_TYPE_UNSIGNED_INT: int
    NVML_VALUE_TYPE_UNSIGNED_LONG: int
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: int
    NVML_VALUE_TYPE_SIGNED_LONG_LONG: int
    NVML_MEMORY_ERROR_TYPE_CORRECTED: int
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED: int
    NVML_VOLATILE_ECC: int
    NVML_AGGREGATE_ECC: int
    NVML_DEVICE_MIG_ENABLE: int
    NVML_GPU_INSTANCE_PROFILE_COUNT: int
    nvmlMemory_v2: int
    nvmlEventTypeXidCriticalError: int

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any, /) -> str: ...
    def nvmlDeviceGetUUID(self, handle: Any, /) -> str: ...
    def nvmlDeviceGetSerial(self, handle: Any, /) -> str: ...
    def nvmlDeviceGetPciInfo(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetMigMode(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int, /) -> Any: ...
    def nvmlDeviceGetGpuInstanceId(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetComputeInstanceId(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetAttributes(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, handle: Any, profile: int, version: int = 2, /
    ) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None, /) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int, /) -> int: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int, /) -> int: ...
    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[int], /) -> Any: ...
    def nvmlDeviceGetEncoderUtilization(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetDecoderUtilization(self, handle: Any, /) -> Sequence[int]: ...
    def nvmlDeviceGetPcieReplayCounter(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetPerformanceState(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any, /) -> list[Any]: ...
    def nvmlDeviceGetTotalEccErrors(
        self, handle: Any, error_type: int, counter_type: int, /
    ) -> int: ...
    def nvmlDeviceGetRemappedRows(self, handle: Any, /) -> tuple[int, int, int, int]: ...
    def nvmlEventSetCreate(self) -> Any: ...
    def nvmlDeviceRegisterEvents(
        self, handle: Any, event_types: int, event_set: Any, /
    ) -> None: ...
    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int, /) -> Any: ...
    def nvmlEventSetFree(self, event_set: Any, /) -> None: ...


@dataclass(slots=True, eq=False)
class _Device:
    index: int
    handle: Any
    uuid: str
    bounds: Bounds
    """Range checks of this GPU's readings; their log lines carry ``gpu=<index>``."""
    unsupported: set[str] = field(default_factory=set)
    """Fields NVML said NotSupported (or lacks the function for): never asked again."""
    logged_errors: set[tuple[str, str]] = field(default_factory=set)
    energy: CounterRate = field(default_factory=CounterRate)
    lost: bool = False
    mig_enabled: bool = False
    is_mig: bool = False
    """A MIG device's handle (of the GPU ``index``)."""
    migs: list[_Mig] = field(default_factory=list)
    """The MIG devices found at the last enumeration, by GPU instance id."""
    mig_stale: bool = False
    """A MIG device stopped answering: enumerate again at the next sample."""
    gi_profiles: tuple[GiProfile, ...] | None = None
    """The GPU's GPU instance profiles, read once."""


@dataclass(slots=True, eq=False)
class _Mig:
    dev: _Device
    """The MIG device's handle, with its own unsupported fields and logged errors."""
    gi_id: int
    ci_id: int
    profile: str | None


class NvmlBackend:
    """GPU samples from NVML (or anything shaped like it, see :class:`NvmlModule`).

    ``nvml=None`` imports ``pynvml`` at :meth:`start`. XID events are collected by a daemon
    thread blocked in ``nvmlEventSetWait_v2`` for at most ``xid_wait_ms`` at a time, which is
    also how long :meth:`close` may wait for it; at most ``xid_queue_max`` of them (up to the
    schema's ``MAX_XIDS``) wait for the next sample.

    Every reading is kept inside the wire schema's range (:mod:`agent.bounds`): one that is
    not becomes ``None``; GPUs past ``MAX_GPUS`` and a GPU whose UUID is not NVML's form are
    left out, since the collector would reject every sample that carried them.
    """

    def __init__(
        self,
        nvml: NvmlModule | None = None,
        *,
        clock: Clock | None = None,
        xid_wait_ms: int = 500,
        xid_queue_max: int = 1000,
    ) -> None:
        if not 1 <= xid_queue_max <= MAX_XIDS:
            raise ValueError(f"xid_queue_max must be within 1..{MAX_XIDS}, got {xid_queue_max}")
        self._nvml_arg = nvml
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._xid_wait_ms = xid_wait_ms
        self._log = get_logger("agent.gpu")
        self._bounds = Bounds(self._clock, self._log)
        self._inventory: GpuInventory | None = None
        self._initialized = False
        self._devices: list[_Device] = []
        self._uuid_index: dict[str, int] = {}
        self._xids: deque[XidEvent] = deque(maxlen=xid_queue_max)
        self._xids_dropped = 0
        self._stop = threading.Event()
        self._xid_thread: threading.Thread | None = None
        self._event_set: Any = None
        self._reasons_calls: tuple[tuple[str, Callable[[Any], int]], ...] = ()
        self._unsupported_errors: tuple[type[Exception], ...] = ()
        self._field_value_attrs: dict[int, str] = {}
        self._mig_readable = False

    @property
    def _nvml(self) -> NvmlModule:
        if self._nvml_arg is None:
            raise RuntimeError("NvmlBackend.start() has not run")
        return self._nvml_arg

    def start(self) -> GpuInventory:
        """Initialise NVML, read each GPU's static facts, start watching for XID errors."""
        if self._inventory is None:
            self._inventory = self._start()
        return self._inventory

    def _start(self) -> GpuInventory:
        if self._nvml_arg is None:
            try:
                import pynvml  # noqa: PLC0415  (optional at run time: CPU-only nodes lack it)
            except ImportError as exc:
                return self._unavailable("no_library", exc)
            self._nvml_arg = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError_LibraryNotFound as exc:
            return self._unavailable("no_library", exc)
        except nvml.NVMLError_DriverNotLoaded as exc:
            return self._unavailable("no_driver", exc)
        except nvml.NVMLError_NoPermission as exc:
            return self._unavailable("no_permission", exc)
        except nvml.NVMLError as exc:
            return self._unavailable("error", exc)
        self._initialized = True
        self._bind_optional_symbols(nvml)
        try:
            raw_driver = _text(nvml.nvmlSystemGetDriverVersion())
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            return self._unavailable("error", exc)
        driver: str | None = self._bounds.text(raw_driver, "gpu_driver", MAX_VERSION_LEN)
        if count > MAX_GPUS:
            self._bounds.truncated("gpus", kept=MAX_GPUS, dropped=count - MAX_GPUS)
        gpus = []
        for index in range(min(count, MAX_GPUS)):
            info = self._open_device(index)
            if info is not None:
                gpus.append(info)
        if not gpus:
            status: GpuStatus = "no_gpu" if count == 0 else "error"
            self._log.info("gpu_unavailable", status=status, gpus_found=count, driver=driver)
            return GpuInventory(status=status, driver=driver)
        self._log.info("gpu_backend_started", gpus=len(gpus), driver=driver)
        self._start_xid_watch()
        return GpuInventory(status="ok", driver=driver, gpus=gpus)

    def _bind_optional_symbols(self, nvml: NvmlModule) -> None:
        """Pick what this pynvml release has of :data:`OPTIONAL_NVML_SYMBOLS`."""
        missing = [name for name in OPTIONAL_NVML_SYMBOLS if not hasattr(nvml, name)]
        if missing:
            self._log.debug("nvml_binding_lacks_symbols", symbols=missing)
        mig_missing = [name for name in _MIG_SYMBOLS if not hasattr(nvml, name)]
        self._mig_readable = not mig_missing
        if mig_missing:
            self._log.info("nvml_binding_lacks_mig", symbols=mig_missing)
        # A release without the class cannot raise it, so leaving it out loses nothing.
        mismatch: type[Exception] | None = getattr(nvml, "NVMLLibraryMismatchError", None)
        self._unsupported_errors = (
            nvml.NVMLError_NotSupported,
            nvml.NVMLError_FunctionNotFound,
            nvml.NVMLError_ArgumentVersionMismatch,
            *((mismatch,) if mismatch is not None else ()),  # unversioned call, older driver
        )
        # c_nvmlValue_t's member for each value type a field may come back as.
        self._field_value_attrs = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        }
        # The newer name first (R535 drivers on); the older one is slated for removal.
        self._reasons_calls = tuple(
            (field_name, getattr(nvml, function))
            for field_name, function in _CLOCK_REASONS_CALLS
            if hasattr(nvml, function)
        )

    def _unavailable(self, status: GpuStatus, exc: BaseException) -> GpuInventory:
        self._log.info("gpu_unavailable", status=status, error=str(exc))
        return GpuInventory(status=status)

    def _open_device(self, index: int) -> GpuInfo | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            self._log.warning("gpu_open_failed", gpu=index, error=str(exc))
            return None
        bounds = Bounds(self._clock, self._log.bind(gpu=index))
        if bounds.matching(uuid, "gpus[].uuid", _UUID_RE) is None:
            return None  # every sample carrying it would be rejected
        dev = _Device(index=index, handle=handle, uuid=uuid, bounds=bounds)
        name = self._call(dev, "name", nvml.nvmlDeviceGetName)
        serial = self._call(dev, "serial", nvml.nvmlDeviceGetSerial)
        pci = self._call(dev, "pci_info", nvml.nvmlDeviceGetPciInfo)
        limit_mw = self._call(dev, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
        mig = self._call(dev, "mig_mode", nvml.nvmlDeviceGetMigMode)
        dev.mig_enabled = mig is not None and mig[0] == nvml.NVML_DEVICE_MIG_ENABLE
        mem = self._memory(dev)
        raw_name = _text(name) if name is not None else ""
        self._devices.append(dev)
        self._uuid_index[uuid] = index
        return GpuInfo(
            index=index,
            name=bounds.text(raw_name, "gpus[].name", MAX_MODEL_NAME_LEN, empty="unknown"),
            uuid=uuid,
            serial=bounds.name(_text(serial), "gpus[].serial", MAX_SERIAL_LEN) if serial else None,
            pci_bus_id=(
                bounds.matching(_text(pci.busId), "gpus[].pci_bus_id", _PCI_BUS_ID_RE)
                if pci is not None
                else None
            ),
            power_limit_w=_watts(bounds, "gpus[].power_limit_w", limit_mw),
            mig_mode=dev.mig_enabled if mig is not None else None,
            mem_total_bytes=(
                bounds.optional_int(mem.total, "gpus[].mem_total_bytes", MAX_GPU_MEM_BYTES)
                if mem is not None
                else None
            ),
        )

    def sample(self, now_mono: float, slow: bool) -> list[GpuSample]:
        """Read every GPU; a field a GPU does not support is ``None``.

        MIG devices are enumerated on slow ticks (the first sample is one) and after one
        stopped answering: an instance created in between shows from the next slow tick.
        """
        for dev in self._devices:
            if (slow or dev.mig_stale) and self._mig_readable and not dev.lost:
                self._enumerate_mig(dev)
        return [self._sample_device(dev, now_mono, slow) for dev in self._devices]

    def _sample_device(self, dev: _Device, now_mono: float, slow: bool) -> GpuSample:
        nvml = self._nvml
        call = self._call
        b = dev.bounds
        util = call(dev, "utilization", nvml.nvmlDeviceGetUtilizationRates)
        mem = self._memory(dev)
        power_mw = call(dev, "power", nvml.nvmlDeviceGetPowerUsage)
        energy_mj = call(dev, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption)
        interval_w = energy_j = None
        if energy_mj is not None:
            # mJ/s over the monotonic interval; a negative delta (driver reload) gives None.
            interval_w = _watts(
                b, "gpus[].power_interval_w", dev.energy.update(energy_mj, now_mono)
            )
            energy_j = b.optional(energy_mj / 1000, "gpus[].energy_j", MAX_ENERGY_J)
        temp = call(dev, "temperature", nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU)
        sm_clock = call(dev, "sm_clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM)
        mem_clock = call(dev, "mem_clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM)
        enc = call(dev, "encoder_utilization", nvml.nvmlDeviceGetEncoderUtilization)
        dec = call(dev, "decoder_utilization", nvml.nvmlDeviceGetDecoderUtilization)
        replays = call(dev, "pcie_replays", nvml.nvmlDeviceGetPcieReplayCounter)
        reasons = self._first(dev, *self._reasons_calls)
        pstate = call(dev, "pstate", nvml.nvmlDeviceGetPerformanceState)
        procs = call(dev, "processes", nvml.nvmlDeviceGetComputeRunningProcesses)
        return GpuSample(
            index=dev.index,
            uuid=dev.uuid,
            util_pct=b.optional(util.gpu, "gpus[].util_pct", 100.0) if util is not None else None,
            mem_util_pct=(
                b.optional(util.memory, "gpus[].mem_util_pct", 100.0) if util is not None else None
            ),
            mem_used_bytes=(
                b.optional_int(mem.used, "gpus[].mem_used_bytes", MAX_GPU_MEM_BYTES)
                if mem is not None
                else None
            ),
            mem_total_bytes=(
                b.optional_int(mem.total, "gpus[].mem_total_bytes", MAX_GPU_MEM_BYTES)
                if mem is not None
                else None
            ),
            power_w=_watts(b, "gpus[].power_w", power_mw),
            power_interval_w=interval_w,
            energy_j=energy_j,
            temp_c=b.optional(temp, "gpus[].temp_c", MAX_TEMP_C, MIN_TEMP_C),
            sm_clock_mhz=b.optional_int(sm_clock, "gpus[].sm_clock_mhz", MAX_CLOCK_MHZ),
            clock_event_reasons=b.optional_int(
                reasons, "gpus[].clock_event_reasons", MAX_CLOCK_EVENT_REASONS
            ),
            pstate=b.optional_int(pstate, "gpus[].pstate", MAX_PSTATE),
            processes=tuple(_processes(b, procs)) if procs else (),
            ecc=self._ecc(dev) if slow else None,
            remapped_rows=self._remapped_rows(dev) if slow else None,
            mem_clock_mhz=b.optional_int(mem_clock, "gpus[].mem_clock_mhz", MAX_CLOCK_MHZ),
            mem_temp_c=b.optional(
                self._memory_temp(dev), "gpus[].mem_temp_c", MAX_TEMP_C, MIN_TEMP_C
            ),
            # [utilisation %, sampling period in us]
            enc_util_pct=b.optional(enc[0], "gpus[].enc_util_pct", 100.0) if enc else None,
            dec_util_pct=b.optional(dec[0], "gpus[].dec_util_pct", 100.0) if dec else None,
            pcie_replays=b.optional_int(replays, "gpus[].pcie_replays", MAX_PCIE_REPLAYS),
            mem_reserved_bytes=(
                # Only the v2 struct has it: the v1 fallback (drivers before R510) leaves None.
                b.optional_int(
                    getattr(mem, "reserved", None), "gpus[].mem_reserved_bytes", MAX_GPU_MEM_BYTES
                )
                if mem is not None
                else None
            ),
            mig=tuple(self._sample_mig(dev)) if dev.migs else (),
        )

    def _enumerate_mig(self, dev: _Device) -> None:
        """Find ``dev``'s MIG devices (none outside MIG mode), their ids and profiles."""
        nvml = self._nvml
        dev.mig_stale = False
        mode = self._call(dev, "mig_mode", nvml.nvmlDeviceGetMigMode)
        enabled = mode is not None and mode[0] == nvml.NVML_DEVICE_MIG_ENABLE
        if enabled != dev.mig_enabled:  # utilisation's answer depends on the mode: ask again
            dev.unsupported -= {"utilization", "mig_utilization"}
            self._log.info("gpu_mig_mode", gpu=dev.index, enabled=enabled)
        dev.mig_enabled = enabled
        count = (
            self._call(dev, "mig_device_count", nvml.nvmlDeviceGetMaxMigDeviceCount)
            if dev.mig_enabled
            else None
        )
        migs: list[_Mig] = []
        if count and "mig_devices" not in dev.unsupported:
            if dev.gi_profiles is None:
                dev.gi_profiles = self._gi_profiles(dev)
            for slot in range(min(count, MAX_MIG_DEVICES)):
                try:
                    handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev.handle, slot)
                except nvml.NVMLError_NotFound:
                    continue  # an empty slot
                except self._unsupported_errors:
                    dev.unsupported.add("mig_devices")  # an older driver: never asked again
                    break
                except nvml.NVMLError as exc:
                    self._log_once(dev, "mig_device_handle", exc)
                    continue
                found = self._open_mig(dev, handle)
                if found is not None:
                    migs.append(found)
            migs.sort(key=lambda m: (m.gi_id, m.ci_id))
        layout = [(m.gi_id, m.ci_id, m.profile) for m in migs]
        if layout != [(m.gi_id, m.ci_id, m.profile) for m in dev.migs]:
            self._log.info("gpu_mig_devices", gpu=dev.index, devices=layout)
        dev.migs = migs

    def _open_mig(self, dev: _Device, handle: Any) -> _Mig | None:
        nvml = self._nvml
        mdev = _Device(
            index=dev.index, handle=handle, uuid=dev.uuid, bounds=dev.bounds, is_mig=True
        )
        b = dev.bounds
        gi = b.optional_int(
            self._call(mdev, "gpu_instance_id", nvml.nvmlDeviceGetGpuInstanceId),
            "gpus[].mig[].gi_id",
            MAX_MIG_INSTANCE_ID,
        )
        ci = b.optional_int(
            self._call(mdev, "compute_instance_id", nvml.nvmlDeviceGetComputeInstanceId),
            "gpus[].mig[].ci_id",
            MAX_MIG_INSTANCE_ID,
        )
        if gi is None or ci is None:  # required: a series without its instance is no use
            return None
        attrs = self._call(mdev, "attributes", nvml.nvmlDeviceGetAttributes)
        name = profile_name(attrs, dev.gi_profiles or ()) if attrs is not None else None
        profile = b.matching(name, "gpus[].mig[].profile", _MIG_PROFILE_RE) if name else None
        return _Mig(dev=mdev, gi_id=gi, ci_id=ci, profile=profile)

    def _gi_profiles(self, dev: _Device) -> tuple[GiProfile, ...]:
        """The GPU instance profiles ``dev`` offers (NVML answers NotSupported for the
        indices it lacks); the v1 struct, without names, on drivers before R470."""
        nvml = self._nvml
        get = nvml.nvmlDeviceGetGpuInstanceProfileInfo
        absent = (nvml.NVMLError_NotSupported, nvml.NVMLError_InvalidArgument)
        versions: tuple[int, ...] = (2, 1)
        profiles = []
        for index in range(nvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
            for version in versions:
                try:
                    info = get(dev.handle, index, version)
                except nvml.NVMLError_FunctionNotFound:
                    versions = (1,)  # no versioned call (before R470): no names either
                    continue
                except absent:
                    break  # not a profile of this GPU (or one this driver does not know)
                except nvml.NVMLError as exc:
                    self._log_once(dev, "gi_profile", exc)
                    break
                profiles.append(gi_profile(info))
                break
        return tuple(profiles)

    def _sample_mig(self, dev: _Device) -> list[MigSample]:
        b = dev.bounds
        out = []
        for m in dev.migs:
            mem = self._memory(m.dev)
            if mem is None and not {"memory", "memory_v2"} <= m.dev.unsupported:
                dev.mig_stale = True  # destroyed, most likely: enumerate again next tick
            util = None
            if "mig_utilization" not in dev.unsupported:  # NVML: NotSupported on MIG devices
                util = self._call(m.dev, "utilization", self._nvml.nvmlDeviceGetUtilizationRates)
                if "utilization" in m.dev.unsupported:
                    dev.unsupported.add("mig_utilization")  # for every MIG device of this GPU
            out.append(
                MigSample(
                    gi_id=m.gi_id,
                    ci_id=m.ci_id,
                    profile=m.profile,
                    mem_used_bytes=(
                        b.optional_int(mem.used, "gpus[].mig[].mem_used_bytes", MAX_GPU_MEM_BYTES)
                        if mem is not None
                        else None
                    ),
                    mem_total_bytes=(
                        b.optional_int(mem.total, "gpus[].mig[].mem_total_bytes", MAX_GPU_MEM_BYTES)
                        if mem is not None
                        else None
                    ),
                    util_pct=(
                        b.optional(util.gpu, "gpus[].mig[].util_pct", 100.0)
                        if util is not None
                        else None
                    ),
                )
            )
        return out

    def _memory(self, dev: _Device) -> Any:
        nvml = self._nvml
        get = nvml.nvmlDeviceGetMemoryInfo
        # v2 reports "used" without the driver's reservation; drivers before R510 lack it.
        return self._first(dev, ("memory_v2", get, nvml.nvmlMemory_v2), ("memory", get))

    def _memory_temp(self, dev: _Device) -> float | None:
        """``NVML_FI_DEV_MEMORY_TEMP`` in °C. NVML answers a field request per field: the call
        succeeds and the field's own status says NotSupported on GPUs without the sensor."""
        nvml = self._nvml
        name = "mem_temp"
        values = self._call(
            dev, name, nvml.nvmlDeviceGetFieldValues, [nvml.NVML_FI_DEV_MEMORY_TEMP]
        )
        if values is None:
            return None
        fv = values[0]
        if fv.nvmlReturn != nvml.NVML_SUCCESS:
            if fv.nvmlReturn == nvml.NVML_ERROR_NOT_SUPPORTED:
                dev.unsupported.add(name)
                self._log.debug("gpu_field_unsupported", gpu=dev.index, field=name)
            elif (name, str(fv.nvmlReturn)) not in dev.logged_errors:
                dev.logged_errors.add((name, str(fv.nvmlReturn)))
                self._log.warning(
                    "gpu_read_failed", gpu=dev.index, field=name, nvml_return=fv.nvmlReturn
                )
            return None
        attr = self._field_value_attrs.get(fv.valueType)
        if attr is None:  # a value type this agent does not know: garbage, not a temperature
            dev.bounds.rejected("gpus[].mem_temp_c", f"value type {fv.valueType}")
            return None
        value: float = getattr(fv.value, attr)
        return value

    def _ecc(self, dev: _Device) -> GpuEcc | None:
        nvml = self._nvml
        b = dev.bounds
        counts = {
            f"{kind}_{counter}": b.optional_int(
                self._call(
                    dev,
                    f"ecc_{kind}_{counter}",
                    nvml.nvmlDeviceGetTotalEccErrors,
                    error,
                    counter_type,
                ),
                f"gpus[].ecc.{kind}_{counter}",
                MAX_COUNTER,
            )
            for kind, error in (
                ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
            )
            for counter, counter_type in (
                ("volatile", nvml.NVML_VOLATILE_ECC),
                ("aggregate", nvml.NVML_AGGREGATE_ECC),
            )
        }
        return GpuEcc(**counts) if any(n is not None for n in counts.values()) else None

    def _remapped_rows(self, dev: _Device) -> GpuRemappedRows | None:
        rows = self._call(dev, "remapped_rows", self._nvml.nvmlDeviceGetRemappedRows)
        if rows is None:
            return None
        correctable, uncorrectable, pending, failure = rows
        b = dev.bounds
        # Both counts are required in the struct: a garbage one makes the reading unknown.
        if (
            b.optional_int(correctable, "gpus[].remapped_rows.correctable", MAX_COUNTER) is None
            or b.optional_int(uncorrectable, "gpus[].remapped_rows.uncorrectable", MAX_COUNTER)
            is None
        ):
            return None
        return GpuRemappedRows(
            correctable=correctable,
            uncorrectable=uncorrectable,
            pending=bool(pending),
            failure=bool(failure),
        )

    def _call(self, dev: _Device, name: str, fn: Callable[..., _T], *args: Any) -> _T | None:
        """``fn(handle, *args)``, or ``None`` for an unsupported field, a lost GPU, an error."""
        if dev.lost or name in dev.unsupported:
            return None
        nvml = self._nvml
        try:
            return fn(dev.handle, *args)
        except self._unsupported_errors:
            dev.unsupported.add(name)
            self._log.debug("gpu_field_unsupported", gpu=dev.index, field=name)
        except nvml.NVMLError_GpuIsLost:
            dev.lost = True
            self._log.error("gpu_lost", gpu=dev.index, uuid=dev.uuid, field=name)
        except nvml.NVMLError as exc:
            self._log_once(dev, name, exc)
        return None

    def _log_once(self, dev: _Device, name: str, exc: Exception) -> None:
        key = (name, type(exc).__name__)
        if key in dev.logged_errors:  # once per field and error, not every tick
            return
        dev.logged_errors.add(key)
        nvml = self._nvml
        if dev.is_mig and isinstance(exc, nvml.NVMLError_InvalidArgument | nvml.NVMLError_NotFound):
            # A destroyed MIG device's handle (MIG reconfigured): enumerated again next tick.
            self._log.info("gpu_mig_device_gone", gpu=dev.index, field=name)
        else:
            self._log.warning("gpu_read_failed", gpu=dev.index, field=name, error=str(exc))

    def _first(self, dev: _Device, *choices: tuple[Any, ...]) -> Any:
        """The first choice ``(name, fn, *args)`` the GPU supports (newer API, then older)."""
        for name, fn, *args in choices:
            value = self._call(dev, name, fn, *args)
            if value is not None or name not in dev.unsupported:
                return value
        return None

    def drain_xids(self) -> list[XidEvent]:
        """XID events since the last call (the oldest are dropped past ``xid_queue_max``)."""
        xids = self._xids
        events = [xids.popleft() for _ in range(len(xids))]  # later arrivals wait for next time
        dropped, self._xids_dropped = self._xids_dropped, 0
        if dropped:
            self._log.warning("xid_events_dropped", count=dropped)
        return events

    def _start_xid_watch(self) -> None:
        nvml = self._nvml
        try:
            event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            self._log.warning("xid_watch_unavailable", error=str(exc))
            return
        registered = 0
        for dev in self._devices:
            try:
                nvml.nvmlDeviceRegisterEvents(
                    dev.handle, nvml.nvmlEventTypeXidCriticalError, event_set
                )
                registered += 1
            except nvml.NVMLError as exc:
                self._log.info("xid_watch_unsupported", gpu=dev.index, error=str(exc))
        if not registered:
            self._free_event_set(event_set)
            return
        self._event_set = event_set
        self._xid_thread = threading.Thread(
            target=self._watch_xids, args=(event_set,), name="nvml-xid", daemon=True
        )
        self._xid_thread.start()

    def _watch_xids(self, event_set: Any) -> None:
        nvml = self._nvml
        failures = 0
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, self._xid_wait_ms)
            except nvml.NVMLError_Timeout:
                continue
            except nvml.NVMLError as exc:
                failures += 1
                if failures == 1:
                    self._log.warning("xid_wait_failed", error=str(exc))
                self._stop.wait(min(60.0, 0.5 * 2 ** min(failures, 7)))  # back off, keep trying
                continue
            if failures:
                self._log.info("xid_wait_recovered", failures=failures)
                failures = 0
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                self._record_xid(data.device, int(data.eventData))

    def _record_xid(self, handle: Any, xid: int) -> None:
        if self._bounds.optional_int(xid, "xids[].xid", MAX_XID) is None:
            return
        nvml = self._nvml
        try:
            index = self._uuid_index.get(_text(nvml.nvmlDeviceGetUUID(handle)))
        except nvml.NVMLError:
            index = None
        if index is None:
            self._log.warning("gpu_xid_unattributed", xid=xid)
            return
        self._log.warning("gpu_xid", gpu=index, xid=xid)
        if len(self._xids) == self._xids.maxlen:
            self._xids_dropped += 1
        self._xids.append(XidEvent(gpu_index=index, xid=xid, ts=self._clock.time()))

    def close(self) -> None:
        """Stop the XID thread, free the event set, shut NVML down. Idempotent."""
        self._stop.set()
        thread, self._xid_thread = self._xid_thread, None
        if thread is not None:
            thread.join(timeout=self._xid_wait_ms / 1000 + 2.0)
            if thread.is_alive():
                # Still inside nvmlEventSetWait: freeing the set under it would be unsafe.
                self._log.warning("xid_watch_stop_timeout")
                self._event_set = None
        if self._event_set is not None:
            self._free_event_set(self._event_set)
            self._event_set = None
        if self._initialized:
            self._initialized = False
            nvml = self._nvml
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                self._log.warning("nvml_shutdown_failed", error=str(exc))

    def _free_event_set(self, event_set: Any) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlEventSetFree(event_set)
        except nvml.NVMLError as exc:
            self._log.warning("xid_event_set_free_failed", error=str(exc))


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str; very old pynvml releases returned bytes.
    return value.decode() if isinstance(value, bytes) else value


def _watts(bounds: Bounds, field: str, milliwatts: float | None) -> float | None:
    """NVML's mW (or mJ/s) as W rounded to 10 mW; ``None`` outside one GPU's range."""
    if milliwatts is None:
        return None
    return bounds.optional(round(milliwatts / 1000, 2), field, MAX_GPU_POWER_W)


def _processes(bounds: Bounds, procs: list[Any]) -> list[GpuProcess]:
    """NVML's process records, the first ``MAX_PROCESSES_PER_GPU`` with a possible PID."""
    out = []
    for p in bounds.first(procs, "gpus[].processes", MAX_PROCESSES_PER_GPU):
        pid = bounds.optional_int(p.pid, "gpus[].processes[].pid", MAX_PID)
        if pid is not None:  # required: the entry goes
            used = bounds.optional_int(
                p.usedGpuMemory, "gpus[].processes[].used_mem_bytes", MAX_GPU_MEM_BYTES
            )
            out.append(GpuProcess(pid=pid, used_mem_bytes=used))
    return out
