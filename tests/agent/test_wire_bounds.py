"""The agent never publishes what the collector would reject, whatever its sensors say.

Two ends: the real ``agent sample`` / ``agent inventory`` on this machine, and a node whose
NVML, procfs, sysfs and RAPL counters all report absurd figures (1e300 W, 2**70 bytes, NaN,
100,000 filesystems, 2,000 NICs, 10,000 CPUs, 100 GPUs). Every message must decode with the
collector's own decoder, and the readings that were sane must come through unchanged.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest
from structlog.testing import capture_logs

from agent.fake_nvml import FakeNvml
from agent.node import NodeSampler
from shared.clock import FakeClock
from shared.schema import (
    MAX_CPUS,
    MAX_DISKS,
    MAX_FSTYPE_LEN,
    MAX_GPUS,
    MAX_HOST_MEM_BYTES,
    MAX_LOAD,
    MAX_MODEL_NAME_LEN,
    MAX_NICS,
    MAX_PROCESSES_PER_GPU,
    MAX_VERSION_LEN,
    Inventory,
    Sample,
    decode_inventory,
    decode_sample,
    encode,
)
from tests.agent.helpers import node_sampler, rapl_zone, run_agent
from tests.agent.test_host import FakeHost

_BAD_UUID_GPU = 5
_LOAD_50_W = 70 + (700 - 70) * 0.9 * 0.5  # the fake's true power at 50 % load: 353.5 W


@pytest.mark.parametrize("backend", ["fake", "none"])
def test_real_host_sample_and_inventory_decode(backend: str) -> None:
    """``agent sample`` and ``agent inventory`` on this machine pass the collector's decoder."""
    args = ("--gpu-backend", backend, "--node-id", "e2e-node", "--log-level", "warning")
    done = run_agent("sample", "--wait", "0.2", *args)
    assert done.returncode == 0, done.stderr
    sample = decode_sample(done.stdout.encode())
    assert "reading_out_of_range" not in done.stderr  # a sane machine loses nothing
    assert sample.node == "e2e-node"
    assert sample.mem.total_bytes == psutil.virtual_memory().total
    assert sample.cpu.pct is not None
    assert len(sample.gpus) == (8 if backend == "fake" else 0)
    assert all(g.power_interval_w is not None for g in sample.gpus)

    done = run_agent("inventory", *args)
    assert done.returncode == 0, done.stderr
    inventory = decode_inventory(done.stdout.encode())
    assert inventory.cpu_count == psutil.cpu_count()
    assert inventory.gpu_status == ("ok" if backend == "fake" else "disabled")


class AbsurdNvml(FakeNvml):
    """NVML gone mad on 100 GPUs: every reading past its physical range.

    Utilisation and the energy counter's increments stay sane (so interval power does), and
    GPU 5's UUID is not in NVML's form.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(100, clock=clock, load_pct=50, name="X" * 1000, driver_version="5" * 200)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802 (pynvml's name)
        """GPU 5's is garbage."""
        uuid = super().nvmlDeviceGetUUID(handle)
        return "GPU-not-a-uuid" if self.nvmlDeviceGetHandleByIndex(5) is handle else uuid

    def nvmlDeviceGetSerial(self, handle: Any) -> str:  # noqa: N802
        """100 characters (NVML's buffer holds 30)."""
        super().nvmlDeviceGetSerial(handle)
        return "S" * 100

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:  # noqa: N802
        """A three-digit bus."""
        super().nvmlDeviceGetPciInfo(handle)
        return SimpleNamespace(busId="00000000:108:00.0")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:  # noqa: N802
        """1 MW."""
        super().nvmlDeviceGetEnforcedPowerLimit(handle)
        return 10**9

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:  # noqa: N802
        """2**70 bytes (and as much reserved)."""
        super().nvmlDeviceGetMemoryInfo(handle, version)
        return SimpleNamespace(total=2**70, used=2**70, free=0, reserved=2**70)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:  # noqa: N802
        """Sane GPU utilisation, NaN memory utilisation."""
        util = super().nvmlDeviceGetUtilizationRates(handle)
        return SimpleNamespace(gpu=util.gpu, memory=math.nan)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:  # noqa: N802
        """1e300 W, in mW."""
        super().nvmlDeviceGetPowerUsage(handle)
        return 10**303

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802
        """The true counter plus 2**62 mJ (4.6e15 J): increments sane, total absurd."""
        return 2**62 + super().nvmlDeviceGetTotalEnergyConsumption(handle)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any:  # noqa: N802
        """NaN."""
        super().nvmlDeviceGetTemperature(handle, sensor)
        return math.nan

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:  # noqa: N802
        """100,000 MHz: inside the agent's old check, outside the schema."""
        super().nvmlDeviceGetClockInfo(handle, clock_type)
        return 100_000

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[int]) -> Any:  # noqa: N802
        """A NaN memory temperature."""
        super().nvmlDeviceGetFieldValues(handle, field_ids)
        nan = SimpleNamespace(dVal=math.nan)
        return [
            SimpleNamespace(
                nvmlReturn=pynvml.NVML_SUCCESS, valueType=pynvml.NVML_VALUE_TYPE_DOUBLE, value=nan
            )
            for _ in field_ids
        ]

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:  # noqa: N802
        """101 %."""
        super().nvmlDeviceGetEncoderUtilization(handle)
        return [101, 167_000]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:  # noqa: N802
        """2**32 - 1 %, an unset unsigned int."""
        super().nvmlDeviceGetDecoderUtilization(handle)
        return [2**32 - 1, 167_000]

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:  # noqa: N802
        """Past NVML's 32-bit counter."""
        super().nvmlDeviceGetPcieReplayCounter(handle)
        return 2**33

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:  # noqa: N802
        """A 40-bit mask."""
        super().nvmlDeviceGetCurrentClocksEventReasons(handle)
        return 2**40

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:  # noqa: N802
        """P99."""
        super().nvmlDeviceGetPerformanceState(handle)
        return 99

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        """300 processes: the first with an impossible PID, the second with 2**70 bytes."""
        super().nvmlDeviceGetComputeRunningProcesses(handle)
        procs = [
            pynvml.nvmlFriendlyObject({"pid": 1000 + k, "usedGpuMemory": 2**30}) for k in range(300)
        ]
        procs[0] = pynvml.nvmlFriendlyObject({"pid": 2**40, "usedGpuMemory": 2**30})
        procs[1] = pynvml.nvmlFriendlyObject({"pid": 999, "usedGpuMemory": 2**70})
        return procs

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: Any, error_type: int, counter_type: int
    ) -> int:
        """2**60 errors."""
        super().nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type)
        return 2**60

    def nvmlDeviceGetRemappedRows(self, handle: Any) -> tuple[int, int, int, int]:  # noqa: N802
        """2**60 remapped rows."""
        super().nvmlDeviceGetRemappedRows(handle)
        return (2**60, 0, 0, 0)


def _absurd_host(tmp_path: Path) -> FakeHost:
    """A procfs/sysfs tree where every file that can hold an absurd figure does."""
    fake = FakeHost(tmp_path)
    fake.cpus = {f"cpu{i}": [1000, 0, 0, 9000, 0, 0, 0, 0, 0, 0] for i in range(10_000)}
    fake.loadavg = "nan 1e300 -5 2/345 6789"
    fake.meminfo = {
        "MemTotal": 2**70,
        "MemAvailable": 2**70,
        "SwapTotal": 2**60,
        "SwapFree": 0,
    }
    long_fstype = "f" * 100
    fake.filesystems.append(f"\t{long_fstype}")
    fake.mounts = [
        f"/dev/long /{'p' * 5000} ext4 rw 0 0",  # mount point past PATH_MAX
        f"/dev/{'d' * 5000} {fake.data} ext4 rw 0 0",  # device path past PATH_MAX
        f"/dev/vda {fake.data} ext4 rw 0 0",
        f"/dev/odd {fake.data} {long_fstype} rw 0 0",
        *(f"/dev/sd{i} {fake.data} ext4 rw 0 0" for i in range(100_000)),
    ]
    fake.nics = {
        "lo": (0, 0, 0, 0, 0, 0),
        "eth0": (1_000_000, 2_000_000, 3, 4, 5, 6),
        "eth1": (0, 0, 2**64 - 1, 0, 0, 0),
        "a" * 20: (0, 0, 0, 0, 0, 0),  # past IFNAMSIZ
        **{f"ens{i}": (0, 0, 0, 0, 0, 0) for i in range(2_000)},
    }
    fake.physical_nics = set(fake.nics) - {"lo"}
    fake.cpuinfo = f"processor\t: 0\nmodel name\t: {'Z' * 1000}\n\n"
    fake.write()
    eth0 = fake.sys / "class" / "net" / "eth0"
    (eth0 / "speed").write_text(f"{10**9}\n")
    (eth0 / "address").write_text(":".join(["aa"] * 40) + "\n")
    rapl_zone(fake.sys, max_range=2**70)
    return fake


def _step(fake: FakeHost) -> None:
    """Sane progress on eth0 and the CPUs; counter jumps on eth1, the disk and RAPL."""
    for ticks in fake.cpus.values():
        ticks[0] += 50
        ticks[3] += 50
    fake.nics["eth0"] = (1_005_000, 2_010_000, 3, 4, 5, 6)
    fake.nics["eth1"] = (2**63, 0, 2**64 - 1, 0, 0, 0)
    fake.disks["vda"] = (2**60, 2**60)
    fake.write()
    energy = fake.sys / "class" / "powercap" / "intel-rapl:0" / "energy_uj"
    energy.write_text(f"{1_000_000 + 2**69}\n")


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


@pytest.fixture
def absurd(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[NodeSampler, FakeHost, AbsurdNvml]]:
    """A NodeSampler over the absurd host tree and the absurd NVML."""
    fake = _absurd_host(tmp_path)
    nvml = AbsurdNvml(clock)
    node = node_sampler(fake, clock, nvml, node="absurd-node", rapl=True)
    yield node, fake, nvml
    node.close()


def _published(sample: Sample) -> Sample:
    """What the collector gets: encode, then its decoder (which raises on any bad field)."""
    decoded = decode_sample(encode(sample))
    assert decoded == sample
    return decoded


def test_absurd_readings_never_cost_the_sample(
    absurd: tuple[NodeSampler, FakeHost, AbsurdNvml], clock: FakeClock
) -> None:
    """Each absurd reading is dropped or clamped, logged once; the sane ones survive intact."""
    node, fake, nvml = absurd
    with capture_logs() as logs:
        inventory = decode_inventory(encode(node.start()))
        first = _published(node.sample())
        clock.advance(5)
        _step(fake)
        second = _published(node.sample())
        nvml.inject_xid(3, 2**40)
        nvml.inject_xid(3, 79)
        deadline = time.monotonic() + 5
        while not (later := _published(node.sample())).xids and time.monotonic() < deadline:
            time.sleep(0.005)

    _check_inventory(inventory)
    gpu_indices = [i for i in range(MAX_GPUS) if i != _BAD_UUID_GPU]
    assert [g.index for g in first.gpus] == gpu_indices
    assert first.gpus[0].ecc is None  # slow tick: every ECC counter was garbage
    assert first.gpus[0].remapped_rows is None

    s = second
    assert (s.cpu.count, len(s.cpu.per_core_pct or ())) == (MAX_CPUS, MAX_CPUS)
    assert s.cpu.pct == 50.0
    assert (s.cpu.load1, s.cpu.load5, s.cpu.load15) == (0.0, MAX_LOAD, 0.0)
    assert s.mem.total_bytes == MAX_HOST_MEM_BYTES
    assert s.mem.used_bytes + s.mem.available_bytes == s.mem.total_bytes
    assert s.mem.swap_used_bytes == s.mem.swap_total_bytes == MAX_HOST_MEM_BYTES
    assert len(s.disks) == MAX_DISKS
    assert (s.disks[0].device, s.disks[0].mount) == ("/dev/vda", str(fake.data))
    assert s.disks[1].fstype == "f" * MAX_FSTYPE_LEN
    assert s.disk_io.read_bytes_per_s is None  # 2**60 sectors in 5 s
    nics = {n.name: n for n in s.net.nics}
    assert len(s.net.nics) == MAX_NICS
    assert "a" * 20 not in nics
    assert (nics["eth0"].rx_bytes_per_s, nics["eth0"].tx_bytes_per_s) == (1_000.0, 2_000.0)
    assert (nics["eth0"].rx_errors, nics["eth0"].tx_drops) == (3, 6)
    assert nics["eth1"].rx_bytes_per_s is None  # 2**63 bytes in 5 s
    assert nics["eth1"].rx_errors == 2**53 - 1
    assert (s.net.rx_bytes_per_s, s.net.tx_bytes_per_s) == (1_000.0, 2_000.0)  # eth1 left out
    assert s.cpu_power_w is None  # 2**69 uJ in 5 s

    gpu = s.gpus[0]
    assert gpu.uuid == inventory.gpus[0].uuid
    assert gpu.util_pct == 50
    assert gpu.power_interval_w == pytest.approx(_LOAD_50_W, abs=0.01)
    assert (gpu.power_w, gpu.energy_j, gpu.temp_c, gpu.mem_util_pct) == (None, None, None, None)
    assert (gpu.mem_used_bytes, gpu.mem_total_bytes) == (None, None)
    assert (gpu.sm_clock_mhz, gpu.clock_event_reasons, gpu.pstate) == (None, None, None)
    assert (gpu.mem_clock_mhz, gpu.mem_temp_c, gpu.mem_reserved_bytes) == (None, None, None)
    assert (gpu.enc_util_pct, gpu.dec_util_pct, gpu.pcie_replays) == (None, None, None)
    assert len(gpu.processes) == MAX_PROCESSES_PER_GPU - 1  # capped, then PID 2**40 went
    assert gpu.processes[0].pid == 999
    assert gpu.processes[0].used_mem_bytes is None
    assert gpu.processes[1].used_mem_bytes == 2**30

    assert [(x.gpu_index, x.xid) for x in later.xids] == [(3, 79)]
    _check_logs(logs)


def _check_inventory(inventory: Inventory) -> None:
    assert inventory.cpu_model == "Z" * MAX_MODEL_NAME_LEN
    assert inventory.cpu_count == MAX_CPUS
    assert inventory.mem_total_bytes == MAX_HOST_MEM_BYTES
    assert inventory.gpu_driver == "5" * MAX_VERSION_LEN
    assert [g.index for g in inventory.gpus] == [i for i in range(MAX_GPUS) if i != _BAD_UUID_GPU]
    first = inventory.gpus[0]
    assert first.name == "X" * MAX_MODEL_NAME_LEN
    assert first.uuid.startswith("GPU-")
    assert (first.serial, first.pci_bus_id, first.power_limit_w) == (None, None, None)
    assert first.mem_total_bytes is None
    assert first.mig_mode is False
    nics = {n.name: n for n in inventory.nics}
    assert len(inventory.nics) == MAX_NICS
    assert "a" * 20 not in nics
    assert (nics["eth0"].speed_mbps, nics["eth0"].mac) == (None, None)


def _check_logs(logs: list[MutableMapping[str, Any]]) -> None:
    dropped = Counter(
        (e.get("gpu"), e["field"]) for e in logs if e["event"] == "reading_out_of_range"
    )
    # Once per field (and GPU), though several samples carried the same garbage.
    assert max(dropped.values()) == 1, dropped.most_common(3)
    fields = {field for _, field in dropped}
    assert fields >= {
        "cpu.count", "cpu.load1", "cpu.load5", "cpu.load15", "mem.total_bytes",
        "mem.swap_total_bytes", "disks[].mount", "disks[].device", "disks[].fstype",
        "disk_io.read_bytes_per_s", "net.nics[].rx_bytes_per_s", "net.nics[].rx_errors",
        "nics[].name", "nics[].speed_mbps", "nics[].mac", "cpu_power_w", "cpu_model",
        "cpu_count", "mem_total_bytes", "gpu_driver", "gpus[].uuid", "gpus[].name",
        "gpus[].serial", "gpus[].pci_bus_id", "gpus[].power_limit_w", "gpus[].power_w",
        "gpus[].energy_j", "gpus[].mem_used_bytes", "gpus[].mem_total_bytes",
        "gpus[].mem_util_pct", "gpus[].temp_c", "gpus[].sm_clock_mhz",
        "gpus[].clock_event_reasons", "gpus[].pstate", "gpus[].processes[].pid",
        "gpus[].mem_clock_mhz", "gpus[].mem_temp_c", "gpus[].enc_util_pct",
        "gpus[].dec_util_pct", "gpus[].pcie_replays", "gpus[].mem_reserved_bytes",
        "gpus[].processes[].used_mem_bytes", "gpus[].ecc.corrected_volatile",
        "gpus[].remapped_rows.correctable", "xids[].xid",
    }  # fmt: skip
    truncated = {e["field"] for e in logs if e["event"] == "list_truncated"}
    assert truncated == {
        "gpus",
        "gpus[].processes",
        "cpu.per_core_pct",
        "disks",
        "net.nics",
        "nics",
    }
