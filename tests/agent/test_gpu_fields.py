"""NvmlBackend's dcgm-exporter fields over FakeNvml: memory clock and temperature,
encoder/decoder utilisation, PCIe replays, reserved framebuffer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from structlog.testing import capture_logs

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from shared.clock import FakeClock
from tests.agent.helpers import open_backend as _backend

_MIB = 2**20
_LOAD_50_W = 70 + (700 - 70) * 0.9 * 0.5  # the fake's power at 50 % load: 353.5 W
_NEW_CALLS = (
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetPcieReplayCounter",
)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


def test_new_fields_carry_nvmls_readings(clock: FakeClock, backends: list[NvmlBackend]) -> None:
    """Memory clock (MHz), memory temperature (C), encoder/decoder %, PCIe replays and the
    driver's reservation (B) are the fake NVML's figures, per GPU."""
    nvml = FakeNvml(2, clock=clock, load_pct=50)
    backend = _backend(nvml, clock, backends)
    backend.start()
    # Opening a GPU asks its NVLink count, once: a field value.
    assert nvml.call_count("nvmlDeviceGetFieldValues") == 2
    nvml.calls.clear()
    gpus = backend.sample(clock.monotonic(), slow=False)
    for gpu in gpus:
        assert gpu.mem_clock_mhz == 2619
        assert gpu.mem_temp_c == round(35 + 0.07 * _LOAD_50_W)
        assert (gpu.enc_util_pct, gpu.dec_util_pct) == (round(50 * 0.05), round(50 * 0.1))
        assert gpu.mem_reserved_bytes == 512 * _MIB
    assert [g.pcie_replays for g in gpus] == [0, 1]
    # One call per field and GPU per tick, the memory clock through the SM clock's function.
    assert all(nvml.call_count(fn) == 2 for fn in _NEW_CALLS)
    assert nvml.call_count("nvmlDeviceGetClockInfo") == 4


def test_unsupported_new_fields_are_none_and_probed_once(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """GPU 1 supports none of them (NotSupported from the call, or from the memory
    temperature's own field status): each is None there and asked once; GPU 0 is unaffected."""
    unsupported = {
        1: {
            "NVML_CLOCK_MEM",
            "NVML_FI_DEV_MEMORY_TEMP",
            "nvmlDeviceGetEncoderUtilization",
            "nvmlDeviceGetDecoderUtilization",
            "nvmlDeviceGetPcieReplayCounter",
            "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX",  # no NVLink: its count says 0
        }
    }
    nvml = FakeNvml(2, clock=clock, unsupported=unsupported, load_pct=50)
    backend = _backend(nvml, clock, backends)
    backend.start()
    nvml.calls.clear()  # the NVLink count asked at the start
    with capture_logs() as logs:
        for _ in range(3):
            first, second = backend.sample(clock.monotonic(), slow=False)
    assert (first.mem_clock_mhz, first.pcie_replays) == (2619, 0)
    assert None not in (first.mem_temp_c, first.enc_util_pct, first.dec_util_pct)
    assert (second.mem_clock_mhz, second.mem_temp_c, second.pcie_replays) == (None, None, None)
    assert (second.enc_util_pct, second.dec_util_pct) == (None, None)
    assert second.sm_clock_mhz == 1980  # the SM clock still answers through the same call
    for fn in _NEW_CALLS:
        assert (nvml.call_count(fn, gpu=0), nvml.call_count(fn, gpu=1)) == (3, 1), fn
    assert nvml.call_count("nvmlDeviceGetClockInfo", gpu=1) == 3 + 1  # SM each tick, MEM once
    unsupported_logged = sorted(
        e["field"] for e in logs if e["event"] == "gpu_field_unsupported" and e["gpu"] == 1
    )
    assert unsupported_logged == [
        "decoder_utilization",
        "encoder_utilization",
        "mem_clock",
        "mem_temp",
        "pcie_replays",
    ]
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_driver_without_the_functions_reports_none_once(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """An older driver lacking a function (FunctionNotFound): None, never asked again."""
    nvml = FakeNvml(1, clock=clock, missing_functions=set(_NEW_CALLS))
    backend = _backend(nvml, clock, backends)
    backend.start()
    for _ in range(3):
        (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert (gpu.mem_temp_c, gpu.enc_util_pct, gpu.dec_util_pct, gpu.pcie_replays) == (None,) * 4
    assert gpu.mem_clock_mhz == 2619
    assert all(nvml.call_count(fn) == 1 for fn in _NEW_CALLS)


class _FieldStatusNvml(FakeNvml):
    """The memory temperature field answers with ``status`` (and ``value_type``, ``value``);
    the other fields as the fake does."""

    def __init__(self, clock: FakeClock, status: int, value_type: int, value: Any) -> None:
        super().__init__(1, clock=clock, load_pct=50)
        self.status, self.value_type, self.value = status, value_type, value

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[Any]) -> Any:  # noqa: N802
        """The fake's field values, the memory temperature's replaced."""
        values = list(super().nvmlDeviceGetFieldValues(handle, field_ids))
        fv = SimpleNamespace(nvmlReturn=self.status, valueType=self.value_type, value=self.value)
        return [fv if v.fieldId == pynvml.NVML_FI_DEV_MEMORY_TEMP else v for v in values]


def test_memory_temperature_field_error_is_logged_once_and_retried(
    clock: FakeClock, backends: list[NvmlBackend]
) -> None:
    """A field status other than NotSupported (a transient error) gives None and one warning,
    and the field is asked again next tick."""
    nvml = _FieldStatusNvml(clock, pynvml.NVML_ERROR_UNKNOWN, 0, None)
    backend = _backend(nvml, clock, backends)
    backend.start()
    nvml.calls.clear()  # the NVLink count asked at the start
    with capture_logs() as logs:
        for _ in range(3):
            (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert gpu.mem_temp_c is None
    assert nvml.call_count("nvmlDeviceGetFieldValues") == 3
    failed = [e for e in logs if e["event"] == "gpu_read_failed"]
    assert [(e["field"], e["nvml_return"]) for e in failed] == [
        ("mem_temp", pynvml.NVML_ERROR_UNKNOWN)
    ]


@pytest.mark.parametrize(
    ("value_type", "value", "expected"),
    [
        (pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, SimpleNamespace(uiVal=81), 81),
        (pynvml.NVML_VALUE_TYPE_DOUBLE, SimpleNamespace(dVal=80.5), 80.5),
        (pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG, SimpleNamespace(sllVal=79), 79),
        (99, SimpleNamespace(), None),  # a type this agent does not know: dropped, logged
    ],
)
def test_memory_temperature_reads_the_fields_value_type(
    clock: FakeClock, backends: list[NvmlBackend], value_type: int, value: Any, expected: Any
) -> None:
    """The field's value is read from the union member its value type names."""
    nvml = _FieldStatusNvml(clock, pynvml.NVML_SUCCESS, value_type, value)
    backend = _backend(nvml, clock, backends)
    backend.start()
    with capture_logs() as logs:
        (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert gpu.mem_temp_c == expected
    dropped = [e["field"] for e in logs if e["event"] == "reading_out_of_range"]
    assert dropped == ([] if expected is not None else ["gpus[].mem_temp_c"])
