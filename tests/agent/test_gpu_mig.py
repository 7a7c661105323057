"""MIG devices through NvmlBackend over FakeNvml (an H100 80GB in MIG mode): enumeration,
profiles, memory, what NVML does not report, reconfiguration, older drivers and bindings,
and their series on the agent's /metrics."""

from __future__ import annotations

from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend, NvmlModule
from shared.clock import FakeClock
from shared.schema import (
    GpuProcess,
    GpuSample,
    MigSample,
    Sample,
    decode_sample,
    encode,
)
from tests.agent.helpers import gpu_sample, open_backend, scrape, ticks

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
    """A driver without the MIG device calls: no MIG devices, asked once; a driver without
    device attributes: instances without a profile."""
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
    # Without MIG device handles the processes can only come from the GPU's handle, which
    # NVML answers in MIG mode only to a privileged caller: said once, nothing else.
    warnings = [(e["event"], e["field"]) for e in logs if e["log_level"] == "warning"]
    assert warnings == [("gpu_read_failed", "processes")]
    assert gpu.processes == ()
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
    sample = gpu_sample(*gpus)
    decoded = decode_sample(encode(sample))
    assert decoded == sample
    assert sum(len(g.mig) for g in decoded.gpus) == 56
    assert b'"util_pct":null' not in encode(sample).split(b'"mig"', 1)[1][:200]


def _series(sample: Sample) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(name, tuple(sorted(labels.items()))): v for name, labels, v in scrape(sample)}


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
    sample = gpu_sample(gpu)
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


def test_mig_devices_carry_their_uuid(backends: list[NvmlBackend]) -> None:
    """Each MIG device's UUID as NVML names it on its own handle (``MIG-<uuid>``), distinct
    per device; it survives the wire."""
    clock = FakeClock()
    nvml = FakeNvml(2, clock=clock, mig={0: _MIXED, 1: ["7g.80gb"]})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    gpus = backend.sample(clock.monotonic(), slow=True)
    handles = [nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), i)
               for i in range(3)]  # fmt: skip
    assert [m.uuid for m in gpus[0].mig] == [nvml.nvmlDeviceGetUUID(h) for h in handles]
    uuids = [m.uuid for g in gpus for m in g.mig]
    assert len(set(uuids)) == 4
    assert all(u is not None and u.startswith("MIG-") for u in uuids)
    sample = gpu_sample(*gpus)
    assert [m.uuid for m in decode_sample(encode(sample)).gpus[0].mig] == uuids[:3]


def test_mig_uuid_not_in_nvmls_form_is_left_out(backends: list[NvmlBackend]) -> None:
    """A MIG device answering a UUID that is not a MIG UUID: left out (logged), the device
    kept."""

    class _BadMigUuid(FakeNvml):
        def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
            uuid = super().nvmlDeviceGetUUID(handle)
            return uuid.replace("MIG-", "GPU-") if uuid.startswith("MIG-") else uuid

    clock = FakeClock()
    nvml = _BadMigUuid(1, clock=clock, mig={0: _MIXED})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    with capture_logs() as logs:
        (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert [(m.profile, m.uuid) for m in gpu.mig] == [
        ("3g.40gb", None),
        ("2g.20gb", None),
        ("2g.20gb", None),
    ]
    assert {e["field"] for e in logs if e["event"] == "reading_out_of_range"} == {
        "gpus[].mig[].uuid"
    }


@pytest.mark.parametrize("privileged", [False, True])
def test_processes_in_mig_mode_carry_their_instance(
    backends: list[NvmlBackend], privileged: bool
) -> None:
    """In MIG mode each process carries its GPU and compute instance: from the GPU's handle
    where NVML answers it (a privileged agent: one call per GPU), else from each MIG
    device's handle (NoPermission on the GPU's: asked once, quietly); outside MIG mode
    processes carry no instance."""
    clock = FakeClock()
    nvml = FakeNvml(2, clock=clock, load_pct=50, mig={0: _MIXED}, mig_aggregate=privileged)
    backend = open_backend(nvml, clock, backends)
    backend.start()
    with capture_logs() as logs:
        gpu0, gpu1 = ticks(backend, clock, 3)
    assert [(p.pid, p.gi_id, p.ci_id) for p in gpu0.processes] == [
        (10_001, 1, 0),
        (10_003, 3, 0),
        (10_004, 4, 0),
    ]
    assert [p.used_mem_bytes for p in gpu0.processes] == [
        _used(40_448, 50) - 32 * _MIB,
        _used(20_096, 50) - 32 * _MIB,
        _used(20_096, 50) - 32 * _MIB,
    ]
    assert [(p.pid, p.gi_id, p.ci_id) for p in gpu1.processes] == [(4001, None, None)]
    assert [e for e in logs if e["log_level"] == "warning"] == []
    calls = nvml.call_count("nvmlDeviceGetComputeRunningProcesses", gpu=0)
    assert calls == (3 if privileged else 1 + 3 * 3)


def test_without_any_answer_in_mig_mode_processes_are_unknown_and_not_asked_again(
    backends: list[NvmlBackend],
) -> None:
    """Neither the GPU's handle (no privilege) nor its MIG devices' (vGPU host mode)
    answer: no processes, one line saying so, each asked once."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock, load_pct=50, mig={0: _MIXED}, mig_processes=False)
    backend = open_backend(nvml, clock, backends)
    backend.start()
    with capture_logs() as logs:
        (gpu,) = ticks(backend, clock, 3)
    assert gpu.processes == ()
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "gpu_mig_devices",
        "gpu_mig_processes_unreadable",
    ]
    assert nvml.call_count("nvmlDeviceGetComputeRunningProcesses") == 1 + 1


def test_metrics_label_each_gpu_instance_with_its_own_jobs() -> None:
    """A GPU instance's series carry the jobs of the processes inside it (hpc_job), not
    those of the GPU's other instances; an idle instance has none."""
    gib = 1024 * _MIB
    uuid = "GPU-00000002-c209-4cac-a29f-6fbed82c07cd"
    gpu = GpuSample(
        index=0,
        uuid=uuid,
        processes=(
            GpuProcess(pid=11, used_mem_bytes=gib, job="4242", gi_id=1, ci_id=0),
            GpuProcess(pid=12, used_mem_bytes=gib, job="4343", gi_id=3, ci_id=0),
            GpuProcess(pid=13, used_mem_bytes=gib, job="4444", gi_id=3, ci_id=0),
        ),
        mig=(
            MigSample(gi_id=1, ci_id=0, profile="3g.40gb", mem_used_bytes=gib,
                      mem_total_bytes=40 * gib),
            MigSample(gi_id=3, ci_id=0, profile="2g.20gb", mem_used_bytes=2 * gib,
                      mem_total_bytes=20 * gib),
            MigSample(gi_id=4, ci_id=0, profile="2g.20gb", mem_used_bytes=0,
                      mem_total_bytes=20 * gib),
        ),
    )  # fmt: skip
    sample = gpu_sample(gpu)
    used = {
        (d["GPU_I_ID"], d.get("hpc_job")): v
        for (name, labels), v in _series(sample).items()
        if name == "DCGM_FI_DEV_FB_USED" and "GPU_I_ID" in (d := dict(labels))
    }
    assert used == {("1", "4242"): 1024, ("3", "4343"): 2048, ("3", "4444"): 2048, ("4", None): 0}
