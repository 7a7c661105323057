"""GPU sampling behind a small backend interface; the real one talks to NVML.

NVML: NVIDIA's NVML API Reference Guide (docs.nvidia.com/deploy/nvml-api/), through
NVIDIA's Python bindings (``nvidia-ml-py``, module ``pynvml``).

:class:`NvmlBackend` takes the NVML module as a parameter: ``pynvml`` on a GPU node,
:class:`agent.fake_nvml.FakeNvml` in tests and demos. A node without a library, a driver or a
GPU is normal: the backend reports zero GPUs, says why once, and never raises.

Its parts: :mod:`agent.nvml` (the binding's protocol, a handle's state, the error rules of
every call), :mod:`agent.nvml_fields` (field values: memory temperature), :mod:`agent.mig`
(MIG devices), :mod:`agent.xid` (the XID event thread).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from agent.bounds import Bounds
from agent.mig import MigReader
from agent.nvml import OPTIONAL_NVML_SYMBOLS, Device, NvmlCalls, NvmlModule, memory_bytes, text
from agent.nvml_fields import Field, FieldReader, nvlink, nvlink_fields
from agent.xid import XidWatch
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
    MAX_MIG_INSTANCE_ID,
    MAX_MODEL_NAME_LEN,
    MAX_PCIE_REPLAYS,
    MAX_PID,
    MAX_PROCESSES_PER_GPU,
    MAX_PSTATE,
    MAX_SERIAL_LEN,
    MAX_TEMP_C,
    MAX_VERSION_LEN,
    MIN_TEMP_C,
    PCI_BUS_ID_PATTERN,
    GpuEcc,
    GpuInfo,
    GpuProcess,
    GpuRemappedRows,
    GpuSample,
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

_CLOCK_REASONS_CALLS: Final = (
    ("clocks_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons"),
    ("clocks_throttle_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
)

_UUID_RE: Final = re.compile(GPU_UUID_PATTERN)
_PCI_BUS_ID_RE: Final = re.compile(PCI_BUS_ID_PATTERN)


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


@dataclass(frozen=True, slots=True)
class _Opened:
    """What reads through the binding, made once NVML is initialised."""

    calls: NvmlCalls
    fields: FieldReader
    field_list: tuple[Field, ...]
    """The field values read every tick (one ``nvmlDeviceGetFieldValues`` per GPU)."""
    mig: MigReader
    reasons_calls: tuple[tuple[str, Callable[[Any], int]], ...]


class NvmlBackend:
    """GPU samples from NVML (or anything shaped like it, see :class:`NvmlModule`).

    ``nvml=None`` imports ``pynvml`` at :meth:`start`. XID events are collected by a daemon
    thread (:class:`agent.xid.XidWatch`) blocked in ``nvmlEventSetWait_v2`` for at most
    ``xid_wait_ms`` at a time, which is also how long :meth:`close` may wait for it; at most
    ``xid_queue_max`` of them (up to the schema's ``MAX_XIDS``) wait for the next sample.
    MIG devices: :class:`agent.mig.MigReader`; field values (memory temperature):
    :class:`agent.nvml_fields.FieldReader`.

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
        self._nvml_arg = nvml
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._log = get_logger("agent.gpu")
        self._bounds = Bounds(self._clock, self._log)
        self._xids = XidWatch(
            clock=self._clock, bounds=self._bounds, wait_ms=xid_wait_ms, queue_max=xid_queue_max
        )
        self._inventory: GpuInventory | None = None
        self._initialized = False
        self._devices: list[Device] = []
        self._uuid_index: dict[str, int] = {}
        self._opened_: _Opened | None = None

    @property
    def _nvml(self) -> NvmlModule:
        if self._nvml_arg is None:
            raise RuntimeError("NvmlBackend.start() has not run")
        return self._nvml_arg

    @property
    def _calls(self) -> NvmlCalls:
        return self._opened.calls

    @property
    def _opened(self) -> _Opened:
        if self._opened_ is None:
            raise RuntimeError("NvmlBackend.start() has not run")
        return self._opened_

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
        self._bind(nvml)
        try:
            raw_driver = text(nvml.nvmlSystemGetDriverVersion())
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
        self._xids.start(nvml, self._devices, self._uuid_index)
        return GpuInventory(status="ok", driver=driver, gpus=gpus)

    def _bind(self, nvml: NvmlModule) -> None:
        """The parts that read through this binding; what it has of
        :data:`OPTIONAL_NVML_SYMBOLS`."""
        missing = [name for name in OPTIONAL_NVML_SYMBOLS if not hasattr(nvml, name)]
        if missing:
            self._log.debug("nvml_binding_lacks_symbols", symbols=missing)
        calls = NvmlCalls(nvml, self._log)
        self._opened_ = _Opened(
            calls=calls,
            fields=FieldReader(calls),
            field_list=(
                Field("mem_temp", "gpus[].mem_temp_c", nvml.NVML_FI_DEV_MEMORY_TEMP),
                *nvlink_fields(nvml),
            ),
            mig=MigReader(calls),
            # The newer name first (R535 drivers on); the older one is slated for removal.
            reasons_calls=tuple(
                (field_name, getattr(nvml, function))
                for field_name, function in _CLOCK_REASONS_CALLS
                if hasattr(nvml, function)
            ),
        )

    def _unavailable(self, status: GpuStatus, exc: BaseException) -> GpuInventory:
        self._log.info("gpu_unavailable", status=status, error=str(exc))
        return GpuInventory(status=status)

    def _open_device(self, index: int) -> GpuInfo | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            self._log.warning("gpu_open_failed", gpu=index, error=str(exc))
            return None
        bounds = Bounds(self._clock, self._log.bind(gpu=index))
        if bounds.matching(uuid, "gpus[].uuid", _UUID_RE) is None:
            return None  # every sample carrying it would be rejected
        if uuid in self._uuid_index:  # one GPU, one UUID (shared.schema refuses a message
            # naming one twice, and the agent could not even build its inventory)
            same = self._uuid_index[uuid]
            self._log.warning("gpu_uuid_duplicate", gpu=index, same_as=same, uuid=uuid)
            return None
        dev = Device(index=index, handle=handle, uuid=uuid, bounds=bounds)
        call = self._calls.call
        name = call(dev, "name", nvml.nvmlDeviceGetName)
        serial = call(dev, "serial", nvml.nvmlDeviceGetSerial)
        pci = call(dev, "pci_info", nvml.nvmlDeviceGetPciInfo)
        limit_mw = call(dev, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
        mig = call(dev, "mig_mode", nvml.nvmlDeviceGetMigMode)
        dev.mig_enabled = mig is not None and mig[0] == nvml.NVML_DEVICE_MIG_ENABLE
        mem = self._calls.memory(dev)
        self._probe_nvlink(dev)
        raw_name = text(name) if name is not None else ""
        self._devices.append(dev)
        self._uuid_index[uuid] = index
        return GpuInfo(
            index=index,
            name=bounds.text(raw_name, "gpus[].name", MAX_MODEL_NAME_LEN, empty="unknown"),
            uuid=uuid,
            serial=bounds.name(text(serial), "gpus[].serial", MAX_SERIAL_LEN) if serial else None,
            pci_bus_id=(
                bounds.matching(text(pci.busId), "gpus[].pci_bus_id", _PCI_BUS_ID_RE)
                if pci is not None
                else None
            ),
            power_limit_w=_watts(bounds, "gpus[].power_limit_w", limit_mw),
            mig_mode=dev.mig_enabled if mig is not None else None,
            mem_total_bytes=memory_bytes(bounds, mem, "gpus[]")[1],
        )

    def _probe_nvlink(self, dev: Device) -> None:
        """A GPU that reports no NVLink is never asked for NVLink traffic."""
        links = self._opened.fields.read(
            dev, (Field("nvlink_links", "gpus[].nvlink", self._nvml.NVML_FI_DEV_NVLINK_LINK_COUNT),)
        )
        if links.get("nvlink_links") == 0:
            dev.unsupported.update(f.name for f in nvlink_fields(self._nvml))
            self._log.debug("gpu_field_unsupported", gpu=dev.index, field="nvlink", links=0)

    def sample(self, now_mono: float, slow: bool) -> list[GpuSample]:
        """Read every GPU; a field a GPU does not support is ``None``.

        MIG devices are enumerated on slow ticks (the first sample is one) and after one
        stopped answering: an instance created in between shows from the next slow tick.
        """
        for dev in self._devices:
            self._opened.mig.refresh(dev, slow)
        return [self._sample_device(dev, now_mono, slow) for dev in self._devices]

    def _sample_device(self, dev: Device, now_mono: float, slow: bool) -> GpuSample:
        nvml = self._nvml
        opened = self._opened
        call = opened.calls.call
        b = dev.bounds
        util = call(dev, "utilization", nvml.nvmlDeviceGetUtilizationRates)
        mem = opened.calls.memory(dev)
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
        reasons = opened.calls.first(dev, *opened.reasons_calls)
        pstate = call(dev, "pstate", nvml.nvmlDeviceGetPerformanceState)
        fields = opened.fields.read(dev, opened.field_list)
        mem_used, mem_total = memory_bytes(b, mem, "gpus[]")
        return GpuSample(
            index=dev.index,
            uuid=dev.uuid,
            util_pct=b.optional(util.gpu, "gpus[].util_pct", 100.0) if util is not None else None,
            mem_util_pct=(
                b.optional(util.memory, "gpus[].mem_util_pct", 100.0) if util is not None else None
            ),
            mem_used_bytes=mem_used,
            mem_total_bytes=mem_total,
            power_w=_watts(b, "gpus[].power_w", power_mw),
            power_interval_w=interval_w,
            energy_j=energy_j,
            temp_c=b.optional(temp, "gpus[].temp_c", MAX_TEMP_C, MIN_TEMP_C),
            sm_clock_mhz=b.optional_int(sm_clock, "gpus[].sm_clock_mhz", MAX_CLOCK_MHZ),
            clock_event_reasons=b.optional_int(
                reasons, "gpus[].clock_event_reasons", MAX_CLOCK_EVENT_REASONS
            ),
            pstate=b.optional_int(pstate, "gpus[].pstate", MAX_PSTATE),
            processes=self._processes(dev),
            ecc=self._ecc(dev) if slow else None,
            remapped_rows=self._remapped_rows(dev) if slow else None,
            mem_clock_mhz=b.optional_int(mem_clock, "gpus[].mem_clock_mhz", MAX_CLOCK_MHZ),
            mem_temp_c=b.optional(
                fields.get("mem_temp"), "gpus[].mem_temp_c", MAX_TEMP_C, MIN_TEMP_C
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
            mig=opened.mig.sample(dev),
            nvlink=nvlink(dev, fields, now_mono),
        )

    def _processes(self, dev: Device) -> tuple[GpuProcess, ...]:
        """``dev``'s compute processes; in MIG mode each with the instance it runs in
        (:meth:`agent.mig.MigReader.processes` says how NVML lets them be read)."""
        opened = self._opened
        in_mig = opened.mig.processes(dev)
        if in_mig is not None:
            records, instances = in_mig
            return _processes(dev.bounds, records, instances) if records else ()
        get = self._nvml.nvmlDeviceGetComputeRunningProcesses
        procs = opened.calls.call(dev, "processes", get)
        return _processes(dev.bounds, procs, None) if procs else ()

    def _ecc(self, dev: Device) -> GpuEcc | None:
        nvml = self._nvml
        b = dev.bounds
        counts = {
            f"{kind}_{counter}": b.optional_int(
                self._calls.call(
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

    def _remapped_rows(self, dev: Device) -> GpuRemappedRows | None:
        rows = self._calls.call(dev, "remapped_rows", self._nvml.nvmlDeviceGetRemappedRows)
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

    def drain_xids(self) -> list[XidEvent]:
        """XID events since the last call (the oldest are dropped past ``xid_queue_max``)."""
        return self._xids.drain()

    def close(self) -> None:
        """Stop the XID thread, free the event set, shut NVML down. Idempotent."""
        self._xids.close()
        if self._initialized:
            self._initialized = False
            nvml = self._nvml
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                self._log.warning("nvml_shutdown_failed", error=str(exc))


def _watts(bounds: Bounds, field: str, milliwatts: float | None) -> float | None:
    """NVML's mW (or mJ/s) as W rounded to 10 mW; ``None`` outside one GPU's range."""
    if milliwatts is None:
        return None
    return bounds.optional(round(milliwatts / 1000, 2), field, MAX_GPU_POWER_W)


def _processes(
    bounds: Bounds, records: list[Any], instances: list[tuple[int, int] | None] | None
) -> tuple[GpuProcess, ...]:
    """NVML's process records, the first ``MAX_PROCESSES_PER_GPU`` with a possible PID, each
    with its MIG instance where ``instances`` (one per record) names one, else (on a GPU in
    MIG mode) where the record does."""
    out = []
    gi = ci = None
    for i, p in enumerate(bounds.first(records, "gpus[].processes", MAX_PROCESSES_PER_GPU)):
        pid = bounds.optional_int(p.pid, "gpus[].processes[].pid", MAX_PID)
        if pid is None:  # required: the entry goes
            continue
        used = bounds.optional_int(
            p.usedGpuMemory, "gpus[].processes[].used_mem_bytes", MAX_GPU_MEM_BYTES
        )
        if instances is not None:
            gi, ci = instances[i] or _instance(p)
        out.append(GpuProcess(pid=pid, used_mem_bytes=used, gi_id=gi, ci_id=ci))
    return tuple(out)


def _instance(record: Any) -> tuple[int, int] | tuple[None, None]:
    """A process record's GPU and compute instance ids; none outside MIG mode, where NVML
    sets them to 0xFFFFFFFF (and older struct versions lack them)."""
    gi = getattr(record, "gpuInstanceId", None)
    ci = getattr(record, "computeInstanceId", None)
    if not (isinstance(gi, int) and isinstance(ci, int)):
        return None, None
    if 0 <= gi <= MAX_MIG_INSTANCE_ID and 0 <= ci <= MAX_MIG_INSTANCE_ID:
        return gi, ci
    return None, None
