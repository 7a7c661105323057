"""Resume benchmark: a collector's persistent session resumed with a backlog, per broker.

The scenario of a site restarting its collector, with real processes: ``collector run``
creates its session and stops (SIGTERM); ``agent simulate --nodes 50 --ticks 40 --burst``
publishes 2,000 QoS 1 samples that the broker queues; ``collector run`` starts again and is
stopped (SIGTERM) after ``--window`` seconds. Printed per run: samples stored by that
session. NATS holds back what exceeds its per-session cap of unacknowledged messages until
its AckWait (30 s) expires, so a window under 30 s shows such a loss within the session.

Usage: ``.venv/bin/python bench/bench_resume.py [--broker nats|mosquitto|both] [--runs 6]``
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collector.localbroker import BrokerProcess, MosquittoBroker
from collector.natsbroker import NatsBroker

BIN = Path(sys.executable).parent


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _collector(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "collector"), "run", "--db", str(db), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def _wait_subscribed(log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and b"mqtt_subscribed" in log.read_bytes():
            return
        time.sleep(0.1)
    raise SystemExit(f"collector did not subscribe within {timeout_s} s (log {log})")


def run(broker: BrokerProcess, runs: int, window_s: float, work: Path) -> list[int]:
    """Stored samples per resumed session, one figure per run."""
    db = work / "c.db"
    first = work / "collector-0.log"
    proc = _collector(db, broker.port, first)
    _wait_subscribed(first)
    _stop(proc)
    stored: list[int] = []
    for r in range(1, runs + 1):
        subprocess.run(
            [
                str(BIN / "agent"),
                "simulate",
                "--port",
                str(broker.port),
                "--nodes",
                "50",
                "--ticks",
                "40",
                "--burst",
                "--first-index",
                str(r * 100),
                "--log-level",
                "warning",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        before = _stored(db)
        proc = _collector(db, broker.port, work / f"collector-{r}.log")
        time.sleep(window_s)
        _stop(proc)
        stored.append(_stored(db) - before)
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("nats", "mosquitto", "both"), default="both")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per session")
    args = parser.parse_args()
    kinds = ("nats", "mosquitto") if args.broker == "both" else (args.broker,)
    results = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"capwatch-resume-{kind}-") as tmp:
            work = Path(tmp)
            broker: BrokerProcess = (
                NatsBroker(work / "broker") if kind == "nats" else MosquittoBroker(work / "broker")
            )
            with broker:
                stored = run(broker, args.runs, args.window, work)
        results[kind] = stored
        print(f"{kind}: stored per run {stored} (published 2000 each)", flush=True)
    print(json.dumps({"window_s": args.window, "stored_per_run": results}))


if __name__ == "__main__":
    main()
