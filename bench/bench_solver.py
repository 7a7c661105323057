"""Time the power-cap solver: one solve and a 100-point sweep (medians; no pass/fail).

Run: ``.venv/bin/python bench/bench_solver.py``. The issue's targets are < 10 ms for one
solve and < 1 s for a 100-point sweep.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from collector.power import load_plan, parse_sweep, solve_fixed, solve_max, sweep, with_param

__all__ = ["main"]

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "power"


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm caches (type hints, mix tables)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    """Print the median time of each benchmark."""
    old = load_plan(DATA / "old_tool_example.json")
    pod = load_plan(DATA / "dgx_h100_superpod.toml")
    big = with_param(old, "it_cap_mw", 100.0)
    caps = parse_sweep("it_cap_mw=1:100:1")
    gpu_w = parse_sweep("node.gpu_w=600:1095:5")
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("one solve, old tool config, fat tree (5 MW)", lambda: solve_max(old), 51),
        ("one solve, DGX SuperPOD plan (1.5 MW)", lambda: solve_max(pod), 51),
        (
            "one solve, old tool config at 100 MW (3 tiers)",
            lambda: solve_max(big),
            51,
        ),
        ("fixed fleet, 127 DGX (live check)", lambda: solve_fixed(pod, {"DGX-H100": 127}), 51),
        (
            f"sweep it_cap_mw=1:100:1 ({len(caps.values)} points)",
            lambda: sweep(old, caps.param, caps.values),
            7,
        ),
        (
            f"sweep node.gpu_w=600:1095:5 ({len(gpu_w.values)} points, 5 MW)",
            lambda: sweep(old, gpu_w.param, gpu_w.values),
            7,
        ),
    ]
    for name, fn, runs in cases:
        print(f"{name:<62} {_median_ms(fn, runs):9.2f} ms  (median of {runs})")


if __name__ == "__main__":
    main()
