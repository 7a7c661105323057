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
writer does every 100,000 samples). The CPU the store's thread spends in each
(``time.thread_time`` around every call into it, SQLite's own work included, the commit's
fsync not) is printed in microseconds a sample; the work of the executor threads
(compression, the fold's buckets) is not counted.

On a loaded machine (2 shared cores) CPU time varies by +-20 % from run to run; instructions
do not. ``--callgrind`` runs one round with every call into the store's thread made inside
:func:`functools.reduce` (nothing the store runs calls it), which callgrind can be told to
count alone; the fold is left out (``--callgrind-fold`` counts it alone instead)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=cg.out .venv/bin/python bench/bench_write.py --nodes 4000 \
        --ticks 4 --callgrind
    # instructions per sample: the "summary:" line of cg.out / (nodes x ticks)

Usage: ``.venv/bin/python bench/bench_write.py [--nodes 2500] [--ticks 8] [--batch 1000]
[--fixed] [--rounds 5] [--callgrind | --callgrind-fold]``
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
from collector.store.db import SampleRow, Store
from collector.store.rollups import RollupConfig
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


async def _round(rows: list[SampleRow], sizes: list[int], count: str = "") -> tuple[float, float]:
    """CPU microseconds per sample of the store's thread: writing the batches, the fold."""
    with tempfile.TemporaryDirectory() as d:
        async with Store(Path(d) / "bench.db", rollups=RollupConfig()) as store:
            thread = _Thread(store)
            thread.counted = count == "write"
            start = 0
            for n in sizes:
                await store.write_batch(rows[start : start + n])
                start += n
            write = thread.cpu_s
            thread.cpu_s, thread.counted = 0.0, count == "fold"
            folded = await store.fold_rollups()
            fold = thread.cpu_s
    stored = folded
    if stored != len(rows):
        raise SystemExit(f"{len(rows) - stored} samples were not folded: fix the bench")
    return write / len(rows) * 1e6, fold / len(rows) * 1e6


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
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--callgrind", action="store_true", help="one round for callgrind to count (see above)"
    )
    p.add_argument("--callgrind-fold", action="store_true", help="as --callgrind, the fold")
    args = p.parse_args()
    configure_logging("error")
    rows = _rows(args.nodes, args.ticks)
    sizes = _sizes(len(rows), args.batch, fixed=args.fixed)
    if args.callgrind or args.callgrind_fold:
        asyncio.run(_round(rows, sizes, "write" if args.callgrind else "fold"))
        print(f"{len(rows):,} samples")
        return
    rounds = [asyncio.run(_round(rows, sizes)) for _ in range(args.rounds)]
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
