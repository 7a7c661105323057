"""The agent's spool: what a tick pays for it, and how fast a backlog drains. Figures only.

    .venv/bin/python bench/bench_spool.py [--ticks N] [--backlog N]

1. Per tick: CPU of ``Spool.append`` for a real 8-GPU sample (FakeNvml; CPU is
   ``time.process_time``, user + system, so the kernel's copy into the page cache counts),
   against the in-memory deque append it replaced; bytes written per tick; the wall time
   of one ``fsync`` of the tail segment (paid in a worker thread every ``spool_fsync_s``,
   never on the tick).
2. Catch-up: ``--backlog`` samples (3,600: one hour at 1 s) spooled while "the broker was
   away", then a :class:`agent.publisher.Publisher` drains them into a local Mosquitto
   while a live tick appends one sample a second: samples/s until the spool is empty, and
   how late the live tick woke (it must not starve). RSS of this process at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.host import HostSampler
from agent.node import NodeSampler, make_gpu_backend
from agent.publisher import Publisher
from agent.rapl import RaplReader
from agent.spool import Spool
from collector.localbroker import MosquittoBroker
from shared.clock import SystemClock
from shared.logging import configure_logging
from shared.schema import encode
from shared.settings import MqttSettings


def _sample_bytes() -> bytes:
    clock = SystemClock()
    node = NodeSampler(
        "bench-node",
        gpu=make_gpu_backend("fake", fake_gpus=8, clock=clock),
        rapl=RaplReader(Path("/sys"), clock),
        host=HostSampler(clock),
        interval_s=1.0,
        slow_interval_s=60.0,
        clock=clock,
    )
    node.start()
    node.sample()
    payload = encode(node.sample())
    node.close()
    return payload


def _per_tick(payload: bytes, ticks: int, root: Path) -> None:
    spool = Spool(root / "tick", max_bytes=1 << 30, max_age_s=86_400.0)
    spool.open()
    t0 = time.process_time()
    for _ in range(ticks):
        spool.append(payload)
    spool_us = (time.process_time() - t0) / ticks * 1e6
    written = spool.bytes_written / ticks
    ring: deque[bytes] = deque()
    t0 = time.process_time()
    for _ in range(ticks):
        ring.append(payload)
    deque_us = (time.process_time() - t0) / ticks * 1e6
    fsyncs = []
    for _ in range(20):
        spool.append(payload)
        fds, dirty = spool.take_sync()
        t = time.perf_counter()
        spool.sync_fds(fds, dirty)
        fsyncs.append((time.perf_counter() - t) * 1e3)
        spool.done_sync()
    spool.close()
    fsyncs.sort()
    print(f"sample:        {len(payload)} bytes encoded (8 GPUs, fast tick)")
    print(f"append:        {spool_us:.1f} us CPU/tick with the spool ({ticks} ticks)")
    print(f"deque append:  {deque_us:.2f} us CPU/tick (the in-memory buffer it replaced)")
    print(f"written:       {written:.0f} bytes/tick (record = sample + 10-byte header)")
    print(
        f"fsync:         median {fsyncs[len(fsyncs) // 2]:.2f} ms, max {fsyncs[-1]:.2f} ms "
        "wall (worker thread, once per spool_fsync_s)"
    )


async def _catch_up(payload: bytes, backlog: int, root: Path) -> None:
    spool = Spool(root / "catchup", max_bytes=1 << 30, max_age_s=86_400.0)
    spool.open()
    for _ in range(backlog):
        spool.append(payload)
    with MosquittoBroker(root / "broker") as broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        publisher = Publisher(mqtt, "bench-node", spool, lambda: b"{}", time.time)
        stop = asyncio.Event()
        late: list[float] = []

        async def live_tick() -> None:
            loop = asyncio.get_running_loop()
            due = loop.time() + 1.0
            while not stop.is_set():
                await asyncio.sleep(max(0.0, due - loop.time()))
                late.append(loop.time() - due)
                spool.append(payload)
                due += 1.0

        proc = psutil.Process()
        cpu0 = proc.cpu_times()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(publisher.run(stop), name="publisher")
            tg.create_task(live_tick(), name="live-tick")
            await publisher.connected.wait()
            t0 = time.perf_counter()
            # The spool has no "empty" event (nothing in the agent waits for one): poll.
            while len(spool) > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            stop.set()
        cpu1 = proc.cpu_times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    sent = publisher.published
    print(
        f"catch-up:      {sent} samples in {elapsed:.2f} s = {sent / elapsed:.0f} samples/s "
        f"(one in flight, local Mosquitto), {cpu_s / max(sent, 1) * 1e6:.0f} us CPU/sample"
    )
    print(
        f"live tick:     {len(late)} ticks during catch-up, woke at most "
        f"{max(late, default=0.0) * 1e3:.1f} ms late"
    )
    print(f"RSS:           {proc.memory_info().rss / 2**20:.1f} MiB (this process, at the end)")
    spool.close()


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=5000)
    parser.add_argument("--backlog", type=int, default=3600)
    args = parser.parse_args()
    configure_logging("warning")
    payload = _sample_bytes()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        _per_tick(payload, args.ticks, Path(tmp))
        asyncio.run(_catch_up(payload, args.backlog, Path(tmp)))


if __name__ == "__main__":
    main()
