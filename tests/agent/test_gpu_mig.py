"""MIG devices through NvmlBackend over FakeNvml (an H100 80GB in MIG mode): enumeration,
profiles, memory, what NVML does not report, reconfiguration, older drivers and bindings,
and their series on the agent's /metrics."""

from __future__ import annotations

from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend, NvmlModule
from agent.metrics import AgentExposition, AgentStats
from shared.clock import FakeClock
from shared.schema import CpuStats, GpuSample, MemStats, MigSample, Sample, decode_sample, encode
from tests.agent.helpers import open_backend

_MIB = 2**20
_MIXED = ["3g.40gb", "2g.20gb", "2g.20gb"]


def _used(memory_mb: int, load_pct: float) -> int:
    """The fake's memory use of one MIG device at ``load_pct``."""
    return 64 * _MIB + int(load_pct / 100 * 0.7 * memory_mb * _MIB)


def _layout(gpu: GpuSample) -> list[tuple[int, int, str | None]]:
    return [(m.gi_id, m.ci_id, m.profile) for m in gpu.mig]


def test_mig_devices_carry_ids_profile_and_memory(backends: list[NvmlBackend]) -> None:
    """3g.40gb + 2 x 2g.20gb on GPU 0: NVML's instance ids, the profile names, each
    instance's memory; GPU 1 outside MIG mode has none."""
    clock = FakeClock()
    nvml = FakeNvml(2, clock=clock, load_pct=50, mig={0: _MIXED})
    backend = open_backend(nvml, clock, backends)
    inventory = backend.start()
    assert [g.mig_mode for g in inventory.gpus] == [True, False]
    gpu0, gpu1 = backend.sample(clock.monotonic(), slow=True)
    assert _layout(gpu0) == [(1, 0, "3g.40gb"), (3, 0, "2g.20gb"), (4, 0, "2g.20gb")]
    assert [m.mem_total_bytes for m in gpu0.mig] == [40_448 * _MIB, 20_096 * _MIB, 20_096 * _MIB]
    assert [m.mem_used_bytes for m in gpu0.mig] == [
        _used(40_448, 50),
        _used(20_096, 50),
        _used(20_096, 50),
    ]
    assert gpu0.mem_used_bytes == sum(m.mem_used_bytes or 0 for m in gpu0.mig)
    assert gpu1.mig == ()
    assert gpu1.util_pct == 50


def test_utilisation_is_not_reported_in_mig_mode_and_not_asked_again(
    backends: list[NvmlBackend],
) -> None:
    """NVML answers NotSupported for utilisation on a MIG device and on its GPU: None in the
    sample, and after the first answer neither is asked again (power etc. still read)."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock, load_pct=50, mig={0: ["1g.10gb"] * 7})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    for _ in range(4):
        (gpu,) = backend.sample(clock.monotonic(), slow=True)
        clock.advance(5.0)
    assert gpu.util_pct is None
    assert gpu.mem_util_pct is None
    assert [m.util_pct for m in gpu.mig] == [None] * 7
    assert gpu.power_w is not None
    assert gpu.temp_c is not None
    # once on the GPU, once on its first MIG device; four slow ticks re-enumerated the rest
    assert nvml.call_count("nvmlDeviceGetUtilizationRates") == 2


def test_media_extension_profile_is_told_from_the_plain_one(
    backends: list[NvmlBackend],
) -> None:
    """1g.10gb and 1g.10gb+me have the same slices and memory: the shared engines tell them
    apart."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock, mig={0: ["1g.10gb+me", "1g.10gb", "1g.20gb"]})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert _layout(gpu) == [(3, 0, "1g.20gb"), (7, 0, "1g.10gb+me"), (8, 0, "1g.10gb")]


def test_reconfigured_gpu_is_enumerated_again(backends: list[NvmlBackend]) -> None:
    """Instances destroyed between slow ticks: the next sample finds their handles invalid
    and the one after shows the new layout; MIG mode turned off leaves no devices."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock, mig={0: _MIXED})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=True)
    nvml.set_mig(0, ["7g.80gb"])
    (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert [m.mem_used_bytes for m in gpu.mig] == [None] * 3  # stale handles: unknown, no error
    with capture_logs() as logs:
        (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert _layout(gpu) == [(0, 0, "7g.80gb")]
    assert gpu.mig[0].mem_total_bytes == 81_152 * _MIB
    assert [e["devices"] for e in logs if e["event"] == "gpu_mig_devices"] == [[(0, 0, "7g.80gb")]]
    nvml.set_mig(0, None)
    backend.sample(clock.monotonic(), slow=False)
    (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert gpu.mig == ()
    assert gpu.util_pct is not None


@pytest.mark.parametrize(
    "missing",
    [
        {"nvmlDeviceGetGpuInstanceProfileInfoV"},  # before R470: v1 profiles, no names
        {"nvmlDeviceGetGpuInstanceProfileInfoV", "nvmlDeviceGetGpuInstanceProfileInfo"},
    ],
)
def test_without_profile_names_the_name_is_composed(
    missing: set[str], backends: list[NvmlBackend]
) -> None:
    """No named profile table: ``<slices>g.<GiB rounded up>gb`` from the device's attributes,
    as NVIDIA names them."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock, mig={0: _MIXED}, missing_functions=missing)
    backend = open_backend(nvml, clock, backends)
    backend.start()
    (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert _layout(gpu) == [(1, 0, "3g.40gb"), (3, 0, "2g.20gb"), (4, 0, "2g.20gb")]


def test_driver_without_mig_calls_reads_the_gpu_as_before(backends: list[NvmlBackend]) -> None:
    """A driver without the MIG device calls: no MIG devices, no warning, asked once; a
    driver without device attributes: instances without a profile."""
    clock = FakeClock()
    nvml = FakeNvml(
        1, clock=clock, mig={0: _MIXED}, missing_functions={"nvmlDeviceGetMigDeviceHandleByIndex"}
    )
    backend = open_backend(nvml, clock, backends)
    backend.start()
    with capture_logs() as logs:
        for _ in range(3):
            (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert gpu.mig == ()
    assert gpu.power_w is not None
    assert [e for e in logs if e["log_level"] == "warning"] == []
    assert nvml.call_count("nvmlDeviceGetMigDeviceHandleByIndex") == 1
    nvml = FakeNvml(1, clock=clock, mig={0: _MIXED}, missing_functions={"nvmlDeviceGetAttributes"})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert _layout(gpu) == [(1, 0, None), (3, 0, None), (4, 0, None)]
    assert gpu.mig[0].mem_total_bytes == 40_448 * _MIB


class _Binding:
    """pynvml without some names (AttributeError, as a module raises)."""

    def __init__(self, fake: FakeNvml, absent: set[str]) -> None:
        self._fake = fake
        self._absent = absent

    def __getattr__(self, name: str) -> Any:
        if name in self._absent:
            raise AttributeError(name)
        return getattr(self._fake, name)


def test_binding_without_mig_names_reads_no_mig_devices(backends: list[NvmlBackend]) -> None:
    """A pynvml without a MIG call: the GPUs are read as before, without MIG devices."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock, mig={0: _MIXED})
    binding = cast("NvmlModule", _Binding(nvml, {"nvmlDeviceGetMaxMigDeviceCount"}))
    backend = NvmlBackend(binding, clock=clock, xid_wait_ms=20)
    backends.append(backend)
    assert backend.start().status == "ok"
    (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert gpu.mig == ()
    assert gpu.power_w is not None


def test_mig_devices_survive_the_wire(backends: list[NvmlBackend]) -> None:
    """A sample with 7 MIG devices on each of 8 GPUs encodes and decodes as sent."""
    clock = FakeClock()
    nvml = FakeNvml(8, clock=clock, load_pct=30, mig=dict.fromkeys(range(8), ["1g.10gb"] * 7))
    backend = open_backend(nvml, clock, backends)
    backend.start()
    gpus = tuple(backend.sample(clock.monotonic(), slow=True))
    sample = Sample(
        v=1,
        node="n1",
        ts=1.8e9,
        seq=0,
        interval_s=5.0,
        cpu=CpuStats(count=4),
        mem=MemStats(total_bytes=1, used_bytes=0, available_bytes=1),
        gpus=gpus,
    )
    decoded = decode_sample(encode(sample))
    assert decoded == sample
    assert sum(len(g.mig) for g in decoded.gpus) == 56
    assert b'"util_pct":null' not in encode(sample).split(b'"mig"', 1)[1][:200]


def _series(sample: Sample) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    expo = AgentExposition(
        lambda: AgentStats(
            samples_taken=1, published=1, dropped=0, buffered=0, connected=True, last_ack_age_s=0
        )
    )
    expo.update(sample)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(expo)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_export_each_gpu_instance_with_dcgm_exporters_labels() -> None:
    """FB used/free/total per GPU instance labelled GPU_I_ID and GPU_I_PROFILE, with the
    GPU's gpu and UUID; no utilisation where NVML gave none; a second compute instance of a
    GPU instance adds no duplicate series."""
    gib = 1024 * _MIB
    gpu = GpuSample(
        index=2,
        uuid="GPU-00000002-c209-4cac-a29f-6fbed82c07cd",
        mem_used_bytes=30 * gib,
        mem_total_bytes=80 * gib,
        power_w=300.0,
        mig=(
            MigSample(gi_id=1, ci_id=0, profile="3g.40gb", mem_used_bytes=10 * gib,
                      mem_total_bytes=40 * gib),
            MigSample(gi_id=1, ci_id=1, profile="3g.40gb", mem_used_bytes=10 * gib,
                      mem_total_bytes=40 * gib),
            MigSample(gi_id=3, ci_id=0, profile="2g.20gb", mem_used_bytes=5 * gib,
                      mem_total_bytes=20 * gib),
        ),
    )  # fmt: skip
    sample = Sample(
        v=1,
        node="n1",
        ts=1.8e9,
        seq=0,
        interval_s=5.0,
        cpu=CpuStats(count=4),
        mem=MemStats(total_bytes=1, used_bytes=0, available_bytes=1),
        gpus=(gpu,),
    )
    series = _series(sample)
    mig = {
        (name, d["GPU_I_ID"], d["GPU_I_PROFILE"], d["gpu"], d["UUID"]): v
        for (name, labels), v in series.items()
        if "GPU_I_ID" in (d := dict(labels))
    }
    uuid = gpu.uuid
    assert mig == {
        ("DCGM_FI_DEV_FB_USED", "1", "3g.40gb", "2", uuid): 10 * 1024,
        ("DCGM_FI_DEV_FB_FREE", "1", "3g.40gb", "2", uuid): 30 * 1024,
        ("DCGM_FI_DEV_FB_TOTAL", "1", "3g.40gb", "2", uuid): 40 * 1024,
        ("DCGM_FI_DEV_FB_USED", "3", "2g.20gb", "2", uuid): 5 * 1024,
        ("DCGM_FI_DEV_FB_FREE", "3", "2g.20gb", "2", uuid): 15 * 1024,
        ("DCGM_FI_DEV_FB_TOTAL", "3", "2g.20gb", "2", uuid): 20 * 1024,
    }
    assert not [k for k in series if k[0] == "DCGM_FI_DEV_GPU_UTIL"]
    # the GPU's own series stay, without the MIG labels
    assert series[("DCGM_FI_DEV_FB_USED", tuple(sorted({
        "gpu": "2", "UUID": uuid, "pci_bus_id": "", "device": "nvidia2", "modelName": "",
        "Hostname": "", "DCGM_FI_DRIVER_VERSION": ""}.items())))] == 30 * 1024  # fmt: skip
