"""Failover benchmark: SIGKILL of the elected leader -> the new leader's first evaluation.

Real processes on this machine: a throw-away PostgreSQL (the shared store, and the election's
lease row in it), Mosquitto, two ``collector run --share-group site --db postgresql://...``
(one store, each its own /metrics), and ``agent simulate`` publishing ``--nodes`` nodes every
second. Once the fleet flows, the leader (the collector whose /metrics says
``capwatch_collector_leader 1``) is killed with SIGKILL. Printed per run, from the kill:

- ``lease_end_s``: when the database ends the dead leader's lease (``expires_at`` read right
  after the kill: it renews every lease/3, so 2/3 to 3/3 of the lease remain);
- ``elected_s``: when the survivor's /metrics says it leads;
- ``first_eval_s``: when its ``capwatch_collector_alert_evaluations_total`` first moves;
- ``expiry_to_eval_s``: first evaluation minus lease end (what the election itself costs).

Then the killed collector is started again (its MQTT session held its share of the samples
published meanwhile: Mosquitto does not re-route a shared subscription's messages) and the
run checks that every published sample is stored, once (``count(*)`` and distinct keys of the
shared store, against what was published).

Usage: ``.venv/bin/python bench/bench_failover.py [--runs 3] [--lease 10] [--nodes 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from collector.localbroker import MosquittoBroker, free_port
from collector.localcollector import metric, start_member, wait_for
from collector.localpg import LocalPostgres

BIN = Path(sys.executable).parent


def _stored(url: str) -> tuple[int, int]:
    """Rows in the shared store's ``samples``, and distinct (node, ts_ms) among them."""
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT (node, ts_ms)) FROM samples"
            ).fetchone()
    except psycopg.Error:
        return 0, 0
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _one_run(work: Path, url: str, args: argparse.Namespace, run: int) -> dict[str, float]:
    with MosquittoBroker(work / f"broker{run}") as broker:
        env = {**os.environ, "CAPWATCH_ELECTION__LEASE_S": str(args.lease)}
        ports = {"a": free_port("127.0.0.1"), "b": free_port("127.0.0.1")}
        dbs = dict.fromkeys(ports, url)  # one shared store: the election is in it too
        logs = {n: work / f"r{run}-{n}.log" for n in ports}
        procs = {
            n: start_member(n, dbs[n], broker.port, ports[n], env=env, log=logs[n]) for n in ports
        }
        sim = None
        try:
            wait_for(
                lambda: all(
                    metric(p, "capwatch_collector_leader") is not None for p in ports.values()
                ),
                30,
                "both collectors serving /metrics",
                0.1,
            )
            wait_for(
                lambda: any(metric(p, "capwatch_collector_leader") == 1 for p in ports.values()),
                30,
                "a leader",
                0.1,
            )
            leader = next(
                n for n, p in ports.items() if metric(p, "capwatch_collector_leader") == 1
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
            before = metric(ports[survivor], "capwatch_collector_alert_evaluations_total") or 0
            killed = time.monotonic()
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM expires_at - now()) FROM capwatch_leader"
                ).fetchone()
            lease_end = killed + float(row[0]) if row else killed
            elected = wait_for(
                lambda: metric(ports[survivor], "capwatch_collector_leader") == 1,
                args.lease * 3,
                "the survivor to lead",
            )
            first_eval = wait_for(
                lambda: (
                    (metric(ports[survivor], "capwatch_collector_alert_evaluations_total") or 0)
                    > before
                ),
                30,
                "the new leader's first evaluation",
            )
            sim.wait(timeout=ticks + 60)
            procs[leader] = start_member(
                leader, dbs[leader], broker.port, ports[leader], env=env, log=logs[leader]
            )
            expected = args.nodes * ticks
            wait_for(lambda: _stored(url)[0] >= expected, 60, "every sample stored", 0.5)
            rows, distinct = _stored(url)
            return {
                "lease_end_s": lease_end - killed,
                "elected_s": elected - killed,
                "first_eval_s": first_eval - killed,
                "expiry_to_eval_s": first_eval - lease_end,
                "published": expected,
                "stored": distinct,
                "duplicates": rows - distinct,
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
                        f"{r['duplicates']:.0f} twice",
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
