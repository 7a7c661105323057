"""The NVML boundary shared by the GPU backend's parts: what the binding must offer, one
device handle's state, and calls that turn "not supported" into "never asked again".

NVML: NVIDIA's NVML API Reference Guide (docs.nvidia.com/deploy/nvml-api/), through
NVIDIA's Python bindings (``nvidia-ml-py``, module ``pynvml``). :class:`NvmlModule` is the
subset :class:`agent.gpu.NvmlBackend`, :mod:`agent.mig` and :mod:`agent.nvml_fields` read;
:class:`agent.fake_nvml.FakeNvml` stands in for it without a GPU.
"""

# ruff: noqa: N802, N815  (NvmlModule mirrors pynvml's names)

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from structlog.typing import FilteringBoundLogger

from agent.bounds import Bounds
from agent.rates import CounterRate
from shared.schema import MAX_GPU_MEM_BYTES

__all__ = ["OPTIONAL_NVML_SYMBOLS", "Device", "NvmlCalls", "NvmlModule", "memory_bytes", "text"]

OPTIONAL_NVML_SYMBOLS: Final = (
    "NVMLLibraryMismatchError",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)
"""pynvml names some nvidia-ml-py releases lack: the backend works without each of them."""

_T = TypeVar("_T")


class NvmlModule(Protocol):
    """The subset of ``pynvml`` (nvidia-ml-py) that the GPU backend needs in every release.

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
    NVML_FI_DEV_NVLINK_LINK_COUNT: int
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: int
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: int
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
    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[Any], /) -> Any: ...
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
class Device:
    """One NVML device handle (a GPU's, or a MIG device's of GPU ``index``) and what NVML
    has said about it so far."""

    index: int
    handle: Any
    uuid: str
    bounds: Bounds
    """Range checks of this GPU's readings; their log lines carry ``gpu=<index>``."""
    unsupported: set[str] = field(default_factory=set)
    """Fields NVML said NotSupported (or lacks the function for): never asked again."""
    logged_errors: set[tuple[str, str]] = field(default_factory=set)
    energy: CounterRate = field(default_factory=CounterRate)
    nvlink_tx: CounterRate = field(default_factory=CounterRate)
    nvlink_rx: CounterRate = field(default_factory=CounterRate)
    lost: bool = False
    mig_enabled: bool = False
    is_mig: bool = False
    """A MIG device's handle (of the GPU ``index``)."""


class NvmlCalls:
    """NVML calls on a :class:`Device`, with the agent's rules for their errors: NotSupported
    (or a function or struct version this driver lacks) marks the field never to be asked
    again; a lost GPU is asked nothing more; any other error is logged once per field and
    error and reads as ``None``."""

    __slots__ = ("log", "nvml", "unsupported_errors")

    def __init__(self, nvml: NvmlModule, log: FilteringBoundLogger) -> None:
        self.nvml = nvml
        self.log = log
        # A release without the class cannot raise it, so leaving it out loses nothing.
        mismatch: type[Exception] | None = getattr(nvml, "NVMLLibraryMismatchError", None)
        self.unsupported_errors: tuple[type[Exception], ...] = (
            nvml.NVMLError_NotSupported,
            nvml.NVMLError_FunctionNotFound,
            nvml.NVMLError_ArgumentVersionMismatch,
            *((mismatch,) if mismatch is not None else ()),  # unversioned call, older driver
        )

    def call(
        self,
        dev: Device,
        name: str,
        fn: Callable[..., _T],
        *args: Any,
        also_unsupported: tuple[type[Exception], ...] = (),
    ) -> _T | None:
        """``fn(handle, *args)``, or ``None`` for an unsupported field, a lost GPU, an error.
        ``also_unsupported``: errors that mean "never ask again" for this field only."""
        if dev.lost or name in dev.unsupported:
            return None
        nvml = self.nvml
        try:
            return fn(dev.handle, *args)
        except (*self.unsupported_errors, *also_unsupported):
            dev.unsupported.add(name)
            self.log.debug("gpu_field_unsupported", gpu=dev.index, field=name)
        except nvml.NVMLError_GpuIsLost:
            dev.lost = True
            self.log.error("gpu_lost", gpu=dev.index, uuid=dev.uuid, field=name)
        except nvml.NVMLError as exc:
            self.log_once(dev, name, exc)
        return None

    def first(self, dev: Device, *choices: tuple[Any, ...]) -> Any:
        """The first choice ``(name, fn, *args)`` the GPU supports (newer API, then older)."""
        for name, fn, *args in choices:
            value = self.call(dev, name, fn, *args)
            if value is not None or name not in dev.unsupported:
                return value
        return None

    def log_once(self, dev: Device, name: str, exc: Exception) -> None:
        """Log a failed read of ``name`` once per field and error, not every tick."""
        key = (name, type(exc).__name__)
        if key in dev.logged_errors:
            return
        dev.logged_errors.add(key)
        nvml = self.nvml
        if dev.is_mig and isinstance(exc, nvml.NVMLError_InvalidArgument | nvml.NVMLError_NotFound):
            # A destroyed MIG device's handle (MIG reconfigured): enumerated again next tick.
            self.log.info("gpu_mig_device_gone", gpu=dev.index, field=name)
        else:
            self.log.warning("gpu_read_failed", gpu=dev.index, field=name, error=str(exc))

    def memory(self, dev: Device) -> Any:
        """``nvmlDeviceGetMemoryInfo``: v2 reports "used" without the driver's reservation;
        drivers before R510 lack it and answer the v1 struct."""
        nvml = self.nvml
        get = nvml.nvmlDeviceGetMemoryInfo
        return self.first(dev, ("memory_v2", get, nvml.nvmlMemory_v2), ("memory", get))


def text(value: str | bytes) -> str:
    """A string NVML returned: nvidia-ml-py returns str; very old pynvml releases bytes."""
    return value.decode() if isinstance(value, bytes) else value


def memory_bytes(bounds: Bounds, mem: Any, prefix: str) -> tuple[int | None, int | None]:
    """``(used, total)`` of an ``nvmlMemory_t`` (``None``: unread), each within one GPU's
    range; ``prefix`` names the wire struct (``gpus[]``, ``gpus[].mig[]``)."""
    if mem is None:
        return None, None
    used, total = _MEM_FIELDS.get(prefix) or _MEM_FIELDS.setdefault(
        prefix, (f"{prefix}.mem_used_bytes", f"{prefix}.mem_total_bytes")
    )
    return (
        bounds.optional_int(mem.used, used, MAX_GPU_MEM_BYTES),
        bounds.optional_int(mem.total, total, MAX_GPU_MEM_BYTES),
    )


_MEM_FIELDS: dict[str, tuple[str, str]] = {}
"""The wire fields' names by prefix, made once (every tick reads memory)."""
