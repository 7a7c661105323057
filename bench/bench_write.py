"""The store's thread per 8-GPU sample: :meth:`Store.write_batch` (and the rollups' fold) as
the collector's writer runs them during a drain. Prints figures (not pass/fail).

A drain is GIL-bound; the store's thread (aiosqlite's, running :meth:`Store.transact`'s
whole transaction) is one of its three busy threads. Rows are made as the collector makes
them (:mod:`bench.bench_validate`'s simulated nodes through a real
:class:`~collector.ingest.validate.Ingestor`); each round opens a fresh SQLite store in a
temporary directory, set up as the collector sets up its own (rollups on, payloads
compressed, ``synchronous = full``), writes them in batches of at most ``--batch`` rows
(default 1,000: a drain's batches follow the broker's in-flight window, ``deploy/
mosquitto.conf``; their sizes vary, so each batch here is 64 to ``--batch`` rows in steps of
64, seeded; ``--fixed``: all ``--batch``), then folds them into the rollups once (as the
writer does every 100,000 samples; ``--folds N``: the batches in N shares, each folded
after it is written, so that the folds after the first read back and merge the buckets
stored before, as a drain's do). The CPU the store's thread spends in each
(``time.thread_time`` around every call into it, SQLite's own work included, the commit's
fsync not) is printed in microseconds a sample; the work of the executor threads
(compression, the fold's buckets) is not counted.

On a loaded machine (2 shared cores) CPU time varies by +-20 % from run to run; instructions
do not. ``--callgrind`` runs one round with every call into the store's thread made inside
:func:`functools.reduce` (nothing the store runs calls it), which callgrind can be told to
count alone; the fold is left out (``--callgrind-fold`` counts it alone instead, the store's
thread's transactions and the buckets the worker threads make; with ``--folds N``, the
folds after the first, which prepared the statements, the steady state: it prints the
samples counted; ``--callgrind-stage`` counts the staging alone: the batch's new samples as
columns, their split in shards, encoded, their ``rollup_stage`` rows inserted, and their
note once committed)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=cg.out .venv/bin/python bench/bench_write.py --nodes 4000 \
        --ticks 4 --callgrind
    # instructions per sample: the "summary:" line of cg.out / (nodes x ticks)

Usage: ``.venv/bin/python bench/bench_write.py [--nodes 2500] [--ticks 8] [--batch 1000]
[--fixed] [--rounds 5] [--folds 1] [--callgrind | --callgrind-fold | --callgrind-stage]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_validate import _ingestor, _messages
from collector.store import db, fold, partials
from collector.store.db import SampleRow, Store
from collector.store.rollups import STAGE_SQL, RollupConfig
from shared.logging import configure_logging

__all__ = ["main"]


def _rows(nodes: int, ticks: int) -> list[SampleRow]:
    """The rows the collector's ingestor makes of the simulated nodes' samples."""
    ing = _ingestor(nodes)
    rows = [ing.handle(topic, payload) for topic, payload in _messages(nodes, ticks)]
    out = [r for r in rows if isinstance(r, SampleRow)]
    if len(out) != len(rows):
        raise SystemExit(f"{len(rows) - len(out)} samples were not valid: fix the bench")
    return out


class _Thread:
    """Every call into ``store``'s thread timed in that thread's CPU time (and, with
    ``counted``, made inside :func:`functools.reduce` for callgrind)."""

    def __init__(self, store: Store) -> None:
        self.cpu_s = 0.0
        self.counted = False
        db: Any = store._db
        call = db.call

        async def timed(fn: Callable[..., Any], *args: Any) -> Any:
            def run() -> Any:
                t0 = time.thread_time()
                try:
                    if self.counted:
                        return functools.reduce(lambda _, __: fn(*args), (None,), None)
                    return fn(*args)
                finally:
                    self.cpu_s += time.thread_time() - t0

            return await call(run)

        db.call = timed


def _sizes(rows: int, batch: int, *, fixed: bool) -> list[int]:
    """The batches' sizes (see the module docstring)."""
    pick = random.Random(7)
    out: list[int] = []
    while sum(out) < rows:
        out.append(batch if fixed else pick.randrange(64, max(65, batch + 1), 64))
    return out


def _counted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called inside :func:`functools.reduce` (for callgrind to count; never nested
    in another such call)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return functools.reduce(lambda _, __: fn(*args, **kwargs), (None,), None)

    return call


def _count_staging() -> None:
    """Every step of the staging inside :func:`functools.reduce` (``--callgrind-stage``):
    the batch's new samples as columns, their split, the rows (encoded), their insert, the
    note once committed."""
    insert_many = db._Sqlite.insert_many

    def stage_rows(self: Any, statement: Any, rows: Any, *more: Any) -> int:
        if statement is STAGE_SQL:
            return int(_counted(insert_many)(self, statement, rows, *more))
        return insert_many(self, statement, rows, *more)

    db.stage = _counted(partials.stage)  # type: ignore[attr-defined]
    db._Sqlite.insert_many = stage_rows  # type: ignore[method-assign,assignment]
    for name in ("split", "rows", "committed"):
        setattr(fold.Stage, name, _counted(getattr(fold.Stage, name)))


async def _round(
    rows: list[SampleRow], sizes: list[int], count: str = "", folds: int = 1
) -> tuple[float, float]:
    """CPU microseconds per sample of the store's thread: writing the batches, the folds
    (``folds`` of them, each after its share of the batches: from the second on, the
    stored buckets are read back and merged, as in a drain's folds)."""
    if count == "stage":
        _count_staging()
    write = fold_s = 0.0
    folded = 0
    with tempfile.TemporaryDirectory() as d:
        async with Store(Path(d) / "bench.db", rollups=RollupConfig()) as store:
            thread = _Thread(store)
            start = 0
            for k in range(folds):
                thread.cpu_s, thread.counted = 0.0, count == "write"
                for n in sizes[len(sizes) * k // folds : len(sizes) * (k + 1) // folds]:
                    await store.write_batch(rows[start : start + n])
                    start += n
                write += thread.cpu_s
                # Counted: the folds after the first (the statements prepared, buckets
                # stored), the buckets too (a worker thread's, then the store's).
                counted = count == "fold" and (folds == 1 or k > 0)
                fold.buckets = _counted(partials.buckets) if counted else partials.buckets  # type: ignore[attr-defined]
                thread.cpu_s, thread.counted = 0.0, counted
                n = await store.fold_rollups()
                folded += n
                fold_s += thread.cpu_s
                if counted:
                    print(f"fold {k + 1}: {n:,} samples counted")
    if folded != len(rows):
        raise SystemExit(f"{len(rows) - folded} samples were not folded: fix the bench")
    return write / len(rows) * 1e6, fold_s / len(rows) * 1e6


def main() -> None:
    """Time the rounds; print µs per sample."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=2_500, help="8-GPU nodes (default 2500)")
    p.add_argument("--ticks", type=int, default=8, help="samples per node (default 8)")
    p.add_argument("--batch", type=int, default=1_000, help="most rows a batch (default 1000)")
    p.add_argument("--fixed", action="store_true", help="every batch --batch rows")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--folds", type=int, default=1, help="folds of the rows (default 1)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--callgrind", action="store_true", help="one round for callgrind to count (see above)"
    )
    p.add_argument("--callgrind-fold", action="store_true", help="as --callgrind, the fold")
    p.add_argument("--callgrind-stage", action="store_true", help="as --callgrind, the staging")
    args = p.parse_args()
    configure_logging("error")
    rows = _rows(args.nodes, args.ticks)
    sizes = _sizes(len(rows), args.batch, fixed=args.fixed)
    if args.callgrind or args.callgrind_fold or args.callgrind_stage:
        count = "write" if args.callgrind else "fold" if args.callgrind_fold else "stage"
        asyncio.run(_round(rows, sizes, count, args.folds))
        print(f"{len(rows):,} samples")
        return
    rounds = [asyncio.run(_round(rows, sizes, folds=args.folds)) for _ in range(args.rounds)]
    writes, folds = [w for w, _ in rounds], [f for _, f in rounds]
    if args.json:
        print(json.dumps({"write_us": writes, "fold_us": folds}))
        return
    print(
        f"store's thread, {len(rows):,} 8-GPU samples of {args.nodes:,} nodes, "
        f"{len(sizes)} batches of at most {args.batch} rows, CPU time"
    )
    print("  write_batch (us/sample)  " + "  ".join(f"{w:.2f}" for w in writes))
    print("  fold        (us/sample)  " + "  ".join(f"{f:.2f}" for f in folds))
    print(f"  best                     {min(writes):.2f} + {min(folds):.2f}")


if __name__ == "__main__":
    main()
