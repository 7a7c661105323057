"""How many rows the writer's next batch may take: bounded by time while it keeps up."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.simulate import FleetSimulator
from collector.ingest.reader import MetaItem, StopUnit, Unit
from collector.ingest.validate import Ingestor, Item, sample_row
from collector.ingest.writer import BatchLimit, Writer, WriterItem
from collector.store.db import Store
from shared.clock import SystemClock
from shared.schema import encode
from tests.helpers import count_samples


def _limits(*batches: tuple[int, float, bool]) -> list[int]:
    """The limit after each batch ``(rows, took_s, capped)``, 0.1 s apart, 8 ms target."""
    limit = BatchLimit(4_000, target_s=0.008)
    out = []
    for k, (rows, took_s, capped) in enumerate(batches):
        limit.observe(rows, took_s, capped=capped, t=0.1 * k)
        out.append(limit.now(0.1 * k + 0.05))
    return out


def test_a_slow_batch_shrinks_the_limit_towards_the_target_time_by_at_most_half() -> None:
    """4,000 rows in 64 ms against an 8 ms target: 2,000 next (at most halved), then
    2,000 in 16 ms: 1,000; a batch at the target keeps it."""
    assert BatchLimit(4_000).now(0.0) == 4_000
    steps = _limits((4_000, 0.064, False), (2_000, 0.016, True), (1_000, 0.008, True))
    assert steps == [2_000, 1_000, 1_000]


def test_a_fast_batch_at_the_limit_raises_it_and_a_small_one_leaves_it() -> None:
    """A full batch in half the target doubles the limit (up to the maximum); a batch
    below the limit that was fast says nothing about larger ones."""
    steps = _limits(
        (4_000, 0.032, False), (100, 0.001, False), (2_000, 0.004, False), (4_000, 0.001, False)
    )
    assert steps == [2_000, 2_000, 4_000, 4_000]


def test_a_slow_small_batch_shrinks_the_limit_but_never_below_the_floor() -> None:
    """Even one row that took long leaves room for 32 rows a batch."""
    limit = BatchLimit(4_000, target_s=0.008)
    for t in range(12):
        limit.observe(10, 0.100, capped=False, t=float(t))
    assert limit.now(20.0) == 32


def test_a_backlog_at_the_limit_for_behind_s_gets_the_largest_batches_until_drained() -> None:
    """Batches stopped at the limit with rows waiting for 0.5 s in a row: a backlog to
    drain, at batch_max_rows; a batch that empties the queue ends it."""
    limit = BatchLimit(4_000, target_s=0.008, behind_s=0.5)
    limit.observe(4_000, 0.032, capped=True, t=0.0)  # -> 2,000 (halved at most)
    limit.observe(2_000, 0.016, capped=True, t=0.2)  # -> 1,000
    assert limit.now(0.4) == 1_000
    assert limit.now(0.5) == 4_000
    limit.observe(4_000, 0.032, capped=True, t=0.5)
    assert limit.now(0.6) == 4_000
    limit.observe(300, 0.003, capped=False, t=0.6)
    assert limit.now(0.7) == 1_000


def test_a_drain_through_the_in_flight_window_is_a_backlog_though_it_empties_the_queue() -> None:
    """Windows of 1,000 messages at a 500-row limit: a capped batch, then one that takes
    the rest (the queue empty, the broker sending the next window): still behind."""
    limit = BatchLimit(4_000, target_s=0.008, behind_s=0.5)
    limit.observe(4_000, 0.064, capped=True, t=0.0)  # -> 2,000
    limit.observe(2_000, 0.032, capped=True, t=0.1)  # -> 1,000
    limit.observe(1_000, 0.016, capped=True, t=0.2)  # -> 500
    t = 0.3
    while t < 0.6:
        limit.observe(500, 0.008, capped=True, t=t)
        limit.observe(500, 0.008, capped=False, t=t + 0.05)
        t += 0.1
    assert limit.now(t) == 4_000


class _Link:
    """Where the units' acks go: notes how many samples the store held at each ack."""

    closed = False

    def __init__(self, db: Path) -> None:
        self.db = db
        self.observed: list[int] = []

    def ack(self, packet_ids: Iterable[int]) -> None:
        self.observed.append(count_samples(self.db))

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        raise AssertionError("no watermarks in this test")


async def test_the_writer_takes_no_more_rows_than_its_limit_says(tmp_path: Path) -> None:
    """A backlog of 1,000 rows in units of 10, every batch slower than a 0 s target: the
    batches halve from batch_max_rows (400, 200, 100, 50) to the 32-row floor (in units)."""
    db = tmp_path / "c.db"
    clock = SystemClock()
    sim = FleetSimulator(100, gpus_per_node=2, seed=5, interval_s=5)
    now = time.time()
    link = _Link(db)
    queue: asyncio.Queue[WriterItem] = asyncio.Queue()
    for k in range(10):
        for first in range(0, 100, 10):
            rows = [sim.sample(i, now - 100 + k, k) for i in range(first, first + 10)]
            items: list[Item | MetaItem] = [sample_row(s, encode(s), now) for s in rows]
            queue.put_nowait(Unit(link, items, list(range(1, 11))))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    queue.put_nowait(StopUnit(done))
    async with Store(db) as store:
        writer = Writer(store, queue, Ingestor(clock), clock, batch_max_rows=400)
        writer.batch_limit = BatchLimit(400, target_s=0.0, behind_s=3600.0)
        await writer.run()
    commits = sorted(set(link.observed))
    sizes = [b - a for a, b in itertools.pairwise([0, *commits])]
    assert sizes == [400, 200, 100, 50, 40, 40, 40, 40, 40, 40, 10], sizes
