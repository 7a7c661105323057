"""Naming a MIG device's GPU instance profile from what NVML tells an unprivileged reader.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GiProfile", "gi_profile", "profile_name"]


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
