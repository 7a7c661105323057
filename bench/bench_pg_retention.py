"""Retention of a PostgreSQL day partition kept for its late arrivals: seconds and calls.

A day's partition wholly past the retention cutoff is dropped whole, unless some of its
samples arrived late (a spool replayed after an outage) and are still inside the window.
This fills one such day with ``--rows`` samples (12,500 nodes every 5 s, copies of one
real 8-GPU sample, arrived on time) plus ``--late`` late arrivals, then runs the writer's
retention loop (``Store.delete_older_than(cutoff, --chunk)`` while a full chunk went, as
``collector/ingest/writer.py`` does) and prints:

* ``seconds``, ``calls`` (each call: the drop's transaction, when one is tried, then one
  chunked ``DELETE``): until the day's on-time rows are gone;
* ``calls_per_day_if_linear`` / ``s_per_day_if_linear``: the same for a whole day of
  12,500 nodes every 5 s (216 million rows), scaled linearly: right for a chunked delete
  (per row), an overestimate for a drop (per day: compare two ``--rows``);
* ``probe_insert_ms_max`` / ``_p99``: latency of a one-row insert another connection makes
  every 5 ms meanwhile (another collector's writer: what retention's lock costs it);
* ``wal_mb``: write-ahead log written meanwhile (what a standby replays, what the
  archive keeps);
* ``late_kept``: late arrivals still stored after (must equal ``--late``).

Figures, not pass/fail. Usage: ``.venv/bin/python bench/bench_pg_retention.py
[--rows 250000] [--late 1,1000,5000] [--chunk 5000] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.localpg import LocalPostgres
from collector.paths import parse_target
from collector.store.db import Store
from shared.schema import encode

_NODES = 12_500
_DAY_ROWS = _NODES * 86_400 // 5
_DAY_S = 86_400


class _Probe(threading.Thread):
    """Another writer: a one-row insert into today's partition every 5 ms, timed."""

    def __init__(self, url: str, ts_ms: int) -> None:
        super().__init__(daemon=True)
        self.url, self.ts_ms = url, ts_ms
        self.latencies_ms: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        """Set once connected and writing."""

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                t0 = time.perf_counter()
                conn.execute(
                    "INSERT INTO samples SELECT 'probe', %s, seq, %s, interval_s, cpu_pct, "
                    "mem_used_bytes, mem_total_bytes, gpu_count, gpu_util_pct, "
                    "gpu_mem_used_bytes, gpu_power_w, cpu_power_w, payload, payload_dict, "
                    "epoch, node_power_w, node_power_source FROM samples WHERE node = 'template'",
                    (self.ts_ms + n, self.ts_ms + n),
                )
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if n == 3:
                    self.ready.set()
                time.sleep(0.005)


def _fill(url: str, old_ms: int, rows: int, late: int, now_ms: int) -> None:
    """``rows`` on-time copies of the template sample in the old day, ``late`` late ones."""
    with psycopg.connect(url, autocommit=True) as conn:
        copy = (
            "INSERT INTO samples SELECT {node}, {ts}, g, {received}, interval_s, cpu_pct, "
            "mem_used_bytes, mem_total_bytes, gpu_count, gpu_util_pct, gpu_mem_used_bytes, "
            "gpu_power_w, cpu_power_w, payload, payload_dict, epoch, node_power_w, "
            "node_power_source FROM samples t, generate_series(1, %s) g "
            "WHERE t.node = 'template'"
        )
        ts = f"{old_ms} + (g / {_NODES}) * 5000"
        conn.execute(
            copy.format(node=f"'n' || (g %% {_NODES})", ts=ts, received=f"{ts} + 100"), (rows,)
        )
        if late:
            conn.execute(
                copy.format(node="'late' || g", ts=str(old_ms + 1), received=str(now_ms)), (late,)
            )
        conn.execute("ANALYZE samples")


def _wal_lsn(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def _wal_bytes_since(url: str, lsn: str) -> int:
    """WAL written since ``lsn`` (retention's and the probe's)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()
    return int(row[0]) if row else 0


async def _run(url: str, rows: int, late: int, chunk: int) -> dict[str, Any]:
    now = time.time()
    old = (int(now) // _DAY_S - 3) * _DAY_S  # a day wholly before the cutoff (one day ago)
    cutoff_ms = round((now - _DAY_S) * 1000)
    sim = FleetSimulator(1, gpus_per_node=8, seed=7, interval_s=5)
    s = sim.sample(0, old + 0.5, 0)
    template = sample_row(s, encode(s), old + 0.6)._replace(node="template")
    async with Store(parse_target(url)) as store:
        await store.write_batch([template])
        _fill(url, old * 1000 + 1000, rows, late, round(now * 1000))
        probe = _Probe(url, round(now * 1000) + 1)
        probe.start()
        await asyncio.to_thread(probe.ready.wait)
        warmup = len(probe.latencies_ms)
        wal0 = _wal_lsn(url)
        t0 = time.perf_counter()
        calls = 0
        while True:
            calls += 1
            if await store.delete_older_than(cutoff_ms, chunk) < chunk:
                break
        took = time.perf_counter() - t0
        wal = _wal_bytes_since(url, wal0)
        probe.stop.set()
        probe.join()
    with psycopg.connect(url) as conn:
        on_time = conn.execute("SELECT count(*) FROM samples WHERE node LIKE 'n%%'").fetchone()
        kept = conn.execute("SELECT count(*) FROM samples WHERE node LIKE 'late%%'").fetchone()
    lat = sorted(probe.latencies_ms[warmup:]) or [0.0]
    return {
        "rows": rows,
        "late": late,
        "chunk": chunk,
        "seconds": round(took, 3),
        "calls": calls,
        "wal_mb": round(wal / 1e6, 2),
        "on_time_left": on_time[0] if on_time else None,
        "late_kept": kept[0] if kept else None,
        "calls_per_day_if_linear": round(calls * _DAY_ROWS / rows),
        "s_per_day_if_linear": round(took * _DAY_ROWS / rows, 1),
        "probe_inserts": len(lat),
        "probe_insert_ms_p99": round(lat[int(0.99 * (len(lat) - 1))], 2),
        "probe_insert_ms_max": round(lat[-1], 2),
    }


def main() -> None:
    """Parse flags, run one fill and retention per ``--late`` count, print figures."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=250_000, help="on-time rows of the old day")
    p.add_argument("--late", default="1,1000,5000", help="late arrivals, one run each")
    p.add_argument("--chunk", type=int, default=5_000, help="retention_chunk_rows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    # the drop's own log lines (partition_dropped) off stdout; a deferred drop still shows
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = []
    with tempfile.TemporaryDirectory(prefix="capwatch-bench-") as tmp:
        for i, late in enumerate(int(n) for n in args.late.split(",")):
            with LocalPostgres(Path(tmp) / f"pg{i}") as pg:
                results.append(asyncio.run(_run(pg.url, args.rows, late, args.chunk)))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"[retention of a day: {r['rows']} on-time rows, {r['late']} late]")
        for k, v in r.items():
            print(f"  {k:28s} {v}")


if __name__ == "__main__":
    main()
