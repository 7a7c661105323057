"""The collector's cost of polling BMCs over Redfish: CPU per poll, sockets held, round time.

Run: ``.venv/bin/python bench/bench_redfish.py [--bmcs 1000] [--interval 10] [--rounds 4]
[--tls]`` (prints figures; no pass/fail).

One loopback HTTP server (tests/redfish.py, in its own process so its CPU is not counted)
stands for ``--bmcs`` BMCs by path (``http://127.0.0.1:PORT/bmc/<n>``), each serving DMTF's
public-rackmount1 mockup (EnvironmentMetrics, 374 W) with basic auth. The collector's
:class:`~collector.redfish.poller.RedfishPoller` polls them all every ``--interval`` seconds
into a live view of as many nodes, as ``collector run`` does (one client and one kept-alive
connection per BMC, at most ``--concurrency`` polls in flight). Measured in this process:

- CPU (user + system) per poll in the steady state (after the first round, which also finds
  each BMC's chassis and opens its connection: reported apart), and the share of one core;
- sockets held (TCP connections of this process) after each round;
- each round's duration (from its start until its last poll ended) and the poll durations;
- the event loop's worst lag (a 10 ms ticker): what ingestion, on the same loop, would wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from collector.live import LiveView
from collector.localbroker import free_port
from collector.redfish.credentials import load_credentials
from collector.redfish.metrics import RedfishMetrics
from collector.redfish.poller import RedfishPoller
from collector.redfish.settings import BmcSettings, RedfishSettings
from shared.clock import SystemClock
from shared.logging import configure_logging

ROOT = Path(__file__).resolve().parents[1]
MOCKUP = ROOT / "tests" / "data" / "redfish" / "public-rackmount1-1.2.6"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def _hist(h: object) -> tuple[float, float]:
    """(sum, count) of a prometheus Histogram."""
    total = count = 0.0
    for fam in h.collect():  # type: ignore[attr-defined]
        for s in fam.samples:
            if s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
    return total, count


async def _lag(stop: asyncio.Event, worst: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], loop.time() - t - 0.01)


async def _run(args: argparse.Namespace, url: str, creds: Path, ca: Path | None) -> None:
    nodes = [f"n{i:05d}" for i in range(args.bmcs)]
    live = LiveView()
    for n in nodes:
        live.on_status(n, "online", time.time())
    settings = RedfishSettings(
        credentials_file=creds,
        interval_s=args.interval,
        timeout_s=5.0,
        max_concurrency=args.concurrency,
        ca_file=ca,
        bmcs=[BmcSettings(node=n, url=f"{url}/bmc/{i}") for i, n in enumerate(nodes)],  # type: ignore[arg-type]
    )
    metrics = RedfishMetrics(CollectorRegistry())
    poller = RedfishPoller(
        settings, load_credentials(creds), live.on_node_power, SystemClock(), metrics
    )
    stop = asyncio.Event()
    worst = [0.0]
    rows = []
    base_sockets = _sockets()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(poller.run(stop), name="poller")
        lag = tg.create_task(_lag(stop, worst), name="lag")
        start = time.monotonic()
        for r in range(args.rounds):
            cpu0, (s0, c0) = _cpu(), _hist(metrics.round_seconds)
            ok0 = sum(b.counts.get("ok", 0) for b in poller.bmcs)
            polls0 = sum(sum(b.counts.values()) for b in poller.bmcs)
            worst[0] = 0.0
            # Sample just before the next round starts: this round has ended by then.
            await asyncio.sleep(max(0.0, start + (r + 1) * args.interval - 0.05 - time.monotonic()))
            cpu1, (s1, c1) = _cpu(), _hist(metrics.round_seconds)
            polls = sum(sum(b.counts.values()) for b in poller.bmcs) - polls0
            ok = sum(b.counts.get("ok", 0) for b in poller.bmcs) - ok0
            rows.append(
                (r, polls, ok, cpu1 - cpu0, _sockets() - base_sockets,
                 (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"), worst[0])
            )  # fmt: skip
        stop.set()
        lag.cancel()
    scheme = "https (verified against a CA file)" if ca else "http"
    print(
        f"{args.bmcs} BMCs every {args.interval:g} s, max_concurrency {args.concurrency}, "
        f"{scheme}, keep-alive, one loopback server"
    )
    head = ("round", "polls", "ok", "cpu_s", "cpu/poll_ms", "core_%", "sockets", "round_s")
    print(" ".join(f"{h:>11}" for h in (*head, "loop_lag_ms")))
    for r, polls, ok, cpu, socks, rs, lag_s in rows:
        per = cpu / polls * 1e3 if polls else float("nan")
        cells = (r, polls, ok, f"{cpu:.3f}", f"{per:.3f}", f"{cpu / args.interval * 100:.1f}")
        print(" ".join(f"{c:>11}" for c in (*cells, socks, f"{rs:.3f}", f"{lag_s * 1e3:.1f}")))
    steady = rows[1:]
    if steady:
        polls = sum(r[1] for r in steady)
        cpu = sum(r[3] for r in steady)
        share = cpu / (len(steady) * args.interval) * 100
        rounds = [r[5] for r in steady]
        print(
            f"steady state (rounds 1..{len(rows) - 1}): {cpu / polls * 1e3:.3f} ms CPU per poll, "
            f"{share:.1f} % of one core, {max(r[4] for r in steady)} sockets held, rounds "
            f"{min(rounds):.2f}-{max(rounds):.2f} s, worst loop lag "
            f"{max(r[6] for r in steady) * 1e3:.1f} ms"
        )
    ps, pc = _hist(metrics.poll_seconds)
    print(f"poll duration mean {ps / pc * 1e3:.1f} ms over {pc:.0f} polls")


def main() -> None:
    """Parse flags, start the server process, run the poller, print the figures."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bmcs", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--tls", action="store_true", help="HTTPS with a private CA (verified)")
    args = p.parse_args()
    configure_logging("warning")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.bmcs + 256)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        creds = d / "bmc.toml"
        creds.write_text('[default]\nusername = "capwatch"\npassword = "s3cret-pw"\n')
        creds.chmod(0o600)
        tls_args: list[str] = []
        ca = None
        if args.tls:
            sys.path.insert(0, str(ROOT))
            from tests.integration.secure_broker import make_pki  # noqa: PLC0415

            pki = make_pki(d / "pki", client_cn="unused")
            tls_args, ca = [str(pki.server_cert), str(pki.server_key)], pki.ca_cert
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.redfish", str(MOCKUP), str(port), *tls_args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            asyncio.run(_run(args, url, creds, ca))
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
