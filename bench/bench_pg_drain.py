"""Drain benchmark into PostgreSQL: simulator -> real Mosquitto -> one collector -> PostgreSQL.

The same drain as ``bench_pipeline.py --mode drain`` (its collector process and publisher,
reused), through one collector and then two in one share group (``mqtt.share_group``: each
stores its share; collector CPU is both processes'): the collectors register their
persistent sessions and stop; the simulator queues ``nodes x ticks`` 8-GPU samples at the
broker; the collectors start again and we time until every sample is stored. Then the same
on SQLite, on the same machine, for comparison.

Figures (not pass/fail; the target, >= 10,000 samples/s per collector, is in the issue):
stored/s including the collector's start, lost (published - stored), duplicates (stored rows
minus distinct (node, seq)), collector CPU us per sample (its /proc accounting), PostgreSQL
CPU us per sample (the postmaster and every backend, waited-for children included, minus
this script's polling backend), the broker's CPU us per sample (Mosquitto's /proc
accounting from before the publish to the end of the drain: each sample in and out once),
and bytes per sample on disk (the samples partitions with
their indexes and TOAST).

Usage: ``.venv/bin/python bench/bench_pg_drain.py [--nodes 12500] [--ticks 8]
[--collectors 1,2] [--no-sqlite] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator, publish_fleet
from bench.bench_pipeline import CollectorProcess, bench_drain
from collector.localbroker import MosquittoBroker
from collector.localpg import LocalPostgres
from shared.settings import MqttSettings

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _pg_cpu_s(postmaster: int, exclude: int) -> float:
    """CPU seconds of the postmaster, its waited-for children and its live children."""
    fields = _stat(postmaster)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (postmaster, exclude):
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, IndexError):
            continue
        if int(fields[1]) == postmaster:  # ppid
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _cpu_s(pid: int) -> float:
    """CPU seconds of one process (user + system)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def _scalar(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> int:
    try:
        row = conn.execute(sql).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0] or 0) if row else 0  # type: ignore[call-overload]


def _registered(log: Path) -> bool:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "mqtt_subscribed" in text or "mqtt_session_resumed" in text


def bench_pg_drain(work: Path, nodes: int, ticks: int, collectors: int = 1) -> dict[str, float]:
    """Queue a burst at the broker, then time ``collectors`` collectors (one share group
    when more than one) storing it into one PostgreSQL store."""
    inflight = int(os.environ.get("BENCH_INFLIGHT", "1000"))
    tag = f"pg{collectors}"
    with (
        LocalPostgres(work / tag) as pg,
        MosquittoBroker(work / f"broker-{tag}", max_inflight=inflight) as broker,
        psycopg.connect(pg.url, autocommit=True) as poll,
    ):
        poller = _scalar(poll, "SELECT pg_backend_pid()")
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        names = [chr(ord("a") + i) for i in range(collectors)]
        envs = {
            n: {}
            if collectors == 1
            else {"CAPWATCH_MQTT__SHARE_GROUP": "site", "CAPWATCH_CLIENT_ID": f"collector-{n}"}
            for n in names
        }
        # First run registers each persistent session (info logs say when), then stops.
        first = {
            n: CollectorProcess(
                broker, pg.url, work / f"reg-{tag}-{n}.log", log_level="info", env=envs[n]
            )
            for n in names
        }
        for c in first.values():
            c.start()
        deadline = time.monotonic() + 60
        while not all(_registered(c.log) for c in first.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("the collectors did not subscribe")
            time.sleep(0.05)
        for c in first.values():
            c.stop()
        sim = FleetSimulator(nodes, gpus_per_node=8, seed=7, interval_s=1.0)
        assert broker.pid is not None
        broker_cpu0 = _cpu_s(broker.pid)
        stats = asyncio.run(
            publish_fleet(mqtt, sim, ticks=ticks, burst=True, start_ts=time.time() - ticks - 60)
        )
        assert pg.pid is not None
        cols = [
            CollectorProcess(broker, pg.url, work / f"collector-{tag}-{n}.log", env=envs[n])
            for n in names
        ]
        pg_cpu0 = _pg_cpu_s(pg.pid, poller)
        for c in cols:
            c.start()
        t0 = time.monotonic()
        stored = 0
        timeout_s = float(os.environ.get("BENCH_TIMEOUT", "600"))
        while time.monotonic() - t0 < timeout_s:
            stored = _scalar(poll, "SELECT count(*) FROM samples")
            if stored >= stats.published:
                break
            time.sleep(0.25)
        took = time.monotonic() - t0
        pg_cpu = _pg_cpu_s(pg.pid, poller) - pg_cpu0
        broker_cpu = _cpu_s(broker.pid) - broker_cpu0
        stops = [c.stop() for c in cols]
        cpu, rss = sum(s[0] for s in stops), max(s[1] for s in stops)
        stored = _scalar(poll, "SELECT count(*) FROM samples")
        distinct = _scalar(poll, "SELECT count(DISTINCT (node, seq)) FROM samples")
        poll.execute("VACUUM ANALYZE samples")
        on_disk = _scalar(
            poll,
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'samples'::regclass",
        )
        parts = _parts(poll)
        payload = _scalar(poll, "SELECT sum(octet_length(payload)) FROM samples")
    return {
        "collectors": collectors,
        "published": stats.published,
        "stored": stored,
        "lost": stats.published - stored,
        "duplicates": stored - distinct,
        "drain_s_incl_startup": round(took, 2),
        "stored_per_s_incl_startup": round(stored / took),
        "collector_cpu_s": round(cpu, 2),
        "collector_cpu_us_per_sample": round(cpu / max(stored, 1) * 1e6, 1),
        "collector_peak_rss_mb": round(rss, 1),
        "broker_cpu_us_per_sample_in_and_out": round(broker_cpu / max(stored, 1) * 1e6, 1),
        "postgres_cpu_s": round(pg_cpu, 2),
        "postgres_cpu_us_per_sample": round(pg_cpu / max(stored, 1) * 1e6, 1),
        "db_bytes_per_sample": round(on_disk / max(stored, 1)),
        "payload_bytes_per_sample": round(payload / max(stored, 1)),
        **{f"{k}_bytes_per_sample": round(v / max(stored, 1)) for k, v in parts.items()},
    }


def _parts(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    """Bytes of the samples partitions by part: the heap (with its free space and visibility
    maps), TOAST, and each index (summed over the partitions, by the parent index's name)."""
    sizes = conn.execute(
        "SELECT sum(pg_table_size(c.oid)), "
        "sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'samples'::regclass"
    ).fetchone()
    table, toast = (int(v or 0) for v in (sizes or (0, 0)))  # type: ignore[call-overload]
    out = {"heap": table - toast, "toast": toast}
    rows = conn.execute(
        "SELECT p.relname, sum(pg_relation_size(i.inhrelid)) FROM pg_inherits i "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_index x ON x.indexrelid = p.oid "
        "WHERE x.indrelid = 'samples'::regclass GROUP BY p.relname ORDER BY p.relname"
    ).fetchall()
    for name, size in rows:
        out[f"index_{name}"] = int(size or 0)  # type: ignore[call-overload]
    return out


def main() -> None:
    """Parse flags, run both drains, print figures (JSON with --json)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=12_500, help="8-GPU nodes (default 12500)")
    p.add_argument("--ticks", type=int, default=8, help="samples per node (default 8: 100,000)")
    p.add_argument(
        "--collectors",
        default="1,2",
        help="how many collectors drain into PostgreSQL, one run each (default 1,2: one, "
        "then two in one share group)",
    )
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite comparison")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="capwatch-bench-") as tmp:
        work = Path(tmp)
        for n in (int(c) for c in args.collectors.split(",")):
            results[f"postgresql x{n}"] = bench_pg_drain(work, args.nodes, args.ticks, n)
        if not args.no_sqlite:
            results["sqlite"] = bench_drain(work, args.nodes, args.ticks, "full")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for store, figures in results.items():
        print(f"[drain into {store}] {args.nodes} nodes x {args.ticks} samples (8 GPUs each)")
        for k, v in figures.items():
            print(f"  {k:32s} {v}")


if __name__ == "__main__":
    main()
