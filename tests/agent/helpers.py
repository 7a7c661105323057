"""Running the agent's command line in a fresh interpreter, as an operator would; opening
an NVML backend on the fake NVML."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from shared.clock import FakeClock

__all__ = ["REPO", "open_backend", "run_agent"]

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
