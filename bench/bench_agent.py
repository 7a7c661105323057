"""Agent sampling costs: CPU per sample, wire size, resident memory. Figures only.

    .venv/bin/python bench/bench_agent.py [--samples N]
    .venv/bin/python bench/bench_agent.py --process [--seconds S]

CPU time is ``time.process_time`` (user + system of this process, so the kernel's work
generating /proc files counts) divided by the number of samples. The GPU part runs over
FakeNvml, so it measures our Python and the fake's, not the driver: real NVML calls add
their own cost. "GPU backend alone" replays the fake's recorded answers (one dictionary
look-up per NVML call), so that figure is the agent's own Python per tick.
The RSS figure comes from a fresh interpreter that imports the agent's modules and takes
100 samples, so this script's own allocations do not count.

``--process`` measures the real thing instead: an ``agent run --interval 1`` process
(``--gpu-backend fake``, then ``none``) publishing to a local Mosquitto on a free port.
After it connects and a warm-up, the whole process's CPU (utime + stime of all threads,
from ``/proc/<pid>/stat``, so sampling, encoding, the event loop, MQTT and the XID
thread all count) over ``--seconds`` is divided by the ticks in that window; RSS and its
peak come from ``/proc/<pid>/status`` at the end of the window. The stat counters have
a resolution of one clock tick (10 ms), printed with the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.host import HostSampler
from agent.node import NodeSampler, make_gpu_backend
from agent.rapl import RaplReader
from collector.localbroker import MosquittoBroker, stop_process
from shared.clock import FakeClock, SystemClock
from shared.logging import configure_logging
from shared.schema import encode

_REPO = Path(__file__).resolve().parent.parent


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


class _Replay:
    """A :class:`FakeNvml`'s answers recorded once per (call, handle, arguments), then
    replayed: what the GPU backend costs without any NVML behind it."""

    def __init__(self, fake: FakeNvml) -> None:
        self._fake = fake
        self._memo: dict[tuple[object, ...], tuple[object, BaseException | None]] = {}

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._fake, name)
        if not name.startswith("nvmlDevice") or not callable(attr):
            return attr
        memo = self._memo

        def call(*args: object) -> object:
            key = (name, *(tuple(a) if isinstance(a, list) else id(a) for a in args))
            hit = memo.get(key)
            if hit is None:
                try:
                    hit = memo[key] = (attr(*args), None)
                except Exception as exc:
                    hit = memo[key] = (None, exc)
            if hit[1] is not None:
                raise hit[1]
            return hit[0]

        setattr(self, name, call)
        return call


def _backend_alone_us(n: int) -> float:
    """The GPU backend's fast tick over replayed answers (8 GPUs), best of three."""
    clock = FakeClock()
    backend = NvmlBackend(_Replay(FakeNvml(8, clock=clock, load_pct=40)), clock=clock)  # type: ignore[arg-type]
    backend.start()
    try:
        backend.sample(clock.monotonic(), slow=True)
        best = []
        for _ in range(3):
            start = time.process_time()
            for _ in range(n):
                clock.advance(5.0)
                backend.sample(clock.monotonic(), slow=False)
            best.append((time.process_time() - start) / n * 1e6)
        return min(best)
    finally:
        backend.close()


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


@dataclass(frozen=True, slots=True)
class _ProcessFigures:
    backend: str
    ticks: int
    cpu_s: float
    startup_cpu_s: float
    rss_kb: int
    peak_rss_kb: int
    threads: int
    published: int | None


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far, in seconds."""
    # Fields after the command name (which may hold spaces): state is field 3, utime 14.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) and Threads from ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def _wait_for_event(log: Path, event: str, proc: subprocess.Popen[bytes]) -> None:
    """Block until the agent's JSON log has ``event``; fail if it exits or 30 s pass."""
    deadline = time.monotonic() + 30
    while f'"{event}"' not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"agent exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {event} from the agent in 30 s:\n{log.read_text()}")
        time.sleep(0.05)


def _published(log: Path) -> int | None:
    """Samples the agent said it published, from its ``agent_stopped`` line."""
    for line in log.read_text().splitlines():
        if '"agent_stopped"' in line:
            value = json.loads(line).get("published")
            return value if isinstance(value, int) else None
    return None


def _run_agent_process(
    backend: str, broker: MosquittoBroker, seconds: int, warmup_s: float, workdir: Path
) -> _ProcessFigures:
    log = workdir / f"agent-{backend}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPWATCH_")}
    command = [
        sys.executable, "-m", "agent", "run", "--interval", "1", "--gpu-backend", backend,
        "--node-id", f"bench-{backend}", "--host", broker.host, "--port", str(broker.port),
        "--log-json", "--log-level", "info",
    ]  # fmt: skip
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            command, cwd=_REPO, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
    try:
        _wait_for_event(log, "mqtt_connected", proc)
        startup_cpu_s = _proc_cpu_s(proc.pid)
        time.sleep(warmup_s)  # first ticks: rate baselines, the first slow (ECC) tick
        cpu0, t0 = _proc_cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = _proc_cpu_s(proc.pid), time.monotonic()
        status = _proc_status(proc.pid)
    finally:
        stop_process(proc, timeout_s=20)
    return _ProcessFigures(
        backend=backend,
        # Ticks come every second from the agent's start: a window of whole seconds holds
        # exactly that many.
        ticks=round(t1 - t0),
        cpu_s=cpu1 - cpu0,
        startup_cpu_s=startup_cpu_s,
        rss_kb=status["VmRSS"],
        peak_rss_kb=status["VmHWM"],
        threads=status["Threads"],
        published=_published(log),
    )


def _process_mode(seconds: int, warmup_s: float) -> None:
    resolution_ms = 1000 / os.sysconf("SC_CLK_TCK")
    print(
        f"agent run --interval 1, whole process, {seconds} s window after {warmup_s:g} s "
        f"warm-up (CPU resolution {resolution_ms:g} ms per window)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        workdir = Path(tmp)
        with MosquittoBroker(workdir / "broker") as broker:
            for backend in ("fake", "none"):
                f = _run_agent_process(backend, broker, seconds, warmup_s, workdir)
                per_tick_ms = f.cpu_s / f.ticks * 1000
                label = "fake (8 GPUs)" if backend == "fake" else backend
                print(
                    f"  {label:<14} {per_tick_ms:5.2f} ms CPU/tick "
                    f"(±{resolution_ms / f.ticks:.2f}; {f.cpu_s * 1000:.0f} ms over {f.ticks} "
                    f"ticks, {f.cpu_s / seconds * 100:.2f} % of a core), "
                    f"RSS {f.rss_kb / 1024:.1f} MB (peak {f.peak_rss_kb / 1024:.1f} MB), "
                    f"{f.threads} threads, start-up {f.startup_cpu_s:.2f} s CPU, "
                    f"{f.published} samples published"
                )


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument(
        "--process",
        action="store_true",
        help="measure real `agent run` processes (fake and none GPU backends) instead",
    )
    parser.add_argument(
        "--seconds", type=int, default=20, help="--process: measured window (default 20)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="--process: seconds before the window"
    )
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("warning")
    if args.rss_child:
        _rss_child()
        return
    if args.process:
        _process_mode(args.seconds, args.warmup)
        return
    n = args.samples

    host = HostSampler(SystemClock())
    print(f"host part:   {_cpu_ms(host.sample, n):.3f} ms CPU/sample ({n} samples)")
    print(f"  (psutil's calls for the same counters: {_cpu_ms(_psutil_reads, n):.3f} ms)")

    node = _node_sampler(8)
    node.start()
    print(f"full sample: {_cpu_ms(node.sample, n):.3f} ms CPU/sample (FakeNvml, 8 GPUs)")
    print(f"GPU backend alone: {_backend_alone_us(n):.0f} us CPU/tick (8 GPUs, NVML replayed)")
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
