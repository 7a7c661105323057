"""Pipeline benchmark: simulator -> real Mosquitto -> collector -> SQLite. Prints figures.

Two measurements (not pass/fail; targets are in the issue):

``drain``
    The collector registers its persistent session and stops; the simulator publishes
    ``nodes x ticks`` 8-GPU samples, which the broker queues; the collector starts again and
    we time until every sample is stored. This is the collector's sustained ingest rate with
    the whole machine to itself (the simulator is not competing for the 2 cores).
``live``
    Collector running while the simulator publishes ``nodes`` samples every second for
    ``seconds``: does everything offered get stored, and how far does the store lag?
    Simulator, broker and collector share the machine here.

Lost = published - stored (the store drops duplicates, so stored can never exceed published).

Usage: ``.venv/bin/python bench/bench_pipeline.py [--nodes 12500] [--ticks 8] [--mode both]
[--epoch N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.simulate import FleetSimulator, publish_fleet
from collector.localbroker import MosquittoBroker
from shared.settings import MqttSettings

BIN = Path(sys.executable).parent


def _scalar(db: Path, sql: str) -> int:
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            row = conn.execute(sql).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _stored(db: Path) -> int:
    return _scalar(db, "SELECT count(*) FROM samples")


def _max_rowid(db: Path) -> int:
    # O(log n): rows are only inserted during a run, so max(rowid) tracks the count.
    return _scalar(db, "SELECT max(rowid) FROM samples")


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CollectorProcess:
    """``collector run`` as a child process against ``broker``, logging to ``log``."""

    def __init__(
        self,
        broker: MosquittoBroker,
        db: Path | str,
        log: Path,
        synchronous: str = "full",
        *,
        log_level: str = "warning",
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = [
            str(BIN / "collector"),
            "run",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--db",
            str(db),
            "--log-level",
            log_level,
        ]
        self.log = log
        self.env = {**os.environ, "CAPWATCH_SQLITE_SYNCHRONOUS": synchronous, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env
            )
        return self.proc

    def stop(self) -> tuple[float, float]:
        """SIGTERM and wait; return (cpu s, peak RSS MB) of the process."""
        cpu, rss, _ = self.stop_counting()
        return cpu, rss

    def stop_counting(self) -> tuple[float, float, float]:
        """SIGTERM and wait; return (cpu s before the signal, peak RSS MB, cpu s up to its
        exit: what its stop did too, e.g. folding the rollups staged since the last fold)."""
        assert self.proc is not None
        cpu, rss = _cpu_s(self.proc.pid), _rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(self.proc.pid, 0)  # the child's own rusage, as it exits
        self.proc.wait(timeout=60)
        return cpu, rss, usage.ru_utime + usage.ru_stime


def _wait_stored(
    db: Path, target: int, timeout_s: float, marks: dict[str, float] | None = None
) -> tuple[int, float]:
    """Poll until ``target`` rows; ``marks`` gets the times of the first and last row seen."""
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < timeout_s:
        n = _max_rowid(db)
        if marks is not None and n and "first" not in marks:
            marks["first"], marks["first_rows"] = time.monotonic(), n
        if n >= target:
            break
        time.sleep(0.02)
    if marks is not None:
        marks["last"] = time.monotonic()
    return n, time.monotonic() - t0


def wait_subscribed(db: Path, timeout_s: float = 60.0) -> None:
    """Until the collector has stored the fact that it holds a broker session."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                if conn.execute("SELECT 1 FROM meta WHERE key LIKE 'mqtt_session %'").fetchone():
                    return
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.05)
    raise TimeoutError(f"the collector did not subscribe within {timeout_s} s")


def bench_drain(
    work: Path, nodes: int, ticks: int, synchronous: str, epoch: int | None = None
) -> dict[str, float]:
    """Queue a burst at the broker, then time the collector storing all of it (samples of
    agent ``epoch``: with one, the store's watermarks follow them, as for today's agents)."""
    db = work / "drain.db"
    inflight = int(os.environ.get("BENCH_INFLIGHT", "1000"))
    with MosquittoBroker(work / "broker-drain", max_inflight=inflight) as broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        col = CollectorProcess(broker, db, work / "collector-drain.log", synchronous)
        col.start()
        wait_subscribed(db)  # the broker now keeps a session for it
        col.stop()
        sim = FleetSimulator(nodes, gpus_per_node=8, seed=7, interval_s=1.0, epoch=epoch)
        t0 = time.monotonic()
        stats = asyncio.run(
            publish_fleet(mqtt, sim, ticks=ticks, burst=True, start_ts=time.time() - ticks - 60)
        )
        publish_s = time.monotonic() - t0
        broker_cpu0 = _cpu_s(broker.pid)
        proc = col.start()
        marks: dict[str, float] = {}
        stored, took = _wait_stored(
            db, stats.published, float(os.environ.get("BENCH_TIMEOUT", "600")), marks
        )
        broker_cpu = _cpu_s(broker.pid) - broker_cpu0
        cpu, rss, cpu_to_exit = col.stop_counting()
        stored = _stored(db)
        del proc
    return {
        "published": stats.published,
        "publish_rate_per_s": round(stats.published / publish_s),
        "stored": stored,
        "lost": stats.published - stored,
        "drain_s_incl_startup": round(took, 2),
        "stored_per_s_incl_startup": round(stored / took),
        # from the first committed batch to the last: the collector's sustained rate
        "sustained_stored_per_s": round(
            (stored - marks.get("first_rows", 0)) / max(marks["last"] - marks.get("first", 0), 1e-9)
        ),
        "collector_cpu_s": round(cpu, 2),
        "collector_cpu_us_per_sample": round(cpu / max(stored, 1) * 1e6, 1),
        # ... up to its exit (start and stop included: a fold at stop counts)
        "collector_cpu_us_per_sample_to_exit": round(cpu_to_exit / max(stored, 1) * 1e6, 1),
        "collector_peak_rss_mb": round(rss, 1),
        "broker_cpu_s_during_drain": round(broker_cpu, 2),
        # the whole file: at 8 ticks the nodes' inventories (~2.3 KB each, once per node)
        # are ~40 % of it; samples_bytes_per_sample is what each sample adds
        "db_bytes_per_sample": round(db.stat().st_size / max(stored, 1)),
        **_sample_bytes(db, stored),
    }


def _sample_bytes(db: Path, stored: int) -> dict[str, float]:
    """Bytes per sample of the samples table and of each of its indexes (pages, slack
    included: SQLite's dbstat), and of the stored payloads alone."""
    conn = sqlite3.connect(db)
    try:
        indexes = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'samples'"
            )
        ]
        try:
            pages = dict(
                conn.execute(
                    "SELECT name, sum(pgsize) FROM dbstat WHERE name IN "
                    f"({', '.join('?' * (len(indexes) + 1))}) GROUP BY name",
                    ("samples", *indexes),
                ).fetchall()
            )
        except sqlite3.OperationalError:  # a SQLite built without dbstat
            return {}
        payload = conn.execute("SELECT avg(length(payload)) FROM samples").fetchone()[0]
    finally:
        conn.close()
    n = max(stored, 1)
    out: dict[str, float] = {"samples_bytes_per_sample": round(sum(pages.values()) / n)}
    for name, size in pages.items():
        part = "table" if name == "samples" else f"index_{name}"
        out[f"samples_{part}_bytes_per_sample"] = round(size / n, 1)
    out["payload_bytes_per_sample"] = round(payload or 0, 1)
    return out


def bench_live(work: Path, nodes: int, seconds: int, synchronous: str) -> dict[str, float]:
    """Collector running while the simulator offers ``nodes`` samples per second."""
    db = work / "live.db"
    with MosquittoBroker(work / "broker-live") as broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        col = CollectorProcess(broker, db, work / "collector-live.log", synchronous)
        col.start()
        wait_subscribed(db)
        sim = FleetSimulator(nodes, gpus_per_node=8, seed=8, interval_s=1.0)
        t0 = time.monotonic()
        stats = asyncio.run(publish_fleet(mqtt, sim, ticks=seconds, burst=False))
        offered_s = time.monotonic() - t0
        stored_at_end = _max_rowid(db)
        stored, lag = _wait_stored(db, stats.published, timeout_s=300)
        cpu, rss = col.stop()
        stored = _stored(db)
    return {
        "offered_per_s": nodes,
        "published": stats.published,
        "publish_s": round(offered_s, 2),
        "achieved_publish_per_s": round(stats.published / offered_s),
        "late_ticks": stats.late_ticks,
        "stored_when_publishing_ended": stored_at_end,
        "catch_up_s": round(lag, 2),
        "stored": stored,
        "lost": stats.published - stored,
        "stored_per_s_overall": round(stored / (offered_s + lag)),
        "collector_cpu_us_per_sample": round(cpu / max(stored, 1) * 1e6, 1),
        "collector_peak_rss_mb": round(rss, 1),
    }


def main() -> None:
    """Parse flags, run the chosen measurements, print figures (JSON with --json)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--nodes", type=int, default=12_500, help="8-GPU nodes (default 12500 = 100k GPUs)"
    )
    p.add_argument("--ticks", type=int, default=8, help="drain: ticks queued (default 8)")
    p.add_argument(
        "--seconds", type=int, default=10, help="live: seconds of offered load (default 10)"
    )
    p.add_argument("--mode", choices=["drain", "live", "both"], default="both")
    p.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="drain: the agents' epoch in the samples (default none: agents before epochs, "
        "no watermarks)",
    )
    p.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="the collector's SQLite synchronous mode (default full: acks survive power loss)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="capwatch-bench-") as tmp:
        work = Path(tmp)
        if args.mode in ("drain", "both"):
            results["drain"] = bench_drain(
                work, args.nodes, args.ticks, args.synchronous, args.epoch
            )
        if args.mode in ("live", "both"):
            results["live"] = bench_live(work, args.nodes, args.seconds, args.synchronous)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for mode, figures in results.items():
        print(f"[{mode}] nodes={args.nodes} (8 GPUs each), synchronous={args.synchronous}")
        for k, v in figures.items():
            print(f"  {k:32s} {v}")


if __name__ == "__main__":
    main()
