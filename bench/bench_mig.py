"""MIG costs on an 8-GPU node: agent CPU per tick, wire bytes per sample, /metrics scrape.
Figures only.

    .venv/bin/python bench/bench_mig.py [--ticks N]

Three layouts of 8 fake H100s (:class:`agent.fake_nvml.FakeNvml`): no MIG, every GPU as
7 x 1g.10gb (56 MIG devices), and every GPU as 3g.40gb + 2 x 2g.20gb (24). CPU is
``time.process_time`` per call: the GPU backend alone on fast ticks (memory per MIG device)
and slow ticks (MIG devices enumerated again), and a whole node tick (host, GPUs, encoding)
at the agent's default mix of one slow tick per 12 (5 s interval, 60 s slow interval). The
fake answers in Python, so these figures are our cost, not the driver's: real NVML adds its
own per call (the printed call counts say how many). Wire bytes are the JSON the agent
publishes; the scrape is the agent's /metrics text (agent.dcgm.dcgm_families, prometheus_client).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.host import HostSampler
from agent.metrics import render_sample
from agent.node import NodeSampler
from agent.rapl import RaplReader
from shared.clock import FakeClock
from shared.logging import configure_logging
from shared.schema import encode

_LAYOUTS: dict[str, Mapping[int, Sequence[str]]] = {
    "no MIG": {},
    "7 x 1g.10gb": {g: ["1g.10gb"] * 7 for g in range(8)},
    "3g.40gb + 2 x 2g.20gb": {g: ["3g.40gb", "2g.20gb", "2g.20gb"] for g in range(8)},
}


def _cpu_us(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def _measure(layout: Mapping[int, Sequence[str]], n: int) -> dict[str, float]:
    """One layout's figures."""
    clock = FakeClock()
    nvml = FakeNvml(8, clock=clock, load_pct=40, mig=layout)
    backend = NvmlBackend(nvml, clock=clock, xid_wait_ms=50)
    node = NodeSampler(
        "bench-node",
        gpu=backend,
        rapl=RaplReader(Path("/sys"), clock),
        host=HostSampler(clock),
        interval_s=5.0,
        slow_interval_s=60.0,
        clock=clock,
    )
    node.start()
    try:

        def tick() -> None:
            clock.advance(5.0)
            encode(node.sample())

        def calls(slow: bool) -> int:
            before = sum(nvml.calls.values())
            backend.sample(clock.monotonic(), slow=slow)
            return sum(nvml.calls.values()) - before

        backend.sample(clock.monotonic(), slow=True)  # the first: MIG devices found
        out = {
            "fast_us": _cpu_us(lambda: backend.sample(clock.monotonic(), slow=False), n),
            "slow_us": _cpu_us(lambda: backend.sample(clock.monotonic(), slow=True), n // 4),
            "fast_calls": calls(slow=False),
            "slow_calls": calls(slow=True),
            "tick_us": _cpu_us(tick, n),  # 5 s steps: one slow tick in 12
        }
        clock.advance(5.0)  # a tick's interval: rates (interval power, NVLink) filled
        sample = node.sample()
        out["migs"] = sum(len(g.mig) for g in sample.gpus)
        out["wire"] = len(encode(sample))
        out["scrape_bytes"] = len(render_sample(sample))
        out["scrape_us"] = _cpu_us(lambda: render_sample(sample), n // 4)
    finally:
        node.close()
    return out


def main() -> None:
    """Print one block of figures per layout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=300, help="ticks per figure (default 300)")
    args = parser.parse_args()
    configure_logging("warning")
    base: dict[str, float] = {}
    for name, layout in _LAYOUTS.items():
        f = _measure(layout, args.ticks)
        base = base or f
        print(f"{name} ({f['migs']:.0f} MIG devices on 8 GPUs)")
        print(
            f"  GPU backend, fast tick   {f['fast_us']:8.0f} us  ({f['fast_calls']:.0f} NVML calls)"
        )
        print(
            f"  GPU backend, slow tick   {f['slow_us']:8.0f} us  ({f['slow_calls']:.0f} NVML calls)"
        )
        print(
            f"  node tick (1 slow in 12) {f['tick_us']:8.0f} us  "
            f"({f['tick_us'] - base['tick_us']:+.0f} us vs no MIG)"
        )
        print(
            f"  wire bytes per sample    {f['wire']:8.0f}     "
            f"({f['wire'] - base['wire']:+.0f} vs no MIG)"
        )
        print(
            f"  /metrics scrape          {f['scrape_us']:8.0f} us  ({f['scrape_bytes']:.0f} bytes)"
        )


if __name__ == "__main__":
    main()
