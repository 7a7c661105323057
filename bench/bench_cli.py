"""CLI latency benchmark: whole ``collector`` processes against a day of a 1,000-node fleet.

Prints figures (not pass/fail; the targets are in the issue: ``--help`` <= 150 ms, each
query <= 250 ms, median).

The store is built once through the store's own API (:class:`collector.store.db.Store`,
``write_batch`` of :func:`collector.ingest.validate.sample_row` rows, packed as ingest packs
them, made from :class:`agent.simulate.FleetSimulator` samples, inventory and status as
``NodeUpdate``): 1,000 8-GPU nodes, 24 h at 1-minute cadence = 1.44 M samples, ending now.
A later run reuses the file and tops it up to the current minute (and deletes what fell out
of the 24 h window), so the queries always see a live fleet. Ten nodes are unhealthy: five
went silent two hours ago, five more have also reported ``offline``. Quarantined messages
are inserted directly (the collector core writes them; the store has no writer for them
yet).

Each command then runs ``--runs`` times as a fresh process (after one warm-up run that
also fills the page cache); median, min and max wall time are printed.

``--startup N`` times the daemon's start instead: ``collector run`` against an empty local
Mosquitto and a store it made on a first, uncounted run; the CPU it has used 3 s later
(``utime + stime`` of ``/proc/PID/stat``: imports, settings, the store's checks, the first
cycles) and its modules then, N runs; median, min and max. Python writes no bytecode where
``PYTHONDONTWRITEBYTECODE`` is set (as in this repository's development environment, but not
in an installed capwatch: pip compiles it): each process then compiles every module of the
repository it imports (~0.2 s of the daemon's start); the line says which it measured.

Usage: ``.venv/bin/python bench/bench_cli.py [--db PATH] [--runs 15] [--rebuild] [--json]``
or ``.venv/bin/python bench/bench_cli.py --startup 9``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.store.codec import pack_sample
from collector.store.db import NodeUpdate, SampleRow, Store
from shared.schema import encode

__all__ = ["main"]

BIN = Path(sys.executable).parent
NODES = 1_000
GPUS_PER_NODE = 8
CADENCE_S = 60
WINDOW_S = 24 * 3600
#: Node indexes that stopped reporting two hours before the store's end; the first five
#: of them also sent ``offline`` on their status topic.
SILENT = tuple(range(7, NODES, 100))
OFFLINE = SILENT[:5]
SILENT_FOR_S = 2 * 3600
_REASONS = ("invalid", "not_json", "clock_skew", "too_large", "topic_mismatch")


def _newest_ms(db: Path) -> int | None:
    if not db.is_file():
        return None
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT max(received_ms) FROM samples").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None or row[0] is None else int(row[0])


async def _write_ticks(db: Path, first_ts: int, last_ts: int) -> int:
    """Samples of every (live) node for each minute in [first_ts, last_ts]; rows written."""
    sim = FleetSimulator(NODES, gpus_per_node=GPUS_PER_NODE, seed=7, interval_s=CADENCE_S)
    silent_after = last_ts - SILENT_FOR_S
    written = 0
    async with Store(db) as store:
        now = time.time()
        updates = []
        for i, node in enumerate(sim.node_ids):
            status = "offline" if i in OFFLINE else "online"
            updates.append(
                NodeUpdate(
                    node,
                    status=status,
                    status_ts=now,
                    inventory=encode(sim.inventory(i, now)),
                    inventory_ts=now,
                )
            )
        await store.write_batch([], updates, sim.node_ids)
        for ts in range(first_ts, last_ts + 1, CADENCE_S):
            seq = ts // CADENCE_S
            rows: list[SampleRow] = []
            for i in range(NODES):
                if i in SILENT and ts > silent_after:
                    continue
                sample = sim.sample(i, float(ts), seq)
                rows.append(sample_row(sample, pack_sample(sample), ts + 0.2))
            written += await store.write_batch(rows)
        cutoff_ms = (last_ts - WINDOW_S) * 1000
        while await store.delete_older_than(cutoff_ms, 50_000):
            pass
        stored = (await store.fetchall("SELECT count(*) FROM samples"))[0][0]
        await store.write_counters(_counters(int(stored)), now)
    return written


def _counters(stored: int) -> dict[str, int]:
    rejected = {f"rejected_{r}": 40 + 17 * k for k, r in enumerate(_REASONS)}
    return {
        "received": stored + 3 + sum(rejected.values()),
        "samples": stored + 3,
        "stored": stored,
        "duplicates": 3,
        "rejected": sum(rejected.values()),
        **rejected,
    }


def _add_quarantine(db: Path, now_ms: int, count: int = 300) -> None:
    """Rejected messages, as the collector would keep them (written directly: see above)."""
    rows = []
    for k in reversed(range(count)):  # oldest first: ids grow with arrival, as the collector's
        node = f"x1000c{k % 8}s{k % 4}b0n{k % 2}"
        reason = _REASONS[k % len(_REASONS)]
        payload = b'{"v":1,"node":"' + node.encode() + b'","ts":' + str(k).encode() + b"\x00\xff"
        rows.append(
            (
                now_ms - k * 60_000,
                node,
                f"capwatch/v1/nodes/{node}/sample",
                reason,
                f"{reason}: at `$.gpus[{k % 8}].util_pct`",
                payload[:256],
                len(payload) + 3000,
            )
        )
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("DELETE FROM quarantine")
            conn.executemany(
                "INSERT INTO quarantine (received_ms, node, topic, reason, detail, payload_head,"
                " payload_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    finally:
        conn.close()


def build(db: Path, *, rebuild: bool) -> str:
    """Create or top up the store so it holds the last 24 h up to this minute."""
    end_ts = int(time.time()) // CADENCE_S * CADENCE_S
    newest = None if rebuild else _newest_ms(db)
    if newest is not None and newest // 1000 >= end_ts - WINDOW_S:
        first_ts = (newest // 1000) // CADENCE_S * CADENCE_S + CADENCE_S
        what = "topped up"
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        first_ts = end_ts - WINDOW_S + CADENCE_S
        what = "built"
    t0 = time.perf_counter()
    written = 0
    if first_ts <= end_ts:
        written = asyncio.run(_write_ticks(db, first_ts, end_ts))
    _add_quarantine(db, end_ts * 1000)
    seconds = time.perf_counter() - t0
    conn = sqlite3.connect(db)
    try:
        total = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        conn.close()
    size_mb = db.stat().st_size / 2**20
    return (
        f"store {db}: {what} in {seconds:.1f} s ({written:,} samples written); "
        f"{total:,} samples, {size_mb:,.0f} MiB"
    )


def _time_runs(argv: list[str], runs: int, env: dict[str, str]) -> dict[str, float | int]:
    def once() -> tuple[float, int, str]:
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
        )
        ms = (time.perf_counter() - t0) * 1000
        return ms, proc.returncode, proc.stderr.decode(errors="replace")

    _, rc, err = once()  # warm-up: page cache, .pyc files
    if rc != 0:
        last = err.strip().splitlines()[-1:] or [""]
        print(f"  ! {' '.join(argv[1:])}: exit {rc}: {last[0]}", file=sys.stderr)
    times = []
    for _ in range(runs):
        ms, rc, _ = once()
        times.append(ms)
    return {
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "exit": rc,
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bytecode() -> str:
    """How many of the repository's modules have current bytecode (a ``.pyc`` no older than
    the source: what an import reads instead of compiling)."""
    import importlib.util  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    sources = [p for top in ("agent", "collector", "shared") for p in (root / top).rglob("*.py")]
    fresh = 0
    for src in sources:
        pyc = Path(importlib.util.cache_from_source(str(src)))
        fresh += pyc.is_file() and pyc.stat().st_mtime >= src.stat().st_mtime
    return f"bytecode for {fresh} of {len(sources)} modules"


def startup(runs: int, settle_s: float = 3.0) -> str:
    """``collector run``'s CPU ``settle_s`` after its start, ``runs`` times: one line."""
    import tempfile  # noqa: PLC0415

    from collector.localbroker import MosquittoBroker  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CAPWATCH_")}
    code = (
        "import runpy, sys, threading, os\n"
        "def modules():\n"
        "    sys.stderr.write(f'\\nmodules {len(sys.modules)}\\n')\n"
        f"threading.Timer({settle_s - 0.2}, modules).start()\n"
        "sys.argv = ['collector', *sys.argv[1:]]\n"
        "runpy.run_module('collector', run_name='__main__')\n"
    )
    cpu: list[float] = []
    modules = 0
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "broker") as broker:
        argv = [sys.executable, "-c", code, "run", "--host", broker.host]
        argv += ["--port", str(broker.port), "--db", str(Path(tmp) / "start.db")]
        for i in range(runs + 1):  # the first makes the store
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
            )
            time.sleep(settle_s)
            used = _cpu_s(proc.pid)
            proc.terminate()
            _, err = proc.communicate(timeout=30)
            if i:
                cpu.append(used)
                modules = int(err.decode().rsplit("modules ", 1)[1].split()[0])
    return (
        f"collector run, CPU {settle_s:g} s after its start ({runs} runs, {_bytecode()}): "
        f"median {statistics.median(cpu):.3f} s, min {min(cpu):.3f}, max {max(cpu):.3f}; "
        f"{modules} modules"
    )


def commands(db: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """(label, argv, extra environment) of each timed command."""
    collector = str(BIN / "collector")
    q = [collector, "query", "--db", str(db)]
    node = FleetSimulator(NODES).node_ids[0]
    return [
        ("python -c pass", [sys.executable, "-c", "pass"], {}),
        ("collector --help", [collector, "--help"], {}),
        ("collector query --help", [collector, "query", "--help"], {}),
        ("collector query", q, {}),
        ("collector query --json", [*q, "--json"], {}),
        (f"collector query --node {node} --since 15m", [*q, "--node", node, "--since", "15m"], {}),
        ("collector query --gpus", [*q, "--gpus"], {}),
        ("collector query --rejected", [*q, "--rejected"], {}),
        (
            "collector query (db from CAPWATCH_DB_PATH)",
            [collector, "query"],
            {"CAPWATCH_DB_PATH": str(db)},
        ),
    ]


def main() -> None:
    """Build or reuse the store, then time each command; print a table (or JSON)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--db",
        type=Path,
        default=Path("/tmp/capwatch-bench-cli.db"),
        help="store to build once and reuse (default /tmp/capwatch-bench-cli.db)",
    )
    p.add_argument("--runs", type=int, default=15, help="timed runs per command (default 15)")
    p.add_argument("--rebuild", action="store_true", help="build the store from scratch")
    p.add_argument("--json", action="store_true", help="figures as JSON")
    p.add_argument(
        "--startup",
        type=int,
        metavar="N",
        help="time N starts of `collector run` instead (CPU after 3 s; see above)",
    )
    args = p.parse_args()
    if args.startup:
        print(startup(args.startup))
        return
    print(build(args.db, rebuild=args.rebuild), file=sys.stderr)
    # A long build ends minutes ago: top up again so no node looks stale while timing.
    print(build(args.db, rebuild=False), file=sys.stderr)
    base_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CAPWATCH_")}
    results = {
        label: _time_runs(argv, args.runs, {**base_env, **extra})
        for label, argv, extra in commands(args.db)
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'command':<56} {'median':>8} {'min':>8} {'max':>8}  (ms, {args.runs} runs)")
    for label, r in results.items():
        failed = f"  exit {r['exit']}" if r["exit"] else ""
        print(f"{label:<56} {r['median_ms']:8.1f} {r['min_ms']:8.1f} {r['max_ms']:8.1f}{failed}")


if __name__ == "__main__":
    main()
