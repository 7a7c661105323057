"""The outbox cleanup every alert write runs, at ``--rows`` outbox rows: ms, and its plan.

``write_alerts`` ends with :data:`collector.store.alerts.OUTBOX_PRUNE_SQL` (delivered and
dead notifications done before the history's keep go). This fills the outbox of a SQLite
and a PostgreSQL store with ``--rows`` notifications done within the keep (30 days, the
alert job's default; the steady state: nothing to delete) and 100 pending, then times,
with the ``outbox_done`` index and without it (dropped: the schema before migration
``0030_outbox_done``), in interleaved rounds:

* ``prune_ms``: the cleanup statement alone, in its own transaction;
* ``alert_write_ms``: a whole alert write with no change (``write_alerts(store, [])``);

each the median over ``--repeat`` calls (with the range over rounds), and prints the plan
of the cleanup either way (after ``ANALYZE``: the plan the store would choose).

Usage: ``.venv/bin/python bench/bench_outbox_prune.py [--rows 100000] [--repeat 30]
[--rounds 3] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.localpg import LocalPostgres
from collector.paths import StoreTarget, parse_target
from collector.store.alerts import OUTBOX_PRUNE_SQL, write_alerts
from collector.store.db import Store

_KEEP_S = 30 * 86_400.0
_NOW = 1.8e9


async def _fill(store: Store, rows: int) -> None:
    """``rows`` notifications done within the keep (a tenth dead), 100 pending."""
    done = [
        (
            f"u{i}",
            "hook",
            f"fp{i % 5000}",
            "rule",
            "firing",
            '{"version": "4"}',
            _NOW - _KEEP_S * (i / rows),
            _NOW + 3600,
            "dead" if i % 10 == 0 else "delivered",
            _NOW - _KEEP_S * (i / rows) + 1,
        )
        for i in range(rows)
    ]
    pending = [
        (f"p{i}", "hook", "fp", "rule", "firing", "{}", _NOW, _NOW + 3600) for i in range(100)
    ]
    async with store.transaction("bench fill"):
        await store.executemany(
            "INSERT INTO outbox (uuid, receiver, fingerprint, rule, status, body, created, "
            "expires_at, state, next_at, attempts, done_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            [(*r[:9], r[6], r[9]) for r in done],
        )
        await store.executemany(
            "INSERT INTO outbox (uuid, receiver, fingerprint, rule, status, body, created, "
            "expires_at, state, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            [(*r, r[6]) for r in pending],
        )
    await _analyze(store)


async def _analyze(store: Store) -> None:
    async with store.transaction("bench analyze"):
        await store.execute("ANALYZE outbox")


async def _plan(store: Store) -> str:
    if store.dialect == "sqlite":
        rows = await store.fetchall(f"EXPLAIN QUERY PLAN {OUTBOX_PRUNE_SQL}", (_NOW - _KEEP_S,))
        return " / ".join(str(r[-1]) for r in rows)
    rows = await store.fetchall(f"EXPLAIN {OUTBOX_PRUNE_SQL}", (_NOW - _KEEP_S,))
    return " / ".join(str(r[0]).strip() for r in rows)


async def _median_ms(repeat: int, call: Any) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def _measure(store: Store, repeat: int) -> dict[str, float]:
    async def prune() -> None:
        async with store.transaction("bench prune"):
            await store.execute(OUTBOX_PRUNE_SQL, (_NOW - _KEEP_S,))

    async def alert_write() -> None:
        await write_alerts(store, [], _KEEP_S, now=_NOW)

    return {
        "prune_ms": await _median_ms(repeat, prune),
        "alert_write_ms": await _median_ms(repeat, alert_write),
    }


async def _bench(target: StoreTarget, rows: int, repeat: int, rounds: int) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {"index": {}, "no index": {}}
    plans: dict[str, str] = {}
    async with Store(target) as store:
        await _fill(store, rows)
        for _ in range(rounds):
            for variant in ("index", "no index"):
                async with store.transaction("bench index"):
                    await store.execute("DROP INDEX IF EXISTS outbox_done")
                    if variant == "index":
                        await store.execute("CREATE INDEX outbox_done ON outbox (done_at)")
                await _analyze(store)
                plans[variant] = await _plan(store)
                for k, v in (await _measure(store, repeat)).items():
                    figures[variant].setdefault(k, []).append(v)
        (left,) = (await store.fetchall("SELECT count(*) FROM outbox"))[0]
    return {
        "outbox_rows": int(left),
        **{
            f"{variant} {k}": f"{statistics.median(v):.3f} ({min(v):.3f}..{max(v):.3f})"
            for variant, ks in figures.items()
            for k, v in ks.items()
        },
        **{f"{variant} plan": plan for variant, plan in plans.items()},
    }


def main() -> None:
    """Parse flags, bench both backends, print figures (JSON with --json)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=100_000, help="done notifications (100000)")
    p.add_argument("--repeat", type=int, default=30, help="calls per figure (30)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="capwatch-bench-") as tmp:
        work = Path(tmp)
        results["sqlite"] = asyncio.run(_bench(work / "o.db", args.rows, args.repeat, args.rounds))
        with LocalPostgres(work / "pg") as pg:
            results["postgresql"] = asyncio.run(
                _bench(parse_target(pg.url), args.rows, args.repeat, args.rounds)
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for backend, figures in results.items():
        print(f"[outbox cleanup on {backend}] median ms (range over rounds)")
        for k, v in figures.items():
            print(f"  {k:24s} {v}")


if __name__ == "__main__":
    main()
