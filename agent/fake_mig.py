"""The MIG part of :class:`agent.fake_nvml.FakeNvml`: an H100 80GB's GPU instance profiles
and the MIG devices of a layout.

Modelled on NVIDIA's MIG User Guide (docs.nvidia.com/datacenter/tesla/mig-user-guide/) and
``nvidia-smi mig -lgip`` on an H100 80GB HBM3: seven compute slices; each GPU instance here
holds one compute instance spanning it, as ``nvidia-smi mig -cgi <profiles> -C`` creates
them. The profile table is indexed by NVML's ``NVML_GPU_INSTANCE_PROFILE_*`` constants.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pynvml

from shared.cli import first_named
from shared.text import quoted

__all__ = [
    "H100_PROFILES",
    "MAX_MIG_DEVICES",
    "FakeGiProfile",
    "FakeMig",
    "attributes",
    "layout",
    "profile_info",
]

MAX_MIG_DEVICES: Final = 7
"""``nvmlDeviceGetMaxMigDeviceCount`` on A100 and H100."""
_SLICES: Final = 7


@dataclass(frozen=True, slots=True)
class FakeGiProfile:
    """One row of ``nvidia-smi mig -lgip``."""

    id: int
    name: str
    """NVML's name, with its ``MIG `` prefix."""
    slices: int
    instances: int
    sms: int
    copy_engines: int
    decoders: int
    jpegs: int
    ofas: int
    memory_mb: int
    gi_ids: tuple[int, ...]
    """GPU instance ids NVML gives instances of this profile, first free first."""


H100_PROFILES: Final[dict[int, FakeGiProfile]] = {
    # NVML_GPU_INSTANCE_PROFILE_1_SLICE .. 7_SLICE, 1_SLICE_REV1 (+me), 1_SLICE_REV2
    0: FakeGiProfile(19, "MIG 1g.10gb", 1, 7, 16, 1, 1, 0, 0, 9_984, tuple(range(7, 14))),
    1: FakeGiProfile(14, "MIG 2g.20gb", 2, 3, 32, 2, 2, 0, 0, 20_096, (3, 4, 5)),
    2: FakeGiProfile(9, "MIG 3g.40gb", 3, 2, 60, 3, 3, 0, 0, 40_448, (1, 2)),
    3: FakeGiProfile(5, "MIG 4g.40gb", 4, 1, 64, 4, 4, 0, 0, 40_448, (1,)),
    4: FakeGiProfile(0, "MIG 7g.80gb", 7, 1, 132, 7, 7, 1, 1, 81_152, (0,)),
    7: FakeGiProfile(20, "MIG 1g.10gb+me", 1, 1, 16, 1, 1, 1, 1, 9_984, tuple(range(7, 14))),
    9: FakeGiProfile(15, "MIG 1g.20gb", 1, 4, 26, 1, 1, 0, 0, 20_096, (3, 4, 5, 6)),
}
"""An H100 80GB HBM3's GPU instance profiles, by NVML profile index (the others: NotSupported)."""

_BY_NAME: Final = {p.name.removeprefix("MIG "): p for p in H100_PROFILES.values()}
_addresses = itertools.count(0x7E00_0000, 0x100)


@dataclass(slots=True, eq=False)
class FakeMig:
    """A MIG device: one compute instance (id 0) spanning its GPU instance."""

    gpu_index: int
    profile: FakeGiProfile
    gi_id: int
    address: int
    ci_id: int = 0
    destroyed: bool = False


def layout(gpu_index: int, profiles: Iterable[str]) -> list[FakeMig]:
    """The MIG devices of ``profiles`` (names as ``nvidia-smi mig -cgi`` takes them,
    ``3g.40gb``), or ``ValueError`` where an H100 cannot hold them."""
    chosen: Sequence[FakeGiProfile] = []
    try:
        chosen = [_BY_NAME[name] for name in profiles]
    except KeyError as exc:
        raise ValueError(f"no H100 GPU instance profile {quoted(exc.args[0])}") from None
    if sum(p.slices for p in chosen) > _SLICES:
        names = first_named([p.name for p in chosen], _SLICES)
        raise ValueError(f"{names} needs more than {_SLICES} slices")
    used: set[int] = set()
    out = []
    for p in chosen:
        free = [i for i in p.gi_ids if i not in used]
        if not free:
            raise ValueError(f"at most {len(p.gi_ids)} instances of {p.name}")
        used.add(free[0])
        out.append(FakeMig(gpu_index, p, free[0], next(_addresses)))
    return out


def attributes(profile: FakeGiProfile | None, mem_total_mb: int) -> Any:
    """``c_nvmlDeviceAttributes`` of a MIG device of ``profile`` (its compute instance spans
    its GPU instance), or (``None``) of a whole GPU with ``mem_total_mb``: no slices."""
    if profile is None:
        whole = H100_PROFILES[4]
        return pynvml.c_nvmlDeviceAttributes(
            multiprocessorCount=whole.sms, memorySizeMB=mem_total_mb
        )
    p = profile
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


def profile_info(p: FakeGiProfile, version: int) -> Any:
    """``c_nvmlGpuInstanceProfileInfo_v2_t`` of ``p`` (``version=1``: the v1 struct, no name)."""
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
