"""MIG devices of a GPU in MIG mode: enumerating them, naming their GPU instance profile
from what NVML tells an unprivileged reader, and sampling their memory.

Enumeration (NVIDIA's MIG User Guide, docs.nvidia.com/datacenter/tesla/mig-user-guide/):
``nvmlDeviceGetMaxMigDeviceCount`` slots per GPU, each holding a MIG device's handle
(``nvmlDeviceGetMigDeviceHandleByIndex``, NotFound for an empty slot) with its GPU and
compute instance ids. MIG devices change only when an administrator reconfigures the GPU:
:class:`MigReader` enumerates on slow ticks and after a MIG device stopped answering.

NVML names GPU instance profiles (``nvmlDeviceGetGpuInstanceProfileInfoV``: ``MIG 1g.10gb``)
but reaching a MIG device's profile through its GPU instance (``nvmlDeviceGetGpuInstanceById``,
``nvmlGpuInstanceGetInfo``) needs root. A MIG device's own attributes
(``nvmlDeviceGetAttributes``: GPU instance slices, memory, shared engines) are readable by
anyone, and identify the profile among the GPU's: the same slices and memory, and where two
profiles share those (``1g.10gb`` and ``1g.10gb+me``), the same decoder, JPEG and OFA
engines. Without a profile table (a driver before R470, or a profile index the binding does
not know) the name is composed the way NVIDIA's names read: ``<slices>g.<GiB rounded up>gb``.
dcgm-exporter labels MIG series with this name (``GPU_I_PROFILE``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agent.nvml import Device, NvmlCalls, NvmlModule, memory_bytes, text
from shared.schema import (
    MAX_MIG_DEVICES,
    MAX_MIG_INSTANCE_ID,
    MIG_PROFILE_PATTERN,
    MIG_UUID_PATTERN,
    MigSample,
)

__all__ = ["GiProfile", "MigDevice", "MigReader", "gi_profile", "profile_name"]

MIG_SYMBOLS: Final = (
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

_MIG_PROFILE_RE: Final = re.compile(MIG_PROFILE_PATTERN)
_MIG_UUID_RE: Final = re.compile(MIG_UUID_PATTERN)


@dataclass(frozen=True, slots=True)
class GiProfile:
    """What identifies a GPU instance profile, and its name without ``MIG ``."""

    slices: int
    memory_mb: int
    engines: tuple[int, int, int]
    """Decoders, JPEG decoders, optical flow accelerators."""
    name: str | None


def gi_profile(info: Any) -> GiProfile:
    """A ``c_nvmlGpuInstanceProfileInfo_v2_t`` (or the v1 struct, which has no name)."""
    raw = getattr(info, "name", None)
    name = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return GiProfile(
        slices=int(info.sliceCount),
        memory_mb=int(info.memorySizeMB),
        engines=(int(info.decoderCount), int(info.jpegCount), int(info.ofaCount)),
        name=(name.removeprefix("MIG ").strip() or None) if name else None,
    )


def profile_name(attributes: Any, profiles: Sequence[GiProfile]) -> str | None:
    """The profile of a MIG device with these ``c_nvmlDeviceAttributes``; ``None`` when the
    attributes describe no GPU instance (zero slices or memory)."""
    slices = int(attributes.gpuInstanceSliceCount)
    memory_mb = int(attributes.memorySizeMB)
    if slices <= 0 or memory_mb <= 0:
        return None
    engines = (
        int(attributes.sharedDecoderCount),
        int(attributes.sharedJpegCount),
        int(attributes.sharedOfaCount),
    )
    same = [p for p in profiles if (p.slices, p.memory_mb) == (slices, memory_mb) and p.name]
    exact = [p for p in same if p.engines == engines]
    chosen = (exact or same)[:1]
    if chosen:
        return chosen[0].name
    return f"{slices}g.{math.ceil(memory_mb / 1024)}gb"


@dataclass(slots=True, eq=False)
class MigDevice:
    """One MIG device found at the last enumeration."""

    dev: Device
    """The MIG device's handle, with its own unsupported fields and logged errors."""
    gi_id: int
    ci_id: int
    profile: str | None
    uuid: str | None
    """``MIG-<uuid>``: what ``CUDA_VISIBLE_DEVICES`` and Kubernetes' device plugin name the
    MIG device by."""


@dataclass(slots=True, eq=False)
class _GpuMigs:
    devices: list[MigDevice] = field(default_factory=list)
    """By GPU instance id, then compute instance id."""
    stale: bool = False
    """A MIG device stopped answering: enumerate again at the next sample."""
    profiles: tuple[GiProfile, ...] | None = None
    """The GPU's GPU instance profiles, read once."""


class MigReader:
    """The MIG devices of each GPU, through ``calls`` (the backend's NVML calls).

    A binding without one of :data:`MIG_SYMBOLS` reads no MIG devices (logged once).
    """

    def __init__(self, calls: NvmlCalls) -> None:
        self._calls = calls
        self._gpus: dict[int, _GpuMigs] = {}
        nvml = calls.nvml
        missing = [name for name in MIG_SYMBOLS if not hasattr(nvml, name)]
        self.readable = not missing
        if missing:
            calls.log.info("nvml_binding_lacks_mig", symbols=missing)

    def devices(self, dev: Device) -> list[MigDevice]:
        """``dev``'s MIG devices at the last enumeration (none outside MIG mode)."""
        state = self._gpus.get(dev.index)
        return state.devices if state is not None else []

    def refresh(self, dev: Device, slow: bool) -> None:
        """Enumerate ``dev``'s MIG devices on slow ticks (the first sample is one) and after
        one stopped answering: an instance created in between shows from the next slow
        tick."""
        state = self._gpus.get(dev.index)
        if state is None:
            state = self._gpus[dev.index] = _GpuMigs()
        if (slow or state.stale) and self.readable and not dev.lost:
            self._enumerate(dev, state)

    def _enumerate(self, dev: Device, state: _GpuMigs) -> None:
        """Find ``dev``'s MIG devices (none outside MIG mode), their ids and profiles."""
        calls = self._calls
        nvml = calls.nvml
        state.stale = False
        mode = calls.call(dev, "mig_mode", nvml.nvmlDeviceGetMigMode)
        enabled = mode is not None and mode[0] == nvml.NVML_DEVICE_MIG_ENABLE
        if enabled != dev.mig_enabled:  # utilisation's answer depends on the mode: ask again
            dev.unsupported -= {"utilization", "mig_utilization"}
            calls.log.info("gpu_mig_mode", gpu=dev.index, enabled=enabled)
        dev.mig_enabled = enabled
        count = (
            calls.call(dev, "mig_device_count", nvml.nvmlDeviceGetMaxMigDeviceCount)
            if dev.mig_enabled
            else None
        )
        found: list[MigDevice] = []
        if count and "mig_devices" not in dev.unsupported:
            if state.profiles is None:
                state.profiles = self._gi_profiles(dev)
            for slot in range(min(count, MAX_MIG_DEVICES)):
                try:
                    handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev.handle, slot)
                except nvml.NVMLError_NotFound:
                    continue  # an empty slot
                except calls.unsupported_errors:
                    dev.unsupported.add("mig_devices")  # an older driver: never asked again
                    break
                except nvml.NVMLError as exc:
                    calls.log_once(dev, "mig_device_handle", exc)
                    continue
                mig = self._open(dev, handle, state.profiles)
                if mig is not None:
                    found.append(mig)
            found.sort(key=lambda m: (m.gi_id, m.ci_id))
        layout = [(m.gi_id, m.ci_id, m.profile) for m in found]
        if layout != [(m.gi_id, m.ci_id, m.profile) for m in state.devices]:
            calls.log.info("gpu_mig_devices", gpu=dev.index, devices=layout)
        state.devices = found

    def _open(self, dev: Device, handle: Any, profiles: Sequence[GiProfile]) -> MigDevice | None:
        calls = self._calls
        nvml = calls.nvml
        mdev = Device(index=dev.index, handle=handle, uuid=dev.uuid, bounds=dev.bounds, is_mig=True)
        b = dev.bounds
        gi = b.optional_int(
            calls.call(mdev, "gpu_instance_id", nvml.nvmlDeviceGetGpuInstanceId),
            "gpus[].mig[].gi_id",
            MAX_MIG_INSTANCE_ID,
        )
        ci = b.optional_int(
            calls.call(mdev, "compute_instance_id", nvml.nvmlDeviceGetComputeInstanceId),
            "gpus[].mig[].ci_id",
            MAX_MIG_INSTANCE_ID,
        )
        if gi is None or ci is None:  # required: a series without its instance is no use
            return None
        attrs = calls.call(mdev, "attributes", nvml.nvmlDeviceGetAttributes)
        name = profile_name(attrs, profiles) if attrs is not None else None
        profile = b.matching(name, "gpus[].mig[].profile", _MIG_PROFILE_RE) if name else None
        raw_uuid = calls.call(mdev, "uuid", nvml.nvmlDeviceGetUUID)
        uuid = b.matching(text(raw_uuid), "gpus[].mig[].uuid", _MIG_UUID_RE) if raw_uuid else None
        return MigDevice(dev=mdev, gi_id=gi, ci_id=ci, profile=profile, uuid=uuid)

    def _gi_profiles(self, dev: Device) -> tuple[GiProfile, ...]:
        """The GPU instance profiles ``dev`` offers (NVML answers NotSupported for the
        indices it lacks); the v1 struct, without names, on drivers before R470."""
        calls = self._calls
        nvml: NvmlModule = calls.nvml
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
                    calls.log_once(dev, "gi_profile", exc)
                    break
                profiles.append(gi_profile(info))
                break
        return tuple(profiles)

    def processes(self, dev: Device) -> tuple[list[Any], list[tuple[int, int] | None]] | None:
        """In MIG mode ``dev``'s process records, each with the instance it was read from
        (``None``: its record names it); ``None`` outside MIG mode (no MIG device found).

        NVML (nvmlDeviceGetComputeRunningProcesses): "In MIG mode, if device handle is
        provided, the API returns aggregate information, only if the caller has appropriate
        privileges. Per-instance information can be queried by using specific MIG device
        handles." So the GPU's handle is asked first (one call; its records carry
        ``gpuInstanceId`` / ``computeInstanceId``); an agent without the privilege
        (NoPermission, remembered) asks each MIG device's handle instead, one call per
        device. Where neither answers (per-instance queries are not supported in vGPU host
        mode) the processes are unknown: said once, not asked again.
        """
        state = self._gpus.get(dev.index)
        if state is None or not state.devices:
            return None
        calls = self._calls
        get = calls.nvml.nvmlDeviceGetComputeRunningProcesses
        if "mig_aggregate" not in dev.unsupported:
            denied = (calls.nvml.NVMLError_NoPermission,)
            procs = calls.call(dev, "mig_aggregate", get, also_unsupported=denied)
            if "mig_aggregate" not in dev.unsupported:
                aggregate = list(procs or ())
                return aggregate, [None] * len(aggregate)
        records: list[Any] = []
        instances: list[tuple[int, int] | None] = []
        if "mig_processes" in dev.unsupported:
            return records, instances
        for m in state.devices:
            procs = calls.call(m.dev, "processes", get)
            if "processes" in m.dev.unsupported:
                dev.unsupported.add("mig_processes")
                calls.log.info("gpu_mig_processes_unreadable", gpu=dev.index)
                return [], []
            for p in procs or ():
                records.append(p)
                instances.append((m.gi_id, m.ci_id))
        return records, instances

    def sample(self, dev: Device) -> tuple[MigSample, ...]:
        """Memory (and utilisation, should NVML give it) of each of ``dev``'s MIG devices."""
        state = self._gpus.get(dev.index)
        if state is None or not state.devices:
            return ()
        calls = self._calls
        b = dev.bounds
        out = []
        for m in state.devices:
            mem = calls.memory(m.dev)
            if mem is None and not {"memory", "memory_v2"} <= m.dev.unsupported:
                state.stale = True  # destroyed, most likely: enumerate again next tick
            util = None
            if "mig_utilization" not in dev.unsupported:  # NVML: NotSupported on MIG devices
                util = calls.call(m.dev, "utilization", calls.nvml.nvmlDeviceGetUtilizationRates)
                if "utilization" in m.dev.unsupported:
                    dev.unsupported.add("mig_utilization")  # for every MIG device of this GPU
            used, total = memory_bytes(b, mem, "gpus[].mig[]")
            out.append(
                MigSample(
                    gi_id=m.gi_id,
                    ci_id=m.ci_id,
                    profile=m.profile,
                    mem_used_bytes=used,
                    mem_total_bytes=total,
                    uuid=m.uuid,
                    util_pct=(
                        b.optional(util.gpu, "gpus[].mig[].util_pct", 100.0)
                        if util is not None
                        else None
                    ),
                )
            )
        return tuple(out)
