"""NodeSampler: inventory and samples on the wire schema, seq, slow ticks, backends."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.fake_nvml import FakeNvml
from agent.gpu import GpuBackend, NvmlBackend
from agent.host import HostSampler
from agent.node import NodeSampler, make_gpu_backend
from shared.clock import FakeClock
from shared.errors import ConfigError
from shared.schema import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    XidEvent,
    decode_inventory,
    decode_sample,
    encode,
)
from tests.agent.helpers import node_sampler, rapl_zone
from tests.agent.test_host import FakeHost


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    """A fake procfs/sysfs tree with one RAPL package zone."""
    host = FakeHost(tmp_path)
    rapl_zone(host.sys)
    return host


def _node(
    fake: FakeHost, clock: FakeClock, gpu: GpuBackend, *, interval_s: float = 5.0
) -> NodeSampler:
    return node_sampler(fake, clock, gpu, rapl=True, interval_s=interval_s)


@pytest.fixture
def nvml(clock: FakeClock) -> FakeNvml:
    """8 fake H100s at 50 % load."""
    return FakeNvml(8, clock=clock, load_pct=50)


@pytest.fixture
def node(fake: FakeHost, clock: FakeClock, nvml: FakeNvml) -> Iterator[NodeSampler]:
    """A NodeSampler (not started yet) over the fake tree and the fake GPUs."""
    sampler = _node(fake, clock, NvmlBackend(nvml, clock=clock, xid_wait_ms=20))
    yield sampler
    sampler.close()


def _move_counters(fake: FakeHost) -> None:
    for ticks in fake.cpus.values():
        ticks[0] += 50
        ticks[3] += 50
    rx, tx, rx_errs, tx_errs, rx_drop, tx_drop = fake.nics["eth0"]
    fake.nics["eth0"] = (rx + 5_000, tx + 10_000, rx_errs, tx_errs, rx_drop, tx_drop)
    read, written = fake.disks["vda"]
    fake.disks["vda"] = (read + 100, written + 200)
    fake.write()
    zone = fake.sys / "class" / "powercap" / "intel-rapl:0" / "energy_uj"
    zone.write_text(f"{int(zone.read_text()) + 1_250_000_000}\n")  # 250 W over 5 s


def test_inventory_describes_the_node(node: NodeSampler) -> None:
    """Host, version, CPU, memory, GPUs and NICs; it survives the wire unchanged."""
    inventory = node.start()
    assert inventory.node == "gpu-node-07"
    assert inventory.host == socket.gethostname()
    assert inventory.agent_version == version("capwatch")
    assert inventory.cpu_model == "Intel(R) Xeon(R) Platinum 8480C"
    assert (inventory.cpu_count, inventory.cpu_cores) == (4, 2)
    assert inventory.mem_total_bytes == 16_000_000 * 1024
    assert len(inventory.gpus) == 8
    assert (inventory.gpu_status, inventory.gpu_driver) == ("ok", "550.54.15")
    assert [(n.name, n.speed_mbps) for n in inventory.nics] == [("eth0", 100_000)]
    assert decode_inventory(encode(inventory)) == inventory


def test_samples_round_trip_and_rates_appear_on_the_second(
    node: NodeSampler, fake: FakeHost, clock: FakeClock
) -> None:
    """First sample: every rate None. Second: rates known. Both decode to the same Sample."""
    node.start()
    first = node.sample()
    assert decode_sample(encode(first)) == first
    assert (first.seq, first.ts, first.interval_s, first.node) == (
        0,
        clock.time(),
        5.0,
        "gpu-node-07",
    )
    assert first.cpu.pct is None
    assert first.disk_io.read_bytes_per_s is None
    assert first.net.rx_bytes_per_s is None
    assert first.cpu_power_w is None
    assert [g.power_interval_w for g in first.gpus] == [None] * 8

    clock.advance(5)
    _move_counters(fake)
    second = node.sample()
    assert decode_sample(encode(second)) == second
    assert (second.seq, second.ts) == (1, clock.time())
    assert second.cpu.pct == 50.0
    assert second.cpu.per_core_pct == (50.0,) * 4
    assert second.disk_io.read_bytes_per_s == 100 * 512 / 5
    assert second.disk_io.write_bytes_per_s == 200 * 512 / 5
    assert (second.net.rx_bytes_per_s, second.net.tx_bytes_per_s) == (1_000.0, 2_000.0)
    assert second.cpu_power_w == 250.0
    for gpu in second.gpus:
        assert gpu.power_interval_w == pytest.approx(353.5, abs=0.01)
    assert len(encode(second)) < 8_000


def test_slow_fields_follow_slow_interval(node: NodeSampler, clock: FakeClock) -> None:
    """ECC and remapped rows on the first sample and then about every slow_interval_s."""
    node.start()
    slow_at = []
    for tick in range(26):
        if tick == 24:
            clock.advance(4.999)  # jitter: the tick due at 120 s comes a hair early
        elif tick:
            clock.advance(5)
        sample = node.sample()
        if sample.gpus[0].ecc is not None:
            assert sample.gpus[0].remapped_rows is not None
            slow_at.append(sample.seq)
    assert slow_at == [0, 12, 24]


def test_xids_are_carried_by_the_next_sample(
    node: NodeSampler, nvml: FakeNvml, clock: FakeClock
) -> None:
    """An XID seen by the watcher thread goes out with the next sample, once."""
    node.start()
    nvml.inject_xid(5, 94)
    deadline = time.monotonic() + 5
    xids: tuple[XidEvent, ...] = ()
    while not xids and time.monotonic() < deadline:
        time.sleep(0.01)
        xids = node.sample().xids
    assert xids == (XidEvent(gpu_index=5, xid=94, ts=clock.time()),)
    assert node.sample().xids == ()


def test_make_gpu_backend_kinds(clock: FakeClock) -> None:
    """none: disabled; fake: N fake GPUs from the seed; nvml: the real library."""
    disabled = make_gpu_backend("none", clock=clock)
    assert disabled.start().status == "disabled"
    fake = make_gpu_backend("fake", fake_gpus=2, seed=5, clock=clock)
    again = make_gpu_backend("fake", fake_gpus=2, seed=5, clock=clock)
    real = make_gpu_backend("nvml", clock=clock)
    try:
        inventory = fake.start()
        assert (inventory.status, len(inventory.gpus)) == ("ok", 2)
        assert again.start().gpus == inventory.gpus
        if real.start().status == "ok":
            pytest.skip("this machine has NVIDIA GPUs")
        assert real.sample(clock.monotonic(), slow=False) == []
    finally:
        for backend in (disabled, fake, again, real):
            backend.close()


def test_node_without_gpus_or_rapl(fake: FakeHost, clock: FakeClock) -> None:
    """gpu_backend none and no RAPL: valid samples with no GPUs and no CPU power."""
    sampler = node_sampler(
        fake, clock, make_gpu_backend("none", clock=clock), node="cpu-node-1", interval_s=1.0
    )
    inventory = sampler.start()
    assert (inventory.gpu_status, inventory.gpus) == ("disabled", [])
    sample = sampler.sample()
    assert (sample.gpus, sample.cpu_power_w) == ((), None)
    assert decode_sample(encode(sample)) == sample
    sampler.close()


def test_sample_before_start_is_refused(node: NodeSampler) -> None:
    """start() builds the GPU handles, so sample() must come after it, and start only once."""
    with pytest.raises(RuntimeError, match="start"):
        node.sample()
    node.start()
    with pytest.raises(RuntimeError, match="already"):
        node.start()


def test_bad_node_id_and_interval_are_refused(fake: FakeHost, clock: FakeClock) -> None:
    """A node id unusable in a topic, or an interval the schema rejects, fails early."""
    gpu = make_gpu_backend("none", clock=clock)
    host = HostSampler(clock, proc_root=fake.proc)
    with pytest.raises(ConfigError, match="node id"):
        NodeSampler(
            "a/b",
            gpu=gpu,
            rapl=None,
            host=host,
            interval_s=5,
            slow_interval_s=60,
            clock=clock,
        )
    for interval_s in (0, 0.009, 3600.5):
        with pytest.raises(ValueError, match="interval_s"):
            NodeSampler(
                "ok",
                gpu=gpu,
                rapl=None,
                host=host,
                interval_s=interval_s,
                slow_interval_s=60,
                clock=clock,
            )
    for interval_s in (MIN_INTERVAL_S, MAX_INTERVAL_S):  # the schema's bounds themselves
        sampler = NodeSampler(
            "ok",
            gpu=gpu,
            rapl=None,
            host=host,
            interval_s=interval_s,
            slow_interval_s=60,
            clock=clock,
        )
        sampler.close()


class _TwinNvml(FakeNvml):
    """A driver that reports GPU 3 under GPU 2's UUID (a board or firmware fault)."""

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802 (NVML's name)
        if handle is self.nvmlDeviceGetHandleByIndex(3):
            handle = self.nvmlDeviceGetHandleByIndex(2)
        return super().nvmlDeviceGetUUID(handle)


def test_a_gpu_whose_uuid_another_has_is_left_out(fake: FakeHost, clock: FakeClock) -> None:
    """NVML naming two GPUs by one UUID: the second is left out (logged), so the inventory
    and every sample stay valid on the wire (shared.schema refuses a message naming one GPU
    twice); before, building them raised and the agent could not start."""
    sampler = _node(fake, clock, NvmlBackend(_TwinNvml(8, clock=clock), clock=clock))
    try:
        with capture_logs() as logs:
            inventory = sampler.start()
        assert [g.index for g in inventory.gpus] == [0, 1, 2, 4, 5, 6, 7]
        assert [e for e in logs if e["event"] == "gpu_uuid_duplicate"] == [
            {
                "component": "agent.gpu",
                "event": "gpu_uuid_duplicate",
                "log_level": "warning",
                "gpu": 3,
                "same_as": 2,
                "uuid": inventory.gpus[2].uuid,
            }
        ]
        assert decode_inventory(encode(inventory)) == inventory
        sample = sampler.sample()
        assert [g.index for g in decode_sample(encode(sample)).gpus] == [0, 1, 2, 4, 5, 6, 7]
    finally:
        sampler.close()
