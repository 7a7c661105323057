"""Agent sampling costs: CPU per sample, wire size, resident memory. Figures only.

    .venv/bin/python bench/bench_agent.py [--samples N]

CPU time is ``time.process_time`` (user + system of this process, so the kernel's work
generating /proc files counts) divided by the number of samples. The GPU part runs over
FakeNvml, so it measures our Python, not the driver: real NVML calls add their own cost.
The RSS figure comes from a fresh interpreter that imports the agent's modules and takes
100 samples, so this script's own allocations do not count.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.host import HostSampler
from agent.node import NodeSampler, make_gpu_backend
from agent.rapl import RaplReader
from shared.clock import SystemClock
from shared.logging import configure_logging
from shared.schema import encode


def _cpu_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm up: first-call caches, rate state
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1000


def _psutil_reads() -> None:
    """What HostSampler would call if it used psutil, for comparison (no rates, no structs)."""
    psutil.cpu_times(percpu=True)
    psutil.getloadavg()
    psutil.virtual_memory()
    psutil.swap_memory()
    psutil.disk_io_counters(perdisk=True)
    psutil.net_io_counters(pernic=True)
    for part in psutil.disk_partitions(all=False):
        psutil.disk_usage(part.mountpoint)


def _node_sampler(gpus: int) -> NodeSampler:
    clock = SystemClock()
    return NodeSampler(
        "bench-node",
        gpu=make_gpu_backend("fake", fake_gpus=gpus, clock=clock),
        rapl=RaplReader(Path("/sys"), clock),
        host=HostSampler(clock),
        interval_s=5.0,
        slow_interval_s=60.0,
        clock=clock,
    )


def _rss_child() -> None:
    import aiomqtt  # noqa: F401, PLC0415
    import structlog  # noqa: F401, PLC0415

    import agent.settings  # noqa: F401, PLC0415

    node = _node_sampler(8)
    node.start()
    for _ in range(100):
        encode(node.sample())
    node.close()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            print(int(line.split()[1]) / 1024)
            return
    raise SystemExit("no VmRSS in /proc/self/status")


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("warning")
    if args.rss_child:
        _rss_child()
        return
    n = args.samples

    host = HostSampler(SystemClock())
    print(f"host part:   {_cpu_ms(host.sample, n):.3f} ms CPU/sample ({n} samples)")
    print(f"  (psutil's calls for the same counters: {_cpu_ms(_psutil_reads, n):.3f} ms)")

    node = _node_sampler(8)
    node.start()
    print(f"full sample: {_cpu_ms(node.sample, n):.3f} ms CPU/sample (FakeNvml, 8 GPUs)")
    sample = node.sample()
    print(f"encode:      {_cpu_ms(lambda: encode(sample), n):.3f} ms CPU/sample")
    print(f"wire size:   {len(encode(sample))} bytes (8 GPUs, fast tick)")
    node.close()
    slow = _node_sampler(8)
    slow.start()
    print(f"wire size:   {len(encode(slow.sample()))} bytes (8 GPUs, slow tick, no rates)")
    slow.close()

    child = subprocess.run(
        [sys.executable, __file__, "--rss-child"], capture_output=True, text=True, check=True
    )
    print(f"RSS:         {float(child.stdout):.1f} MB (agent modules imported, 100 samples)")


if __name__ == "__main__":
    main()
