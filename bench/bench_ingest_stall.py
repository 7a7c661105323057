"""Ingest stall: the gaps between two commits while every periodic evaluation is on.

The collector (``collector run``, a child process) ingests ``--rate`` samples/s (default
10,000: 12,500 8-GPU nodes every 1.25 s) from the simulator through a real Mosquitto, with
the alert rules, governance (50 tenants in 5 cohorts, each leasing 250 nodes, quotas on
GPUs, power and GPU-hours: the store of ``bench_quota.py``) and capacity (the site plan of
``bench_capacity.py``) all on. Its writer logs ``batch_stored`` after each commit (debug
level); the bench reads those times back and prints, while the load was offered:

- **stalls**: per commit, the time before it in which a sample had been taken (by its
  node's clock, which here is this machine's) and nothing was committed: the gap since the
  commit before, counted from when the batch's oldest sample was taken (the writer logs
  its ``age_ms``). Longest, p99, p50. (Target in issue 14: longest < 25 ms.)
- the gaps between consecutive commits, whether a sample waited or not (between two ticks
  of a fleet that publishes all at once, nothing does);
- how old a batch's oldest sample was when it was committed (taken to stored).

The simulated agents publish at their own phases of the interval by default, node ``i`` at
``i / nodes`` of it, as a real fleet's agents do (:func:`agent.simulate.publish_fleet`,
``spread``); ``--all-at-once`` sends every node at the start of each interval, the bench's
load before: then the collector is behind for part of every interval and drains the rest
at its full batch size, and the gaps between ticks are idle time, not stalls. For the five
longest stalls it prints
what the writer did besides sample batches (a rollup fold, an evaluation's record: their
``ms``) and which evaluator cycles ended then, from the same log; then, per record kind
(``record_stored``: alerts, governance, capacity, ledger), the ms of each part written
(records in parts log a line per part) and how many records.
And per evaluator cycle (``cycle_done``): its runs' ms and the longest time between the
ends of two runs in a row: for the alert rules, what an alert may wait for its evaluation.

The simulated agents send an epoch (``Sample.epoch``, ``seq`` from 0 in it), as real ones
do: the collector's watermarks (one message per changed node every second, and their
table) are part of the load, and the bench prints how many nodes have one stored.

Simulator, broker and collector share the machine. Once the collector has started, this
process (the simulator) lowers its own priority (``nice``), so that it takes only the CPU the
collector leaves: on a small machine the figures are then the collector's own stalls rather
than the load generator's turn on a core. ``--no-nice`` keeps it equal.

``--replay`` offers the load with :mod:`bench.replay` instead of the simulator: each node's
sample made once and sent again with the time and ``seq`` of its send, ~15 us of this
process's CPU a message instead of ~100 (``bench/replay.py --measure``), so that a 2-core
machine can offer 10,000 samples/s beside the broker and the collector (the simulator
reaches ~3,600/s there). Every value but ``ts`` and ``seq`` then stays the same from tick to
tick: enough for storage and evaluation costs, not for what rules would find.

Usage: ``.venv/bin/python bench/bench_ingest_stall.py [--seconds 40] [--rate 10000] [--replay]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator, publish_fleet
from bench.bench_capacity import PLAN
from bench.bench_pipeline import CollectorProcess, _cpu_s, wait_subscribed
from bench.bench_quota import NODES, build_store
from bench.replay import replay_fleet
from collector.localbroker import MosquittoBroker
from shared.settings import MqttSettings

__all__ = ["main"]

_WARMUP_S = 3.0
"""Gaps in the first seconds of load are left out (retained inventories, first batches)."""


def _commits(log: Path) -> list[tuple[float, float, float | None]]:
    """(Unix time, ms the batch took to store and ack, ms since its oldest sample was taken
    or ``None`` for a batch without samples) of each ``batch_stored`` line."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"batch_stored"' not in line:
            continue
        try:
            event = json.loads(line)
            ts, ms, age = event["timestamp"], float(event["ms"]), event.get("age_ms")
        except (ValueError, KeyError):
            continue
        at = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        out.append((at, ms, None if age is None else float(age)))
    return out


def _waits(commits: list[tuple[float, float, float | None]]) -> list[float]:
    """Per commit, in ms, the time before it in which a sample had been taken and nothing was
    committed: the gap since the commit before, but counted only from when the batch's oldest
    sample was taken (by the node's clock: the simulator's, on this machine). A gap in which
    no sample waited (the fleet between two ticks) is not a stall; one that a busy event loop
    caused still counts, as its samples waited in the broker or the socket. A batch without
    samples (statuses, inventories: nothing says when they were sent) counts none."""
    return [
        0.0 if b[2] is None else max(0.0, min(gap, b[2]))
        for a, b in itertools.pairwise(commits)
        for gap in ((b[0] - a[0]) * 1000,)
    ]


_WORK: Final = ("rollups_folded", "record_stored", "upkeep_done")
"""The writer's own work besides sample batches (debug lines with ``ms``)."""
_CYCLES: Final = (
    "capacity_snapshot",
    "ledger_computed",
    "governance_loaded",
    "alert_changes_not_logged",
    "cycle_done",
)
"""What the evaluator logs as it finishes a cycle (the mass event's line among them)."""


def _what_happened(log: Path, gaps: list[tuple[float, float]]) -> list[str]:
    """For each gap ``(start, end)`` (Unix times), the writer's other work that ended in it
    (with its ms) and the evaluator's cycles that ended in it or just before."""
    lines: list[tuple[float, str]] = []
    for ts, event in _logged(log, (*_WORK, *_CYCLES)):
        what = event["event"]
        if "job" in event:
            what += f" {event['job']}"
        if "ms" in event:
            what += f" {float(event['ms']):.0f} ms"
        elif "alerts" in event:
            what += f" ({event['alerts']} alerts)"
        lines.append((ts, what))
    return [
        ", ".join(w for ts, w in lines if start - 0.05 <= ts <= end) or "nothing logged"
        for start, end in gaps
    ]


def _logged(
    log: Path, events: tuple[str, ...], start: float = -math.inf, end: float = math.inf
) -> Iterator[tuple[float, Any]]:
    """The collector's JSON log lines naming one of ``events`` stamped in [start, end] (Unix
    times), as (their time, the line decoded); a line that is not one is passed over."""
    for line in log.read_text(errors="replace").splitlines():
        if not any(f'"{event}"' in line for event in events):
            continue
        try:
            decoded = json.loads(line)
            ts = dt.datetime.fromisoformat(decoded["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            continue
        if start <= ts <= end:
            yield ts, decoded


def _records(log: Path, start: float, end: float) -> dict[str, tuple[list[float], int]]:
    """Per record kind, in [start, end] (Unix times): the ms of each part written (sorted)
    and how many records ended (their last part)."""
    out: dict[str, tuple[list[float], int]] = {}
    for _, event in _logged(log, ("record_stored",), start, end):
        try:
            job, ms, more = event["job"], float(event["ms"]), bool(event.get("more"))
        except (ValueError, KeyError):
            continue
        parts, records = out.get(job, ([], 0))
        parts.append(ms)
        out[job] = (parts, records + (not more))
    for parts, _ in out.values():
        parts.sort()
    return out


def _cycles(log: Path, start: float, end: float) -> dict[str, tuple[list[float], float]]:
    """Per evaluator cycle (the collector's ``cycle_done`` debug lines), in [start, end]
    (Unix times): the ms of each run (sorted) and the longest time between the ends of two
    runs in a row (its interval, plus its own time and whatever held it back), in ms."""
    ends: dict[str, list[tuple[float, float]]] = {}
    for ts, event in _logged(log, ("cycle_done",), start, end):
        try:
            job, ms = event["job"], float(event["ms"])
        except (ValueError, KeyError):
            continue
        ends.setdefault(job, []).append((ts, ms))
    return {
        job: (
            sorted(ms for _, ms in runs),
            max(((b[0] - a[0]) * 1000 for a, b in itertools.pairwise(runs)), default=0.0),
        )
        for job, runs in ends.items()
    }


def _events(log: Path, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for line in log.read_text(errors="replace").splitlines():
        for name in names:
            if f'"{name}"' in line:
                counts[name] += 1
    return counts


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def main() -> None:
    """Build the store, run the collector under load, print the inter-commit gaps."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=int, default=40, help="seconds of offered load")
    p.add_argument("--rate", type=int, default=10_000, help="samples/s offered (12,500 nodes)")
    p.add_argument("--eval-interval-s", type=float, default=5.0, help="alerts and governance")
    p.add_argument(
        "--governance-interval-s",
        type=float,
        help="governance alone (default: --eval-interval-s; the collector's own is 15 s)",
    )
    p.add_argument("--capacity-interval-s", type=float, default=10.0)
    p.add_argument(
        "--ledger-interval-s",
        type=float,
        help="how often the usage ledger runs (default: the collector's, 300 s, so at most "
        "its first run falls in the window; its reads are 12,500 nodes' hardware and hours)",
    )
    p.add_argument("--keep", type=Path, help="copy the collector's log here")
    p.add_argument("--no-nice", action="store_true", help="the simulator keeps its priority")
    p.add_argument(
        "--replay",
        action="store_true",
        help="offer the load with bench/replay.py (each node's sample made once, ~8x less "
        "CPU a message than the simulator: 10,000/s on a small machine)",
    )
    p.add_argument(
        "--all-at-once",
        action="store_true",
        help="every node publishes at the start of each interval (default: each at its own "
        "phase, spread over the interval, as a real fleet's agents are)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        help="where the database goes (e.g. /dev/shm: leaves out the disk's fsync latency, "
        "which a shared machine's other writers make noisy)",
    )
    args = p.parse_args()
    interval_s = NODES / args.rate
    with tempfile.TemporaryDirectory(prefix="capwatch-stall-", dir=args.dir) as tmp:
        work = Path(tmp)
        db = work / "capwatch.db"
        t0 = time.perf_counter()
        asyncio.run(build_store(db, 1))  # nodes, inventories, tenants, quotas, leases
        plan = work / "site.json"
        plan.write_text(json.dumps(PLAN))
        took_s = time.perf_counter() - t0
        print(f"store: {NODES:,} nodes, 50 tenants leasing 250 each ({took_s:.1f} s)")
        env = {
            "CAPWATCH_CAPACITY__PLAN": str(plan),
            "CAPWATCH_CAPACITY__INTERVAL_S": str(args.capacity_interval_s),
            "CAPWATCH_ALERTS__EVAL_INTERVAL_S": str(args.eval_interval_s),
            "CAPWATCH_GOVERNANCE__EVAL_INTERVAL_S": str(
                args.eval_interval_s
                if args.governance_interval_s is None
                else args.governance_interval_s
            ),
            "CAPWATCH_EXPECTED_INTERVAL_S": str(interval_s),
        }
        if args.ledger_interval_s is not None:
            env["CAPWATCH_ROLLUPS__LEDGER_INTERVAL_S"] = str(args.ledger_interval_s)
        log = work / "collector.log"
        with MosquittoBroker(work / "broker") as broker:
            col = CollectorProcess(broker, db, log, log_level="debug", env=env)
            col.start()
            wait_subscribed(db)
            if not args.no_nice:
                os.nice(10)  # the collector (started before) keeps its priority
            sim = FleetSimulator(NODES, gpus_per_node=8, seed=3, interval_s=interval_s, epoch=1)
            mqtt = MqttSettings(host=broker.host, port=broker.port)
            ticks = max(2, round(args.seconds / interval_s))
            start = time.time()
            broker_cpu0 = _cpu_s(broker.pid)
            spread = not args.all_at_once
            if args.replay:
                made = replay_fleet(broker.host, broker.port, sim, ticks=ticks, spread=spread)
            else:
                made = publish_fleet(mqtt, sim, ticks=ticks, burst=False, spread=spread)
            stats = asyncio.run(made)
            end = time.time()
            time.sleep(2.0)  # the last batches
            broker_cpu = _cpu_s(broker.pid) - broker_cpu0
            cpu_s, rss_mb = col.stop()
        with sqlite3.connect(db) as conn:
            ((marked,),) = conn.execute("SELECT count(*) FROM watermarks").fetchall()
        if args.keep is not None:
            args.keep.write_bytes(log.read_bytes())
        commits = [c for c in _commits(log) if start + _WARMUP_S <= c[0] <= end]
        gaps = sorted((b[0] - a[0]) * 1000 for a, b in itertools.pairwise(commits))
        waits = _waits(commits)
        pairs = list(itertools.pairwise(commits))
        longest = [pairs[k] for k in sorted(range(len(waits)), key=lambda k: -waits[k])[:5]]
        made_of = _what_happened(log, [(a[0], b[0]) for a, b in longest])
        waits.sort()
        ages = sorted(c[2] for c in commits if c[2] is not None)
        # The part of each gap before its batch started: the writer was not writing (the
        # loop ran something else, or no message was waiting); the rest is the batch itself.
        idle = sorted((b[0] - a[0]) * 1000 - b[1] for a, b in itertools.pairwise(commits))
        batch_ms = sorted(c[1] for c in commits)
        records = _records(log, start, end + 2.0)
        cycles = _cycles(log, start, end)
        events = _events(
            log, ("governance_loaded", "capacity_snapshot", "alert_firing", "job_failed")
        )
    offered_s = end - start
    print(
        f"offered: {stats.published:,} samples in {offered_s:.1f} s "
        f"({stats.published / offered_s:,.0f}/s, target {args.rate:,}/s; late ticks "
        f"{stats.late_ticks}, simulator behind by up to "
        f"{stats.extra.get('max_late_s', 0.0) * 1000:.0f} ms); evaluation every "
        f"{args.eval_interval_s:g} s, capacity every "
        f"{args.capacity_interval_s:g} s"
    )
    print(
        f"collector: {cpu_s:.1f} s CPU, peak RSS {rss_mb:.0f} MB; events {events}; broker "
        f"{broker_cpu:.1f} s CPU (the load and 2 s after)"
    )
    print(f"watermarks stored: {marked:,} nodes of {NODES:,}")
    if not gaps:
        print("no commits logged in the window (is the collector logging at debug?)")
        return
    print(f"commits in the window: {len(commits):,} (after the first {_WARMUP_S:g} s of load)")
    print("stalls: time in which a sample had been taken and nothing was committed")
    print(f"{'  longest':<40} {waits[-1]:8.1f} ms")
    p50_wait = statistics.median(waits)
    print(f"{'  p99; p50':<40} {_percentile(waits, 0.99):8.1f} ms; {p50_wait:.1f} ms")
    print(f"{'  over 25 ms':<40} {sum(w > 25 for w in waits):8d}")
    print("gaps between two commits, a sample waiting or not")
    print(f"{'  longest':<40} {gaps[-1]:8.1f} ms")
    p50_gap = statistics.median(gaps)
    print(f"{'  p99; p50':<40} {_percentile(gaps, 0.99):8.1f} ms; {p50_gap:.1f} ms")
    print(f"{'  over 25 ms':<40} {sum(g > 25 for g in gaps):8d}")
    print(f"{'longest wait before a batch started':<40} {idle[-1]:8.1f} ms")
    p99_batch = _percentile(batch_ms, 0.99)
    print(f"{'longest batch (store + acks); p99':<40} {batch_ms[-1]:8.1f} ms; {p99_batch:.1f} ms")
    if ages:
        print(
            f"{'oldest sample of a batch, when stored':<40} p50 {statistics.median(ages):.0f} ms, "
            f"p99 {_percentile(ages, 0.99):.0f} ms, max {ages[-1]:.0f} ms (taken to committed)"
        )
    print("the longest stalls, and what the writer and the evaluator logged in them:")
    for (a, b), what in zip(longest, made_of, strict=True):
        wait = _waits([a, b])[0]
        print(
            f"  {wait:8.1f} ms of a {(b[0] - a[0]) * 1000:.1f} ms gap (then a batch of "
            f"{b[1]:.0f} ms): {what}"
        )
    print("evaluator cycles while the load was offered (each in its own lane):")
    for job, (runs, period) in sorted(cycles.items()):
        print(
            f"  {job:<12} {len(runs):4d} runs: p50 {statistics.median(runs):6.1f}  "
            f"max {runs[-1]:6.1f} ms; longest between two runs' ends {period:7.0f} ms"
        )
    print("records written while the load was offered (ms per part):")
    for job, (parts, n) in sorted(records.items()):
        print(
            f"  {job:<12} {n:4d} records, {len(parts):5d} parts: p50 "
            f"{statistics.median(parts):6.1f}  p99 {_percentile(parts, 0.99):6.1f}  "
            f"max {parts[-1]:6.1f}  total {sum(parts):7.0f}"
        )


if __name__ == "__main__":
    main()
