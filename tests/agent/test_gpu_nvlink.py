"""NVLink traffic through NvmlBackend over FakeNvml: rates from NVML's data counters, a
counter reset, GPUs without NVLink, hostile counter values, the wire, and the agent's
/metrics under dcgm-exporter's names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pynvml
import pytest
from structlog.testing import capture_logs

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from shared.clock import FakeClock
from shared.schema import (
    MAX_NVLINK_BYTES_PER_S,
    GpuNvlink,
    GpuSample,
    Sample,
    decode_sample,
    encode,
)
from tests.agent.helpers import gpu_sample, open_backend, scrape, ticks

_NVLINK_FIELDS = {
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
}


class _Recording(FakeNvml):
    """The fake, recording the field ids asked for; ``status`` (and ``value_type``,
    ``kib``) replace the NVLink counters' answers when set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[list[Any]] = []
        self.status: int | None = None
        self.value_type = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        self.kib: float = 0

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[Any]) -> Any:  # noqa: N802
        """The fake's answer; the NVLink counters' replaced when ``status`` is set."""
        self.asked.append(list(field_ids))
        values = list(super().nvmlDeviceGetFieldValues(handle, field_ids))
        if self.status is None:
            return values
        attr = "dVal" if self.value_type == pynvml.NVML_VALUE_TYPE_DOUBLE else "ullVal"
        fake = SimpleNamespace(
            nvmlReturn=self.status,
            valueType=self.value_type,
            value=SimpleNamespace(**{attr: self.kib}),
        )
        return [fake if v.fieldId in _NVLINK_FIELDS else v for v in values]

    def nvlink_asked(self) -> int:
        """Calls that asked for an NVLink counter."""
        return sum(
            1
            for ids in self.asked
            if any((i[0] if isinstance(i, tuple) else i) in _NVLINK_FIELDS for i in ids)
        )


def test_rates_are_the_counters_over_the_interval(backends: list[NvmlBackend]) -> None:
    """Sent and received bytes/s of every GPU, from KiB counters summed over all links
    (scopeId UINT_MAX); the first sample has no rate yet."""
    clock = FakeClock()
    nvml = _Recording(2, clock=clock, load_pct=50)
    backend = open_backend(nvml, clock, backends)
    backend.start()
    first = backend.sample(clock.monotonic(), slow=True)
    assert [g.nvlink for g in first] == [None, None]
    clock.advance(5.0)
    gpus = backend.sample(clock.monotonic(), slow=False)
    tx, rx = nvml.nvlink_bytes_per_s(0)
    assert tx == 0.4 * 450e9 * 0.5  # the fake's 90 GB/s sent at 50 % load
    for g in gpus:
        assert g.nvlink is not None
        # Whole KiB on both readings: at most 2 KiB off over 5 s.
        assert g.nvlink.tx_bytes_per_s == pytest.approx(tx, abs=2048 / 5)
        assert g.nvlink.rx_bytes_per_s == pytest.approx(rx, abs=2048 / 5)
    scopes = {i[1] for ids in nvml.asked for i in ids if isinstance(i, tuple)}
    assert scopes == {0xFFFFFFFF}


def test_varying_load_gives_the_mean_over_the_interval(backends: list[NvmlBackend]) -> None:
    """Traffic changing within the interval: the rate is the counters' difference over it."""
    clock = FakeClock()
    nvml = FakeNvml(1, clock=clock)
    backend = open_backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=True)
    before = nvml.nvlink_bytes_per_s(0)[0]
    clock.advance(30.0)
    (gpu,) = backend.sample(clock.monotonic(), slow=False)
    after = nvml.nvlink_bytes_per_s(0)[0]
    assert gpu.nvlink is not None
    assert gpu.nvlink.tx_bytes_per_s is not None
    assert before != after
    assert min(before, after) < gpu.nvlink.tx_bytes_per_s < max(before, after)


def test_counter_reset_skips_one_interval(backends: list[NvmlBackend]) -> None:
    """A driver reload restarts the counters at 0: no rate for that interval (never a
    negative or huge one), the next interval's as before; other GPUs unaffected."""
    clock = FakeClock()
    nvml = FakeNvml(2, clock=clock, load_pct=40)
    backend = open_backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=True)
    clock.advance(5.0)
    backend.sample(clock.monotonic(), slow=False)
    nvml.reset_nvlink(0)
    clock.advance(5.0)
    reset, other = backend.sample(clock.monotonic(), slow=False)
    assert reset.nvlink is None
    assert other.nvlink is not None
    clock.advance(5.0)
    (again, _) = backend.sample(clock.monotonic(), slow=False)
    assert again.nvlink is not None
    assert again.nvlink.tx_bytes_per_s == pytest.approx(nvml.nvlink_bytes_per_s(0)[0], abs=500)


def test_gpu_without_nvlink_is_never_asked(backends: list[NvmlBackend]) -> None:
    """A PCIe card (NVLink count 0): no NVLink in its samples, no NVLink field asked after
    the count, and nothing logged above debug."""
    clock = FakeClock()
    nvml = _Recording(1, clock=clock, nvlink_links=0)
    backend = open_backend(nvml, clock, backends)
    with capture_logs() as logs:
        backend.start()
        (gpu,) = ticks(backend, clock, 3)
    assert gpu.nvlink is None
    assert gpu.mem_temp_c is not None
    assert nvml.nvlink_asked() == 0
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


def test_not_supported_counters_are_asked_once(backends: list[NvmlBackend]) -> None:
    """NVML counts links but answers NotSupported for their counters: asked once."""
    clock = FakeClock()
    nvml = _Recording(1, clock=clock)
    nvml.status = pynvml.NVML_ERROR_NOT_SUPPORTED
    backend = open_backend(nvml, clock, backends)
    backend.start()
    (gpu,) = ticks(backend, clock, 4)
    assert gpu.nvlink is None
    assert nvml.nvlink_asked() == 1
    assert gpu.mem_temp_c is not None  # the call goes on for the memory temperature


def test_counter_jump_past_the_bound_is_unknown_not_a_lostgpu_sample(
    backends: list[NvmlBackend],
) -> None:
    """A counter leaping by more than the schema allows in the interval (or a NaN double):
    that rate is None, logged, and the sample still decodes."""
    clock = FakeClock()
    nvml = _Recording(1, clock=clock)
    nvml.status = pynvml.NVML_SUCCESS
    backend = open_backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=True)
    nvml.kib = 5.0 * MAX_NVLINK_BYTES_PER_S  # 5 s at 1024 x the bound
    clock.advance(5.0)
    with capture_logs() as logs:
        (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert gpu.nvlink is None
    assert {e["field"] for e in logs if e["event"] == "reading_out_of_range"} == {
        "gpus[].nvlink.tx_bytes_per_s",
        "gpus[].nvlink.rx_bytes_per_s",
    }
    nvml.value_type, nvml.kib = pynvml.NVML_VALUE_TYPE_DOUBLE, float("nan")
    clock.advance(5.0)
    (gpu,) = backend.sample(clock.monotonic(), slow=False)
    assert gpu.nvlink is None
    decode_sample(encode(gpu_sample(gpu)))


def test_nvlink_on_the_wire_costs_a_null_where_absent(backends: list[NvmlBackend]) -> None:
    """A sample with NVLink rates decodes as sent; a GPU without NVLink carries
    ``"nvlink":null``; a direction without a rate is left out."""
    clock = FakeClock()
    nvml = FakeNvml(2, clock=clock, load_pct=70, unsupported={1: {_TX_TOKEN}})
    backend = open_backend(nvml, clock, backends)
    backend.start()
    backend.sample(clock.monotonic(), slow=True)
    clock.advance(5.0)
    sample = gpu_sample(*backend.sample(clock.monotonic(), slow=False))
    payload = encode(sample)
    assert decode_sample(payload) == sample
    assert payload.count(b'"nvlink":null') == 1
    assert b'"nvlink":{"tx_bytes_per_s":' in payload
    assert msgspec.json.encode(GpuNvlink(rx_bytes_per_s=1.0)) == b'{"rx_bytes_per_s":1.0}'


_TX_TOKEN = "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"


def _series(sample: Sample) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in scrape(sample):
        out.setdefault(name, []).append((labels, value))
    return out


def test_metrics_carry_dcgm_names_and_arithmetic() -> None:
    """Each direction in bytes/s under DCGM's profiling names; DCGM_FI_DEV_NVLINK_BANDWIDTH_
    TOTAL as DCGM computes it (KiB/s of both directions / 1000, truncated); a GPU without
    NVLink has none of them."""
    uuid = "GPU-00000002-c209-4cac-a29f-6fbed82c07cd"
    with_nvlink = GpuSample(
        index=0, uuid=uuid, nvlink=GpuNvlink(tx_bytes_per_s=9.0e10, rx_bytes_per_s=8.55e10)
    )
    without = GpuSample(index=1, uuid=uuid.replace("2-c", "3-c"))
    series = _series(gpu_sample(with_nvlink, without))
    assert [(d["gpu"], v) for d, v in series["DCGM_FI_PROF_NVLINK_TX_BYTES"]] == [("0", 9.0e10)]
    assert [(d["gpu"], v) for d, v in series["DCGM_FI_PROF_NVLINK_RX_BYTES"]] == [("0", 8.55e10)]
    total = int((9.0e10 + 8.55e10) / 1024 / 1000)
    assert total == 171_386
    assert [(d["gpu"], v) for d, v in series["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"]] == [
        ("0", total)
    ]
    half = gpu_sample(GpuSample(index=0, uuid=uuid, nvlink=GpuNvlink(tx_bytes_per_s=1e9)))
    assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" not in _series(half)
