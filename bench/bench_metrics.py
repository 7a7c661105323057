"""What /metrics costs: the agent per tick, the collector per scrape at 12,500 nodes. Figures only.

    .venv/bin/python bench/bench_metrics.py [--seconds S] [--nodes N] [--scrapes K]

Agent: three real ``agent run --interval 1 --gpu-backend fake`` processes (8 fake GPUs)
publishing to a local Mosquitto: one without ``--metrics-listen``, one with it, one with it
behind ``--web-config-file`` (TLS and a bcrypt user). The last two are scraped once per tick
(every second: 15 times Prometheus' default rate, so the worst case). Whole-process CPU
(utime + stime of every thread, ``/proc/<pid>/stat``) over the window, per tick, and RSS at
its end. In-process: what the sampler pays per tick (``AgentExposition.update``) and what
one scrape costs (families + text).

Collector: 12,500 simulated 8-GPU nodes put into a collector's live view, its /metrics served
by the real server on loopback, scraped ``--scrapes`` times over HTTP while a heartbeat task
on the event loop measures how late it wakes (the stall a scrape causes ingestion). Prints
scrape wall time, bytes, the snapshot's time on the loop, and the heartbeat's worst lateness
with and without scrapes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest

from agent.host import HostSampler
from agent.metrics import AgentExposition, AgentStats
from agent.node import NodeSampler, make_gpu_backend
from agent.simulate import FleetSimulator
from collector.ingest.writer import Writer, WriterItem
from collector.localbroker import MosquittoBroker, free_port
from collector.service import Collector
from collector.settings import CollectorSettings
from collector.store.db import Store
from shared.clock import SystemClock
from shared.logging import configure_logging

_REPO = Path(__file__).resolve().parent.parent

_SCRAPER = """
import sys, time, httpx
url, n = sys.argv[1], int(sys.argv[2])
with httpx.Client(trust_env=False, timeout=30) as client:
    for _ in range(n):
        t0 = time.perf_counter()
        body = client.get(url).content
        print((time.perf_counter() - t0) * 1000, len(body))
        time.sleep(1.05)  # past the collector's 1 s snapshot reuse: each scrape is a full one
"""


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _secured(workdir: Path) -> tuple[Path, ssl.SSLContext]:
    """A web config (TLS with a throw-away CA, one bcrypt user, cost 12 as htpasswd -B
    makes by default here) and the client context that trusts its CA."""
    import bcrypt  # noqa: PLC0415

    from tests.integration.secure_broker import make_pki  # noqa: PLC0415

    pki = make_pki(workdir / "pki", client_cn="prometheus")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(12)).decode()
    web = workdir / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    return web, ssl.create_default_context(cafile=pki.ca_cert)


def _agent_process(
    broker: MosquittoBroker,
    workdir: Path,
    seconds: int,
    *,
    metrics: bool,
    secured: tuple[Path, ssl.SSLContext] | None = None,
) -> tuple[float, float, int]:
    """(CPU ms per tick, RSS MB, bytes of the last scrape) of one agent process; with
    ``secured``, /metrics over TLS with basic auth (a new TLS connection per scrape: the
    server closes each, as for Prometheus)."""
    port = free_port()
    log = workdir / f"agent-{metrics}-{secured is not None}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPWATCH_")}
    command = [
        sys.executable, "-m", "agent", "run", "--interval", "1", "--gpu-backend", "fake",
        "--node-id", f"bench-metrics-{metrics}", "--host", broker.host,
        "--port", str(broker.port), "--log-json", "--log-level", "info",
    ]  # fmt: skip
    if metrics:
        command += ["--metrics-listen", f"127.0.0.1:{port}"]
    scheme = "http"
    verify: ssl.SSLContext | bool = True
    auth: tuple[str, str] | None = None
    if secured is not None:
        command += ["--web-config-file", str(secured[0])]
        scheme, verify, auth = "https", secured[1], ("prometheus", "s3cret")
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=_REPO, env=env, stdout=out, stderr=out)
    size = 0
    try:
        deadline = time.monotonic() + 30
        while '"mqtt_connected"' not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not connect:\n{log.read_text()}")
            time.sleep(0.05)
        time.sleep(3.0)  # warm-up: rate baselines, the first slow tick
        with httpx.Client(trust_env=False, timeout=5, verify=verify, auth=auth) as client:
            if metrics:  # outside the window: the one bcrypt check of the password
                client.get(f"{scheme}://127.0.0.1:{port}/metrics").raise_for_status()
            cpu0, t0 = _proc_cpu_s(proc.pid), time.monotonic()
            while time.monotonic() - t0 < seconds:
                if metrics:
                    r = client.get(f"{scheme}://127.0.0.1:{port}/metrics")
                    r.raise_for_status()
                    size = len(r.content)
                time.sleep(1.0)
        cpu1, t1 = _proc_cpu_s(proc.pid), time.monotonic()
        rss = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return (cpu1 - cpu0) / round(t1 - t0) * 1000, rss, size


def _agent_in_process(n: int = 2000) -> tuple[float, float, int]:
    """(µs per update, ms per scrape, bytes) in this process, 8 fake GPUs."""
    clock = SystemClock()
    sampler = NodeSampler(
        "bench",
        gpu=make_gpu_backend("fake", fake_gpus=8, clock=clock),
        rapl=None,
        host=HostSampler(clock),
        interval_s=1.0,
        slow_interval_s=60.0,
        clock=clock,
    )
    inventory = sampler.start()
    samples = [sampler.sample() for _ in range(3)]
    sampler.close()
    expo = AgentExposition(lambda: AgentStats(1, 1, 0, 0, True, 0.1))
    expo.inventory = inventory
    t0 = time.process_time()
    for i in range(n):
        expo.update(samples[i % 3])
    update_us = (time.process_time() - t0) / n * 1e6
    registry = CollectorRegistry(auto_describe=False)
    registry.register(expo)
    generate_latest(registry)
    t0 = time.process_time()
    for _ in range(200):
        text = generate_latest(registry)
    return update_us, (time.process_time() - t0) / 200 * 1000, len(text)


async def _collector(nodes: int, scrapes: int, workdir: Path) -> None:
    settings = CollectorSettings(db_path=workdir / "c.db", metrics_listen="127.0.0.1:0")
    collector = Collector(settings)
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=1, interval_s=5)
    now = time.time()
    for i in range(nodes):
        collector.live.on_sample(sim.sample(i, now, 0), now)
        collector.live.on_status(sim.node_ids[i], "online", now)
    collector.connected.set()
    async with Store(settings.db_path) as store:
        from collector.health import Health  # noqa: PLC0415
        from collector.metrics import FLEET_CHUNK_NODES  # noqa: PLC0415

        metrics = collector.exposition(store)
        queue: asyncio.Queue[WriterItem] = asyncio.Queue()
        writer = Writer(store, queue, collector.ingestor, collector.clock)
        health = Health(
            collector.clock, limit_s=30, connected=collector.connected, writer=writer, queue=queue
        )
        runs = []
        for _ in range(6):
            t0 = time.perf_counter()
            await metrics.snapshot()
            runs.append((time.perf_counter() - t0) * 1000)
        snapshot_ms = statistics.median(runs[1:])  # the first is cold
        lateness: list[float] = []

        async def heartbeat(stop: asyncio.Event) -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lateness.append(time.perf_counter() - t - 0.001)

        stop = asyncio.Event()
        async with metrics.serve(health) as server, asyncio.TaskGroup() as tg:
            tg.create_task(heartbeat(stop))
            await asyncio.sleep(2.0)
            idle_worst = max(lateness) * 1000
            lateness.clear()
            url = f"http://127.0.0.1:{server.port}/metrics"
            # The scraper is another process, as Prometheus is: its HTTP client does not
            # compete with the event loop for this interpreter's GIL.
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _SCRAPER, url, str(scrapes),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await child.communicate()
            rows = [line.split() for line in out.decode().splitlines()]
            times = [float(ms) for ms, _ in rows]
            size = int(rows[-1][1])
            stop.set()
        print(
            f"collector, {nodes:,} nodes x 8 GPUs in the live view, {scrapes} scrapes over HTTP:\n"
            f"  scrape wall time median {statistics.median(times):.1f} ms, max "
            f"{max(times):.1f} ms; {size:,} bytes\n"
            f"  snapshot on the event loop (fleet walk in chunks + families): median "
            f"{snapshot_ms:.1f} ms in total, yielding every {FLEET_CHUNK_NODES:,} nodes\n"
            f"  event-loop heartbeat (1 ms): worst lateness {max(lateness) * 1000:.1f} ms while "
            f"scraping, {idle_worst:.1f} ms idle (the stall a scrape can cause ingestion)"
        )


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="agent window (default 20)")
    parser.add_argument("--nodes", type=int, default=12_500)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument("--skip-agent-process", action="store_true")
    args = parser.parse_args()
    configure_logging("warning")
    update_us, scrape_ms, size = _agent_in_process()
    print(
        f"agent in-process, 8 fake GPUs: update() {update_us:.1f} µs per tick; one scrape "
        f"{scrape_ms:.2f} ms CPU, {size:,} bytes"
    )
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        workdir = Path(tmp)
        if not args.skip_agent_process:
            with MosquittoBroker(workdir / "broker") as broker:
                off = _agent_process(broker, workdir, args.seconds, metrics=False)
                on = _agent_process(broker, workdir, args.seconds, metrics=True)
                tls = _agent_process(
                    broker, workdir, args.seconds, metrics=True, secured=_secured(workdir)
                )
            print(
                f"agent run --interval 1 (8 fake GPUs), {args.seconds} s window:\n"
                f"  metrics off: {off[0]:.2f} ms CPU/tick, RSS {off[1]:.1f} MB\n"
                f"  metrics on, scraped every tick: {on[0]:.2f} ms CPU/tick, RSS {on[1]:.1f} MB"
                f" ({on[2]:,} bytes per scrape)\n"
                f"  metrics on, TLS + basic auth, scraped every tick: {tls[0]:.2f} ms CPU/tick, "
                f"RSS {tls[1]:.1f} MB (TLS + auth: {tls[0] - on[0]:+.2f} ms CPU per scrape)\n"
                f"  extra: {on[0] - off[0]:+.2f} ms CPU/tick, {on[1] - off[1]:+.1f} MB RSS "
                f"(CPU resolution {1000 / os.sysconf('SC_CLK_TCK') / args.seconds:.1f} ms/tick)"
            )
        asyncio.run(_collector(args.nodes, args.scrapes, workdir))


if __name__ == "__main__":
    main()
