"""Running the agent's command line in a fresh interpreter, as an operator would; opening
an NVML backend on the fake NVML; a RAPL zone and a node sampler over a fake /proc and /sys;
a sample of given GPUs and its /metrics series."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client.parser import text_string_to_metric_families

from agent.fake_nvml import FakeNvml
from agent.gpu import GpuBackend, NvmlBackend
from agent.host import HostSampler
from agent.metrics import render_sample
from agent.node import NodeSampler
from agent.rapl import RaplReader
from shared.clock import FakeClock
from shared.schema import CpuStats, GpuSample, MemStats, Sample

if TYPE_CHECKING:
    from agent.jobs import JobAttributor
    from tests.agent.test_host import FakeHost

__all__ = [
    "RAPL_MAX_RANGE_UJ",
    "REPO",
    "gpu_sample",
    "node_sampler",
    "open_backend",
    "rapl_zone",
    "run_agent",
    "scrape",
    "ticks",
]

REPO = Path(__file__).resolve().parents[2]


def run_agent(
    *args: str,
    env: Mapping[str, str] | None = None,
    pythonpath: Path | None = None,
    code: str | None = None,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` (or ``python -c CODE ARGS``); the caller's CAPWATCH_* dropped.

    ``env`` adds variables; ``pythonpath`` goes first on the import path (stand-in modules).
    """
    full = {k: v for k, v in os.environ.items() if not k.startswith("CAPWATCH_")}
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join(
        str(p) for p in (pythonpath, REPO, full.get("PYTHONPATH")) if p
    )
    argv = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "agent"]
    return subprocess.run(
        [*argv, *args],
        check=False,
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def open_backend(nvml: FakeNvml, clock: FakeClock, opened: list[NvmlBackend]) -> NvmlBackend:
    """An :class:`NvmlBackend` on ``nvml``, added to ``opened`` (the ``backends`` fixture
    closes it after the test)."""
    backend = NvmlBackend(nvml, clock=clock, xid_wait_ms=20)
    opened.append(backend)
    return backend


RAPL_MAX_RANGE_UJ: Final = 262_143_328_850
"""A real package zone's ``max_energy_range_uj``: where its energy counter wraps."""


def rapl_zone(
    sysfs: Path,
    entry: str = "intel-rapl:0",
    name: str = "package-0",
    energy_uj: int = 1_000_000,
    max_range: int = RAPL_MAX_RANGE_UJ,
) -> Path:
    """A powercap zone ``sysfs/class/powercap/ENTRY`` as the kernel lays one out (its
    ``name``, ``energy_uj`` and ``max_energy_range_uj``); its directory."""
    zone = sysfs / "class" / "powercap" / entry
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def node_sampler(
    fake: FakeHost,
    clock: FakeClock,
    gpu: GpuBackend | FakeNvml,
    *,
    node: str = "gpu-node-07",
    rapl: bool = False,
    interval_s: float = 5.0,
    jobs: JobAttributor | None = None,
    pci_ids: list[Path] | None = None,
) -> NodeSampler:
    """A :class:`NodeSampler` over ``fake``'s /proc and /sys: a fake NVML read through an
    :class:`NvmlBackend` (XID wait 20 ms), RAPL from ``fake.sys`` when ``rapl``."""
    if isinstance(gpu, FakeNvml):
        gpu = NvmlBackend(gpu, clock=clock, xid_wait_ms=20)
    return NodeSampler(
        node,
        gpu=gpu,
        rapl=RaplReader(fake.sys, clock) if rapl else None,
        host=HostSampler(clock, proc_root=fake.proc, sysfs_root=fake.sys),
        interval_s=interval_s,
        slow_interval_s=60.0,
        clock=clock,
        pci_ids=pci_ids,
        jobs=jobs,
    )


def ticks(backend: NvmlBackend, clock: FakeClock, n: int) -> list[GpuSample]:
    """``n`` samples 5 s apart, the first a slow one (as the agent's); the last one's GPUs."""
    gpus: list[GpuSample] = []
    for tick in range(n):
        gpus = backend.sample(clock.monotonic(), slow=tick == 0)
        clock.advance(5.0)
    return gpus


def gpu_sample(*gpus: GpuSample) -> Sample:
    """A node's sample carrying ``gpus`` (the rest minimal)."""
    return Sample(
        v=1,
        node="n1",
        ts=1.8e9,
        seq=0,
        interval_s=5.0,
        cpu=CpuStats(count=4),
        mem=MemStats(total_bytes=1, used_bytes=0, available_bytes=1),
        gpus=gpus,
    )


def scrape(sample: Sample) -> list[tuple[str, dict[str, str], float]]:
    """The agent's /metrics after ``sample``, parsed: (name, labels, value) per series."""
    families = text_string_to_metric_families(render_sample(sample).decode())
    return [(s.name, s.labels, s.value) for f in families for s in f.samples]
