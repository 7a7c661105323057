"""Job attribution's cost on the agent's tick: 8 GPUs x 16 processes. Figures only.

    .venv/bin/python bench/bench_jobs.py [--samples N] [--gpus 8] [--per-gpu 16]

Starts ``gpus x per_gpu`` real processes (``sleep``), each with a Slurm job's environment
(one job per GPU, as ``srun`` under ``proctrack/linuxproc`` would start them), makes the
fake NVML report them on the GPUs, and measures ``NodeSampler.sample()`` plus ``encode``:

* without attribution (the agent before it), then with it once its cache is warm (the
  steady state: each tick is dictionary look-ups and the processes' structs);
* the cold cost: reading one PID (``/proc/<pid>/stat``, ``status``, ``cgroup``,
  ``environ``, the user's name) in the attributor's worker thread, off the tick;
* the encoded sample's size, and the resident memory of a fresh interpreter taking 100
  attributed samples (the same child for both, so the difference is attribution's).

CPU is ``time.process_time`` (every thread of this process) per sample.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bounds import Bounds
from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.host import HostSampler
from agent.jobs import JobAttributor, read_owner
from agent.node import NodeSampler
from agent.rapl import RaplReader
from shared.clock import SystemClock
from shared.logging import configure_logging
from shared.schema import encode


@contextmanager
def _processes(gpus: int, per_gpu: int) -> Iterator[list[list[int]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pids: list[list[int]] = []
        for g in range(gpus):
            env = {
                **os.environ,
                "SLURM_JOB_ID": str(700_000 + g),
                "SLURM_STEP_ID": "0",
                "SLURM_JOB_ACCOUNT": "bench-account",
                "SLURM_JOB_PARTITION": "gpu",
            }
            row = []
            for _ in range(per_gpu):
                p = subprocess.Popen(["sleep", "600"], env=env)
                procs.append(p)
                row.append(p.pid)
            pids.append(row)
        yield pids
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _sampler(pids: list[list[int]], jobs: JobAttributor | None) -> NodeSampler:
    clock = SystemClock()
    nvml = FakeNvml(len(pids), clock=clock, load_pct=80.0)
    for g, row in enumerate(pids):
        nvml.set_processes(g, [(pid, 1 << 30) for pid in row])
    return NodeSampler(
        "bench-node",
        gpu=NvmlBackend(nvml, clock=clock),
        rapl=RaplReader(Path("/sys"), clock),
        host=HostSampler(clock),
        interval_s=5.0,
        slow_interval_s=3600.0,
        clock=clock,
        jobs=jobs,
    )


def _cpu_ms(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1000


def _tick_ms(node: NodeSampler, n: int, rounds: int = 5) -> float:
    """The median of ``rounds`` runs of ``n`` samples (each encoded), ms CPU per sample."""
    figures = sorted(_cpu_ms(lambda: encode(node.sample()), n) for _ in range(rounds))
    return figures[len(figures) // 2]


def _rss_child(gpus: int, per_gpu: int, attribute: bool) -> float:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from bench.bench_jobs import _child\n"
        "_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).resolve().parent.parent),
         str(gpus), str(per_gpu), "1" if attribute else "0"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def _child(gpus: int, per_gpu: int, attribute: bool) -> None:
    configure_logging(level="error")
    with _processes(gpus, per_gpu) as pids:
        jobs = JobAttributor(Path("/proc"), Bounds(SystemClock())) if attribute else None
        node = _sampler(pids, jobs)
        node.start()
        node.sample()
        if jobs is not None:
            jobs.wait_idle(60.0)
        for _ in range(100):
            encode(node.sample())
        node.close()
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                print(int(line.split()[1]) / 1024)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--per-gpu", type=int, default=16)
    args = parser.parse_args()
    configure_logging(level="error")
    n = args.samples
    print(f"{args.gpus} GPUs x {args.per_gpu} processes (real `sleep`s with SLURM_* set)")
    with _processes(args.gpus, args.per_gpu) as pids:
        plain = _sampler(pids, None)
        plain.start()
        plain.sample()
        base_ms = _tick_ms(plain, n)
        base_bytes = len(encode(plain.sample()))
        plain.close()

        jobs = JobAttributor(Path("/proc"), Bounds(SystemClock()))
        node = _sampler(pids, jobs)
        node.start()
        node.sample()  # queues every PID
        t0 = time.perf_counter()
        jobs.wait_idle(60.0)
        warm_s = time.perf_counter() - t0
        sample = node.sample()
        attributed = sum(1 for g in sample.gpus for p in g.processes if p.job is not None)
        with_ms = _tick_ms(node, n)
        with_bytes = len(encode(node.sample()))
        node.close()

        flat = [pid for row in pids for pid in row]
        root = Path("/proc")
        read_ms = _cpu_ms(lambda: [read_owner(root, pid) for pid in flat], 5) / len(flat)

    print(f"  attributed processes: {attributed} of {len(flat)}; jobs: {len(sample.jobs)}")
    print(f"  tick without attribution: {base_ms:.3f} ms CPU (sample + encode, median of 5)")
    print(f"  tick with attribution:    {with_ms:.3f} ms CPU (warm cache)")
    print(f"  difference:               {with_ms - base_ms:+.3f} ms per tick")
    print(
        f"  cold: {read_ms * 1000:.0f} us CPU per PID read (worker thread, off the tick); "
        f"{len(flat)} PIDs attributed {warm_s * 1000:.0f} ms after first seen"
    )
    print(f"  encoded sample: {base_bytes} B without, {with_bytes} B with attribution")
    rss_off = _rss_child(args.gpus, args.per_gpu, attribute=False)
    rss_on = _rss_child(args.gpus, args.per_gpu, attribute=True)
    print(f"  RSS after 100 samples: {rss_off:.1f} MiB without, {rss_on:.1f} MiB with")


if __name__ == "__main__":
    main()
