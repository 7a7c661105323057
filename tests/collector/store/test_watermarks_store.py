"""The ``watermarks`` table's reads on a real store, each backend in turn."""

from __future__ import annotations

import time

import msgspec
import psycopg
import pytest

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import PgTarget, StoreTarget, parse_target
from collector.store.db import Store
from collector.store.dialect import pg_sql
from collector.store.watermarks import (
    STORED_ABOVE_SQL,
    WatermarkRow,
    stored_above,
    write_watermarks,
)
from shared.schema import encode


async def _store(target: StoreTarget) -> str:
    """One node of epoch 7 with seqs 0, 1, 3, 4 stored, its watermark at 1 (top 4)."""
    sim = FleetSimulator(1, gpus_per_node=2, seed=8, interval_s=5, epoch=7)
    t0 = time.time() - 60
    samples = [sim.sample(0, t0 + 5 * k, k) for k in (0, 1, 3, 4)]
    async with Store(target) as store:
        await store.write_batch([sample_row(s, encode(s), s.ts) for s in samples], [], sim.node_ids)
        ts = round((t0 + 20) * 1000)
        await write_watermarks(store, [WatermarkRow(sim.node_ids[0], 7, 1, 4, ts, ts, ts)])
        assert await stored_above(store, 100) == [(sim.node_ids[0], 3), (sim.node_ids[0], 4)]
    return sim.node_ids[0]


async def test_the_samples_above_a_hole_are_read_back(store_url: StoreTarget) -> None:
    """What a restarted collector reads back: the seqs stored above the watermark's hole."""
    await _store(store_url)


@pytest.mark.integration
@pytest.mark.parametrize("url", ["postgres_url", "collated_postgres_url"])
async def test_the_samples_above_a_hole_are_found_through_the_samples_index(
    url: str, request: pytest.FixtureRequest
) -> None:
    """`watermarks.node` compares as bytes (``C``, migration 0033), `samples.node` and its
    index in the database's collation: compared as they are, the index cannot serve the
    join: a collector's start read every stored sample up to the last node with a hole
    (2,000 nodes x 20 samples, one hole: 147 ms, 1 ms with the index). With only nested
    loops on offer, the samples must be looked up by each watermark's node."""
    target = parse_target(request.getfixturevalue(url))
    assert isinstance(target, PgTarget)
    await _store(target)
    with psycopg.connect(target.url, autocommit=True) as pg:
        for method in ("hashjoin", "mergejoin"):
            pg.execute(f"SET enable_{method} = off")
        sql = pg_sql(STORED_ABOVE_SQL["postgresql"])
        plan = "\n".join(str(r[0]) for r in pg.execute(f"EXPLAIN {sql}", (100,)).fetchall())
    assert "Index Cond: (node = (w.node)::text)" in plan, plan


async def test_the_samples_above_holes_are_paged_in_the_same_node_order_on_both_backends(
    collated_store_url: StoreTarget,
) -> None:
    """``stored_above`` takes at most ``limit`` rows, ordered by node: ordered by
    ``samples.node``, in the database's collation on PostgreSQL (en-US: ``a-node`` before
    ``B-node``), the page held other nodes' samples than on SQLite (bytes: ``B`` first).
    Ordered by ``watermarks.node`` (``C``, migration 0033): as bytes on both."""
    sim = FleetSimulator(1, gpus_per_node=2, seed=8, interval_s=5, epoch=7)
    t0 = time.time() - 60
    rows, marks = [], []
    for node in ("a-node", "B-node"):
        for k in (0, 1, 3, 4):
            s = msgspec.structs.replace(sim.sample(0, t0 + 5 * k, k), node=node)
            rows.append(sample_row(s, encode(s), s.ts))
        ts = round((t0 + 20) * 1000)
        marks.append(WatermarkRow(node, 7, 1, 4, ts, ts, ts))
    async with Store(collated_store_url) as store:
        await store.write_batch(rows, [], ["a-node", "B-node"])
        await write_watermarks(store, marks)
        assert await stored_above(store, 2) == [("B-node", 3), ("B-node", 4)]
        assert await stored_above(store, 100) == [
            ("B-node", 3), ("B-node", 4), ("a-node", 3), ("a-node", 4)
        ]  # fmt: skip
