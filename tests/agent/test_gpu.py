"""NvmlBackend over FakeNvml: values, unsupported fields, missing driver, resets, XIDs."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from agent.fake_nvml import FakeMode, FakeNvml
from agent.gpu import NullGpuBackend, NvmlBackend, NvmlModule
from shared.clock import FakeClock
from shared.schema import MAX_GPU_POWER_W, MAX_XIDS, GpuEcc, GpuProcess, GpuRemappedRows, XidEvent
from tests.agent.helpers import open_backend as _backend

_MIB = 2**20
_LOAD_50_W = 70 + (700 - 70) * 0.9 * 0.5  # the fake's power at 50 % load: 353.5 W


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


def test_start_reports_static_facts(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """Names, UUIDs, PCI ids, power limit, MIG mode, memory, driver version."""
    inventory = _backend(FakeNvml(8, clock=clock), clock, backends).start()
    assert inventory.status == "ok"
    assert inventory.driver == "550.54.15"
    assert [g.index for g in inventory.gpus] == list(range(8))
    assert len({g.uuid for g in inventory.gpus}) == 8
    first = inventory.gpus[0]
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.uuid.startswith("GPU-")
    assert first.serial == "1654000000000"
    assert first.pci_bus_id == "00000000:18:00.0"
    assert inventory.gpus[7].pci_bus_id == "00000000:DB:00.0"
    assert first.power_limit_w == 700.0
    assert first.mig_mode is False
    assert first.mem_total_bytes == 81_559 * _MIB


def test_sample_values_at_fixed_load(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """Every per-tick field is read and converted to the schema's units."""
    nvml = FakeNvml(2, clock=clock, load_pct=50)
    backend = _backend(nvml, clock, backends)
    backend.start()
    gpu = backend.sample(clock.monotonic(), slow=False)[1]
    assert gpu.index == 1
    assert (gpu.util_pct, gpu.mem_util_pct) == (50, 30)
    assert gpu.mem_total_bytes == 81_559 * _MIB
    assert gpu.mem_used_bytes == 1024 * _MIB + int(0.5 * 0.7 * 81_559 * _MIB)
    assert gpu.power_w == _LOAD_50_W
    assert gpu.power_interval_w is None  # one energy reading so far
    assert gpu.temp_c == round(30 + 0.07 * _LOAD_50_W)
    assert (gpu.sm_clock_mhz, gpu.pstate, gpu.clock_event_reasons) == (1980, 0, 0)
    used = 1024 * _MIB + int(0.5 * 0.7 * 81_559 * _MIB) - 512 * _MIB
    assert gpu.processes == (GpuProcess(pid=4001, used_mem_bytes=used),)
    assert gpu.ecc is None
    assert gpu.remapped_rows is None


def test_interval_power_comes_from_energy_counter(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """Mean power over the interval = energy delta (mJ) / monotonic seconds."""
    backend = _backend(FakeNvml(1, clock=clock, load_pct=50), clock, backends)
    backend.start()
    (first,) = backend.sample(clock.monotonic(), slow=False)
    clock.advance(5)
    (second,) = backend.sample(clock.monotonic(), slow=False)
    assert second.power_interval_w == pytest.approx(_LOAD_50_W, abs=0.01)
    assert first.energy_j is not None
    assert second.energy_j is not None
    assert second.energy_j - first.energy_j == pytest.approx(5 * _LOAD_50_W, abs=0.002)


def test_interval_power_is_mean_of_varying_power(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """Under a varying load the interval figure is the average, which a point reading is not."""
    nvml = FakeNvml(1, clock=clock, seed=3)
    backend = _backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=False)
    readings = []
    for _ in range(100):  # midpoint rule over 10 s
        clock.advance(0.05)
        readings.append(nvml.power_w(0))
        clock.advance(0.05)
    (gpu,) = backend.sample(clock.monotonic(), slow=False)
    mean = sum(readings) / len(readings)
    assert gpu.power_interval_w == pytest.approx(mean, abs=0.05)
    assert gpu.power_w is not None
    assert abs(gpu.power_w - mean) > 5  # the point reading at the end is off


def test_power_past_the_schema_bound_is_unknown_not_a_lost_sample(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """A 6 kW reading (past MAX_GPU_POWER_W, under the old 100 kW check) becomes None."""
    nvml = FakeNvml(1, clock=clock, load_pct=100, power_limit_w=6_700.0)
    backend = _backend(nvml, clock, backends)
    with capture_logs() as logs:
        inventory = backend.start()
        gpu = backend.sample(clock.monotonic(), slow=False)[0]
    assert nvml.power_w(0) > MAX_GPU_POWER_W
    assert inventory.gpus[0].power_limit_w is None
    assert gpu.power_w is None
    assert gpu.util_pct == 100  # the rest of the GPU's reading stands
    assert [(e["field"], e["gpu"]) for e in logs if e["event"] == "reading_out_of_range"] == [
        ("gpus[].power_limit_w", 0),
        ("gpus[].power_w", 0),
        ("gpus[].temp_c", 0),  # the fake's temperature follows power: 452 C
        ("gpus[].mem_temp_c", 0),  # and so does its memory's
    ]


@pytest.mark.parametrize("queue_max", [0, MAX_XIDS + 1])
def test_xid_queue_cannot_outgrow_the_schema(clock: FakeClock, queue_max: int) -> None:
    """More queued XIDs than a sample may carry would get the sample rejected: refused."""
    with pytest.raises(ValueError, match="xid_queue_max"):
        NvmlBackend(FakeNvml(1, clock=clock), clock=clock, xid_queue_max=queue_max)


def test_slow_tick_adds_ecc_and_remapped_rows(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """ECC counters and row remapping are read on slow ticks only."""
    nvml = FakeNvml(1, clock=clock)
    backend = _backend(nvml, clock, backends)
    backend.start()
    (gpu,) = backend.sample(clock.monotonic(), slow=True)
    assert gpu.ecc == GpuEcc(
        corrected_volatile=0,
        uncorrected_volatile=0,
        corrected_aggregate=0,
        uncorrected_aggregate=0,
    )
    assert gpu.remapped_rows == GpuRemappedRows(
        correctable=0, uncorrectable=0, pending=False, failure=False
    )
    backend.sample(clock.monotonic(), slow=False)
    assert nvml.call_count("nvmlDeviceGetTotalEccErrors") == 4
    assert nvml.call_count("nvmlDeviceGetRemappedRows") == 1


def test_not_supported_is_remembered(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """A field NVML calls NotSupported on a GPU is None there and never asked again."""
    unsupported = {1: {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetSerial"}}
    nvml = FakeNvml(2, clock=clock, unsupported=unsupported, load_pct=50)
    backend = _backend(nvml, clock, backends)
    inventory = backend.start()
    assert [g.serial for g in inventory.gpus] == ["1654000000000", None]
    for _ in range(3):
        gpus = backend.sample(clock.monotonic(), slow=False)
        clock.advance(5)
    assert (gpus[1].energy_j, gpus[1].power_interval_w) == (None, None)
    assert gpus[1].power_w == _LOAD_50_W
    assert gpus[0].power_interval_w == pytest.approx(_LOAD_50_W, abs=0.01)
    assert nvml.call_count("nvmlDeviceGetTotalEnergyConsumption", gpu=1) == 1
    assert nvml.call_count("nvmlDeviceGetTotalEnergyConsumption", gpu=0) == 3


def test_unsupported_ecc_is_none(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """ECC off (consumer GPUs): the slow-tick ECC block is None, asked once per counter."""
    unsupported = {0: {"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows"}}
    nvml = FakeNvml(1, clock=clock, unsupported=unsupported)
    backend = _backend(nvml, clock, backends)
    backend.start()
    for _ in range(2):
        (gpu,) = backend.sample(clock.monotonic(), slow=True)
        assert (gpu.ecc, gpu.remapped_rows) == (None, None)
    assert nvml.call_count("nvmlDeviceGetTotalEccErrors") == 4
    assert nvml.call_count("nvmlDeviceGetRemappedRows") == 1


def test_older_apis_are_used_when_newer_are_missing(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """Without GetCurrentClocksEventReasons or memory v2 the older calls answer instead."""
    nvml = FakeNvml(
        1,
        clock=clock,
        load_pct=2,
        missing_functions={"nvmlDeviceGetMemoryInfo_v2"},
        unsupported={0: {"nvmlDeviceGetCurrentClocksEventReasons"}},
    )
    backend = _backend(nvml, clock, backends)
    backend.start()
    for _ in range(3):
        (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert gpu.clock_event_reasons == 0x1  # GPU idle, from the throttle-reasons call
    assert gpu.mem_total_bytes == 81_559 * _MIB
    assert gpu.mem_used_bytes == 1024 * _MIB + int(0.02 * 0.7 * 81_559 * _MIB)
    assert gpu.mem_reserved_bytes is None  # only the v2 struct reports it
    assert nvml.call_count("nvmlDeviceGetCurrentClocksEventReasons") == 1
    assert nvml.call_count("nvmlDeviceGetCurrentClocksThrottleReasons") == 3
    assert nvml.call_count("nvmlDeviceGetMemoryInfo_v2") == 1  # at start, then remembered
    assert nvml.call_count("nvmlDeviceGetMemoryInfo") == 4


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("no_library", "no_library"),
        ("no_driver", "no_driver"),
        ("no_permission", "no_permission"),
    ],
)
def test_no_gpu_access_reports_why_once(
    mode: FakeMode, status: str, clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """No library, driver or permission: zero GPUs, the reason, one log line, no exception."""
    with capture_logs() as logs:
        backend = _backend(FakeNvml(8, clock=clock, mode=mode), clock, backends)
        inventory = backend.start()
        assert backend.sample(clock.monotonic(), slow=True) == []
        assert backend.drain_xids() == []
        backend.close()
    assert (inventory.status, inventory.gpus, inventory.driver) == (status, [], None)
    assert [(e["event"], e["status"]) for e in logs] == [("gpu_unavailable", status)]


def test_driver_without_gpus_is_no_gpu(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """A loaded driver that sees no GPU reports no_gpu with the driver version."""
    inventory = _backend(FakeNvml(0, clock=clock), clock, backends).start()
    assert (inventory.status, inventory.driver, inventory.gpus) == ("no_gpu", "550.54.15", [])


def test_real_pynvml_without_gpu_does_not_raise(clock: FakeClock) -> None:
    """The real pynvml on a machine without NVIDIA's library reports the reason."""
    backend = NvmlBackend(clock=clock)
    try:
        inventory = backend.start()
        if inventory.status == "ok":
            pytest.skip("this machine has NVIDIA GPUs")
        assert inventory.status in {"no_library", "no_driver", "no_permission", "no_gpu"}
        assert inventory.gpus == []
        assert backend.sample(clock.monotonic(), slow=False) == []
    finally:
        backend.close()


def test_energy_counter_reset_skips_one_interval(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """A driver reload restarts the energy counter: no interval power then, not negative."""
    nvml = FakeNvml(2, clock=clock, load_pct=50)
    backend = _backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=False)
    clock.advance(5)
    nvml.reset_energy(0)
    clock.advance(1)
    reset, other = backend.sample(clock.monotonic(), slow=False)
    assert reset.power_interval_w is None
    assert reset.energy_j == pytest.approx(_LOAD_50_W, abs=0.002)  # 1 s since the reset
    assert other.power_interval_w == pytest.approx(_LOAD_50_W, abs=0.01)
    clock.advance(5)
    reset, _ = backend.sample(clock.monotonic(), slow=False)
    assert reset.power_interval_w == pytest.approx(_LOAD_50_W, abs=0.01)


def test_lost_gpu_reports_nothing_and_is_not_asked_again(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """GpuIsLost: the GPU stays in the sample with no values; one error log; no more calls."""
    nvml = FakeNvml(2, clock=clock, load_pct=50)
    backend = _backend(nvml, clock, backends)
    backend.start()
    nvml.lose_gpu(1)
    with capture_logs() as logs:
        for _ in range(3):
            gpus = backend.sample(clock.monotonic(), slow=False)
    lost = gpus[1]
    assert (lost.index, lost.util_pct, lost.power_w, lost.temp_c) == (1, None, None, None)
    assert gpus[0].util_pct == 50
    assert [(e["event"], e["gpu"]) for e in logs] == [("gpu_lost", 1)]
    calls_on_lost = sum(n for (_, gpu), n in nvml.calls.items() if gpu == 1)
    backend.sample(clock.monotonic(), slow=True)
    assert sum(n for (_, gpu), n in nvml.calls.items() if gpu == 1) == calls_on_lost


def _drain_until(backend: NvmlBackend, count: int) -> list[XidEvent]:
    events: list[XidEvent] = []
    deadline = time.monotonic() + 5
    while len(events) < count and time.monotonic() < deadline:
        events += backend.drain_xids()
        time.sleep(0.005)
    return events


def test_xid_events_are_delivered(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """An XID raised on a GPU reaches drain_xids with the GPU index, code and wall time."""
    nvml = FakeNvml(4, clock=clock)
    backend = _backend(nvml, clock, backends)
    backend.start()
    with capture_logs() as logs:
        nvml.inject_xid(3, 79)
        events = _drain_until(backend, 1)
        nvml.inject_xid(0, 48)
        events += _drain_until(backend, 1)
    assert events == [
        XidEvent(gpu_index=3, xid=79, ts=clock.time()),
        XidEvent(gpu_index=0, xid=48, ts=clock.time()),
    ]
    assert backend.drain_xids() == []
    assert [(e["event"], e["gpu"], e["xid"]) for e in logs] == [
        ("gpu_xid", 3, 79),
        ("gpu_xid", 0, 48),
    ]


def test_close_stops_the_xid_thread(clock: FakeClock) -> None:
    """close() ends the watcher thread and frees the event set; a second close is harmless."""
    nvml = FakeNvml(2, clock=clock)
    backend = NvmlBackend(nvml, clock=clock, xid_wait_ms=20)
    backend.start()
    assert "nvml-xid" in {t.name for t in threading.enumerate()}
    backend.close()
    backend.close()
    assert "nvml-xid" not in {t.name for t in threading.enumerate()}
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()  # NVML was shut down


def test_same_seed_same_profile(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """The fake's profile depends only on seed and clock, so runs are reproducible."""
    runs = []
    for seed in (7, 7, 8):
        backend = _backend(FakeNvml(4, clock=FakeClock(), seed=seed), clock, backends)
        backend.start()
        runs.append(backend.sample(100.0, slow=True))
    assert runs[0] == runs[1]
    assert [g.uuid for g in runs[0]] != [g.uuid for g in runs[2]]
    assert [g.util_pct for g in runs[0]] != [g.util_pct for g in runs[2]]


def test_null_backend_has_nothing() -> None:
    """gpu_backend = none: zero GPUs, status disabled."""
    backend = NullGpuBackend()
    inventory = backend.start()
    assert (inventory.status, inventory.gpus, inventory.driver) == ("disabled", [], None)
    assert backend.sample(1.0, slow=True) == []
    assert backend.drain_xids() == []
    backend.close()


class _Binding:
    """pynvml as another nvidia-ml-py release ships it: FakeNvml minus the names in ``absent``.

    A release that lacks a name raises AttributeError for it, like a module does.
    """

    def __init__(self, fake: FakeNvml, absent: set[str]) -> None:
        self._fake = fake
        self._absent = absent

    def __getattr__(self, name: str) -> Any:
        if name in self._absent:
            raise AttributeError(f"module 'pynvml' has no attribute {name!r}")
        return getattr(self._fake, name)


def _binding_backend(
    nvml: FakeNvml, absent: set[str], clock: FakeClock, opened: list[NvmlBackend]
) -> NvmlBackend:
    backend = NvmlBackend(cast("NvmlModule", _Binding(nvml, absent)), clock=clock, xid_wait_ms=20)
    opened.append(backend)
    return backend


def test_old_binding_without_optional_symbols_falls_back(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """nvidia-ml-py 11.525 (no NVMLLibraryMismatchError, no clocks-event call): the throttle
    call answers, and an unsupported field is still just None."""
    nvml = FakeNvml(2, clock=clock, load_pct=2, unsupported={1: {"nvmlDeviceGetSerial"}})
    absent = {"NVMLLibraryMismatchError", "nvmlDeviceGetCurrentClocksEventReasons"}
    backend = _binding_backend(nvml, absent, clock, backends)
    inventory = backend.start()
    assert inventory.status == "ok"
    assert [g.serial for g in inventory.gpus] == ["1654000000000", None]
    for _ in range(2):
        gpus = backend.sample(clock.monotonic(), slow=True)
    assert [g.clock_event_reasons for g in gpus] == [0x1, 0x1]  # GPU idle
    assert [g.util_pct for g in gpus] == [2, 2]
    assert nvml.call_count("nvmlDeviceGetCurrentClocksThrottleReasons") == 4
    assert nvml.call_count("nvmlDeviceGetCurrentClocksEventReasons") == 0


def test_binding_without_throttle_call_uses_event_reasons_only(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """Bindings after the throttle call's removal: the event call answers; where a GPU does
    not support it, the reasons are None rather than an error."""
    nvml = FakeNvml(
        2,
        clock=clock,
        load_pct=2,
        unsupported={1: {"nvmlDeviceGetCurrentClocksEventReasons"}},
    )
    absent = {"nvmlDeviceGetCurrentClocksThrottleReasons"}
    backend = _binding_backend(nvml, absent, clock, backends)
    backend.start()
    for _ in range(2):
        gpus = backend.sample(clock.monotonic(), slow=False)
    assert [g.clock_event_reasons for g in gpus] == [0x1, None]
    assert [g.util_pct for g in gpus] == [2, 2]
    assert nvml.call_count("nvmlDeviceGetCurrentClocksEventReasons", gpu=0) == 2
    assert nvml.call_count("nvmlDeviceGetCurrentClocksEventReasons", gpu=1) == 1  # remembered
    assert nvml.call_count("nvmlDeviceGetCurrentClocksThrottleReasons") == 0


def test_binding_without_any_clock_reasons_call_reports_none(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """Neither clock-reasons name in the binding: that field is None, the rest is read."""
    absent = {"nvmlDeviceGetCurrentClocksThrottleReasons", "nvmlDeviceGetCurrentClocksEventReasons"}
    backend = _binding_backend(FakeNvml(1, clock=clock, load_pct=50), absent, clock, backends)
    backend.start()
    (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert (gpu.clock_event_reasons, gpu.util_pct, gpu.power_w) == (None, 50, _LOAD_50_W)
