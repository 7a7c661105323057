"""Failover benchmark: SIGKILL of the elected leader -> the new leader's first evaluation.

Real processes on this machine: a throw-away PostgreSQL (the election's lease row), Mosquitto,
two ``collector run --share-group site`` (each with its own SQLite store and /metrics; the
election through ``CAPWATCH_ELECTION__URL``), and ``agent simulate`` publishing ``--nodes``
nodes every second. Once the fleet flows, the leader (the collector whose /metrics says
``capwatch_collector_leader 1``) is killed with SIGKILL. Printed per run, from the kill:

- ``lease_end_s``: when the database ends the dead leader's lease (``expires_at`` read right
  after the kill: it renews every lease/3, so 2/3 to 3/3 of the lease remain);
- ``elected_s``: when the survivor's /metrics says it leads;
- ``first_eval_s``: when its ``capwatch_collector_alert_evaluations_total`` first moves;
- ``expiry_to_eval_s``: first evaluation minus lease end (what the election itself costs).

Then the killed collector is started again (its MQTT session held its share of the samples
published meanwhile: Mosquitto does not re-route a shared subscription's messages) and the
run checks that every published sample is stored in exactly one of the two stores.

Usage: ``.venv/bin/python bench/bench_failover.py [--runs 3] [--lease 10] [--nodes 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

from collector.localbroker import MosquittoBroker, free_port
from collector.localpg import LocalPostgres

BIN = Path(sys.executable).parent


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


def _collector(
    name: str, db: Path, mqtt_port: int, metrics_port: int, *, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    argv = [
        str(BIN / "collector"),
        "run",
        "--db",
        str(db),
        "--port",
        str(mqtt_port),
        "--share-group",
        "site",
        "--client-id",
        f"collector-{name}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--log-level",
        "warning",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def _keys(db: Path) -> set[tuple[str, int]]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return {(n, t) for n, t in conn.execute("SELECT node, ts_ms FROM samples")}
    except sqlite3.OperationalError:
        return set()


def _until(pred: object, timeout_s: float, what: str, step_s: float = 0.02) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(step_s)
    raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")


def _one_run(work: Path, url: str, args: argparse.Namespace, run: int) -> dict[str, float]:
    with MosquittoBroker(work / f"broker{run}") as broker:
        env = {
            **os.environ,
            "CAPWATCH_ELECTION__URL": url,
            "CAPWATCH_ELECTION__LEASE_S": str(args.lease),
        }
        ports = {"a": free_port("127.0.0.1"), "b": free_port("127.0.0.1")}
        dbs = {n: work / f"r{run}-{n}.db" for n in ports}
        logs = {n: work / f"r{run}-{n}.log" for n in ports}
        procs = {
            n: _collector(n, dbs[n], broker.port, ports[n], env=env, log=logs[n]) for n in ports
        }
        sim = None
        try:
            _until(
                lambda: all(
                    _metric(p, "capwatch_collector_leader") is not None for p in ports.values()
                ),
                30,
                "both collectors serving /metrics",
                0.1,
            )
            _until(
                lambda: any(_metric(p, "capwatch_collector_leader") == 1 for p in ports.values()),
                30,
                "a leader",
                0.1,
            )
            leader = next(
                n for n, p in ports.items() if _metric(p, "capwatch_collector_leader") == 1
            )
            survivor = "b" if leader == "a" else "a"
            ticks = args.seconds
            sim = subprocess.Popen(
                [
                    str(BIN / "agent"),
                    "simulate",
                    "--port",
                    str(broker.port),
                    "--nodes",
                    str(args.nodes),
                    "--gpus-per-node",
                    "8",
                    "--interval",
                    "1",
                    "--ticks",
                    str(ticks),
                    "--seed",
                    str(run),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(3.0 + (run * 0.37) % 2)  # kill at varying points of the renew cycle
            before = _metric(ports[survivor], "capwatch_collector_alert_evaluations_total") or 0
            killed = time.monotonic()
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM expires_at - now()) FROM capwatch_leader"
                ).fetchone()
            lease_end = killed + float(row[0]) if row else killed
            elected = _until(
                lambda: _metric(ports[survivor], "capwatch_collector_leader") == 1,
                args.lease * 3,
                "the survivor to lead",
            )
            first_eval = _until(
                lambda: (
                    (_metric(ports[survivor], "capwatch_collector_alert_evaluations_total") or 0)
                    > before
                ),
                30,
                "the new leader's first evaluation",
            )
            sim.wait(timeout=ticks + 60)
            procs[leader] = _collector(
                leader, dbs[leader], broker.port, ports[leader], env=env, log=logs[leader]
            )
            expected = args.nodes * ticks
            _until(
                lambda: len(_keys(dbs["a"]) | _keys(dbs["b"])) >= expected,
                60,
                "every sample stored",
                0.5,
            )
            a, b = _keys(dbs["a"]), _keys(dbs["b"])
            return {
                "lease_end_s": lease_end - killed,
                "elected_s": elected - killed,
                "first_eval_s": first_eval - killed,
                "expiry_to_eval_s": first_eval - lease_end,
                "published": expected,
                "stored": len(a | b),
                "duplicates": len(a & b),
            }
        finally:
            if sim is not None and sim.poll() is None:
                sim.kill()
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lease", type=float, default=10.0, help="election.lease_s")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=25, help="simulated fleet's ticks (1 s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capwatch-failover-") as tmp:
        work = Path(tmp)
        with LocalPostgres(work / "pg") as pg:
            results = []
            for run in range(args.runs):
                url = pg.create_database(f"failover_{run}")
                r = _one_run(work, url, args, run)
                results.append(r)
                if not args.json:
                    print(
                        f"run {run}: lease end {r['lease_end_s']:.2f} s, elected "
                        f"{r['elected_s']:.2f} s, first evaluation {r['first_eval_s']:.2f} s "
                        f"after the SIGKILL ({r['expiry_to_eval_s']:.2f} s after the lease "
                        f"ended); samples {r['stored']:.0f}/{r['published']:.0f} stored, "
                        f"{r['duplicates']:.0f} in both stores",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    firsts = [r["first_eval_s"] for r in results]
    after = [r["expiry_to_eval_s"] for r in results]
    print(
        f"lease {args.lease:g} s, {args.runs} runs: SIGKILL -> first evaluation median "
        f"{statistics.median(firsts):.2f} s (max {max(firsts):.2f}); lease end -> first "
        f"evaluation median {statistics.median(after):.2f} s (max {max(after):.2f})"
    )


if __name__ == "__main__":
    main()
