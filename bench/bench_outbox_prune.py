"""The outbox cleanup every alert write runs, at ``--rows`` outbox rows: ms, and its plan.

``write_alerts`` ends with :data:`collector.store.alerts.OUTBOX_PRUNE_SQL` (delivered and
dead notifications done before the history's keep go). This fills the outbox of a SQLite
and a PostgreSQL store with ``--rows`` notifications (bodies of four alerts) done within
the keep (30 days, the alert job's default; the steady state: nothing to delete) and 100
pending, then times,
with the ``outbox_done`` index and without it (dropped: the schema before migration
``0031_outbox_done``), in interleaved rounds:

* ``prune_ms``: the cleanup statement alone, in its own transaction;
* ``alert_write_ms``: a whole alert write with no change (``write_alerts(store, [])``);

each the median over ``--repeat`` calls (with the range over rounds), and prints the plan
of the cleanup either way (after ``ANALYZE``: the plan the store would choose).

Usage: ``.venv/bin/python bench/bench_outbox_prune.py [--rows 100000] [--repeat 30]
[--rounds 3]`` (JSON out)
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
_BODY = json.dumps(
    {
        "version": "4",
        "groupKey": '{}:{alertname="GpuHot"}',
        "status": "firing",
        "receiver": "hook",
        "groupLabels": {"alertname": "GpuHot"},
        "commonLabels": {"alertname": "GpuHot", "severity": "warning"},
        "commonAnnotations": {},
        "externalURL": "http://collector.example:9100",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "GpuHot", "node": f"node{i:05d}", "gpu": str(i % 8)},
                "annotations": {"summary": f"GPU {i % 8} of node{i:05d} is at 91 C"},
                "startsAt": "2026-12-07T06:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"{i:016x}",
            }
            for i in range(4)
        ],
    }
)
"""A webhook body of four alerts (~1.3 KB), as the outbox holds them."""
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
            _BODY,
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


_FLAGS = (
    ("--rows", 100_000, "done notifications in the outbox"),
    ("--repeat", 30, "calls per figure"),
    ("--rounds", 3, "interleaved rounds, index and not"),
)


def main() -> None:
    """Parse flags, bench both backends, print the figures as JSON."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, default, what in _FLAGS:
        p.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with (
        tempfile.TemporaryDirectory(prefix="capwatch-bench-") as tmp,
        LocalPostgres(Path(tmp) / "pg") as pg,
    ):
        results = {
            backend: asyncio.run(_bench(target, args.rows, args.repeat, args.rounds))
            for backend, target in (
                ("sqlite", Path(tmp) / "o.db"),
                ("postgresql", parse_target(pg.url)),
            )
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
