"""Running the agent's command line in a fresh interpreter, as an operator would; opening
an NVML backend on the fake NVML; a sample of given GPUs and its /metrics series."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.metrics import render_sample
from shared.clock import FakeClock
from shared.schema import CpuStats, GpuSample, MemStats, Sample

__all__ = ["REPO", "gpu_sample", "open_backend", "run_agent", "scrape", "ticks"]

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
