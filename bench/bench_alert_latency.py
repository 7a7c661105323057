"""Alert latency benchmark: a breaching sample at the broker -> the webhook at the receiver.

Real Mosquitto, ``collector run`` as a subprocess (GpuTemperature with ``for`` = 0 and
``keep_firing_for`` = 0, one ``[[receivers]]`` webhook), a loopback HTTP receiver in this
process recording when each notification arrives, and ``agent simulate`` in its own process
offering background load (default 2,500 nodes x 8 GPUs every second: 2,500 samples/s).
Once the collector is ingesting, ``--probes`` hot samples are published at random gaps, each
for a node outside the simulated fleet, so each one starts a new alert. Latency per probe =
the request's arrival at the receiver - the moment the probe was handed to the broker
(``publish`` returns after the broker's PUBACK, a fraction of a millisecond on loopback; we
take the time before the call, so the figure errs high).

The rules run every ``eval_interval_s``, so a probe waits for the next evaluation, then for
its group's ``group_wait``: one ``[[routes]]`` entry with ``group_by = ["..."]`` (each alert its
own group) and the given ``group_wait``. Runs once per (``--eval-interval``, ``--group-wait``)
pair; by default twice: at the shipped defaults (the settings' ``alerts.eval_interval_s`` and a
route's ``group_wait``) and with the same interval and ``group_wait = "0s"``.
``--extra-toml`` appends anything else to the file.

Prints p50/p99/max per run (with 30 probes p99 is the second-highest value) and the ingest
rate the collector sustained meanwhile. Not pass/fail: the target is p99 < group_wait + 1.5 s.

Usage: ``.venv/bin/python bench/bench_alert_latency.py [--nodes 2500] [--probes 30]
[--eval-interval 1 --group-wait 5s --eval-interval 1 --group-wait 0s] [--extra-toml '...']``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from shared.schema import encode
from shared.topics import sample_topic

BIN = Path(sys.executable).parent
_HOT_C = 97.0


class _Arrivals:
    """When the first firing GpuTemperature notification for each node reached us."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.requests = 0
        self._lock = threading.Lock()

    def record(self, body: bytes, now: float) -> None:
        msg = json.loads(body)
        with self._lock:
            self.requests += 1
            for alert in msg["alerts"]:
                labels = alert["labels"]
                if alert["status"] == "firing" and labels.get("alertname") == "GpuTemperature":
                    self.at.setdefault(labels["node"], now)

    def get(self, node: str) -> float | None:
        with self._lock:
            return self.at.get(node)


@contextmanager
def _receiver(arrivals: _Arrivals) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            now = time.time()  # before reading the body: the request has arrived
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            arrivals.record(body, now)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="receiver")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _config(eval_interval_s: float, group_wait: str, url: str, extra: str) -> str:
    return (
        f"[alerts]\neval_interval_s = {eval_interval_s}\ngpu_temp_for_s = 0\n"
        f"gpu_temp_keep_firing_for_s = 0\n\n"
        f'[[receivers]]\nname = "bench"\nurl = "{url}"\ntimeout_s = 5\n\n'
        # Every alert its own group, so each probe's latency is its own.
        f'[[routes]]\ngroup_by = ["..."]\ngroup_wait = "{group_wait}"\n\n{extra}\n'
    )


def _stored(db: Path) -> int:
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            row = conn.execute("SELECT max(rowid) FROM samples").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _probe(broker: MosquittoBroker, args: argparse.Namespace) -> dict[str, float]:
    """Publish the hot samples; return when each was handed to the broker, per node."""
    # Nodes numbered far past the simulated fleet: each probe is a new alert.
    sim = FleetSimulator(args.probes, gpus_per_node=8, seed=5, first_index=args.nodes + 10_000)
    rng = random.Random(7)
    sent: dict[str, float] = {}
    async with aiomqtt.Client(broker.host, broker.port, identifier="latency-probe") as client:
        for i, node in enumerate(sim.node_ids):
            await asyncio.sleep(rng.uniform(0.6, 1.6))  # gaps at random eval phases
            sample = sim.sample(i, time.time(), 1)
            gpus = [msgspec.structs.replace(g, temp_c=_HOT_C) if g.index == 0 else g
                    for g in sample.gpus]  # fmt: skip
            payload = encode(msgspec.structs.replace(sample, gpus=gpus))
            sent[node] = time.time()
            await client.publish(sample_topic(node), payload, qos=1)
    return sent


def _latencies(sent: dict[str, float], arrivals: _Arrivals, timeout_s: float) -> list[float]:
    """Wait (polling: the receiver is a thread) for every probe's notification."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(arrivals.get(n) is None for n in sent):
        time.sleep(0.1)
    return [at - sent[n] for n in sent if (at := arrivals.get(n)) is not None]


def _run_once(
    args: argparse.Namespace, eval_interval_s: float, group_wait: str, work: Path
) -> None:
    work.mkdir()
    arrivals = _Arrivals()
    with MosquittoBroker(work / "broker") as broker, _receiver(arrivals) as url:
        config = work / "collector.toml"
        config.write_text(_config(eval_interval_s, group_wait, url, args.extra_toml))
        db, log = work / "capwatch.db", work / "collector.log"
        common = ["--host", broker.host, "--port", str(broker.port), "--log-level", "warning"]
        with log.open("ab") as out:
            collector = subprocess.Popen(
                [str(BIN / "collector"), "run", "--config", str(config), "--db", str(db),
                 *common],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            simulator = subprocess.Popen(
                [str(BIN / "agent"), "simulate", "--nodes", str(args.nodes), "--interval", "1",
                 "--gpus-per-node", "8", "--seed", "3", *common],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while _stored(db) == 0:
                if time.monotonic() > deadline or collector.poll() is not None:
                    raise SystemExit(f"the collector is not ingesting; see {log}")
                time.sleep(0.2)
            time.sleep(args.warmup)  # let the load settle to its steady rate
            n0, t0 = _stored(db), time.monotonic()
            sent = asyncio.run(_probe(broker, args))
            latencies = _latencies(sent, arrivals, max(30.0, 4 * eval_interval_s + 60))
            missing = len(sent) - len(latencies)
            rate = (_stored(db) - n0) / (time.monotonic() - t0)
            lag_s = time.time() - _newest_sample_ts(db)
        finally:
            _stop(simulator)
            _stop(collector)
    run = f"eval_interval_s {eval_interval_s:g}, group_wait {group_wait}"
    if not latencies:
        print(f"{run}: no notification arrived ({log})")
        return
    print(
        f"{run}: {len(latencies)} alerts, latency "
        f"p50 {statistics.median(latencies):.2f} s, p99 {_pct(latencies, 0.99):.2f} s, "
        f"max {max(latencies):.2f} s, min {min(latencies):.2f} s"
        + (f", {missing} never arrived" if missing else "")
        + f"; ingest {rate:,.0f} samples/s, newest stored sample {lag_s:.1f} s old at the end"
        + f" ({arrivals.requests} webhook requests)"
    )


def _newest_sample_ts(db: Path) -> float:
    conn = sqlite3.connect(db, timeout=5)
    try:
        row = conn.execute("SELECT ts_ms FROM samples ORDER BY rowid DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return float(row[0]) / 1e3 if row else 0.0


def main() -> None:
    """Run the benchmark once per (interval, group_wait) pair and print the figures."""
    from collector.settings import AlertSettings, RouteSettings  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2_500, help="simulated 8-GPU nodes (1/s)")
    parser.add_argument("--probes", type=int, default=30, help="breaching samples per run")
    parser.add_argument("--eval-interval", type=float, action="append", default=None)
    parser.add_argument("--group-wait", action="append", default=None, help='e.g. "5s", "0s"')
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load first")
    parser.add_argument("--extra-toml", default="", help="TOML appended to the config")
    args = parser.parse_args()
    default_eval = AlertSettings.model_fields["eval_interval_s"].default
    default_wait = RouteSettings.model_fields["group_wait"].default
    intervals = args.eval_interval or [default_eval, default_eval]
    waits = args.group_wait or [default_wait, "0s"]
    if len(waits) != len(intervals):
        parser.error("give as many --group-wait as --eval-interval (one run per pair)")
    print(
        f"{args.nodes} simulated nodes x 8 GPUs at 1 sample/s each, {args.probes} probes, "
        f"{os.cpu_count()} CPUs shared by broker, simulator, collector and receiver; shipped "
        f"defaults: eval_interval_s {default_eval:g}, group_wait {default_wait}"
    )
    with tempfile.TemporaryDirectory(prefix="capwatch-latency-") as tmp:
        for k, (interval, wait) in enumerate(zip(intervals, waits, strict=True)):
            _run_once(args, interval, wait, Path(tmp) / f"run{k}")


if __name__ == "__main__":
    main()
