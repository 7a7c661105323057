"""Statements that compare a text column of a growing table (``samples``, ``rollup_stage``:
the database's collation on PostgreSQL, as their indexes) with one of another table
(``C`` from migration 0033: ``pool_nodes.node``, ``rollup_owners.owner``) must still reach
the growing table through its index (:func:`collector.store.dialect.growing_side`).

Real PostgreSQL, a ``C`` and an ICU en-US database; each plan with the growing table's seq
scan (and the joins that read it whole) priced out, as the existing ones in
``test_latest_sample.py`` and ``test_watermarks_store.py``."""

from __future__ import annotations

import time

import psycopg
import pytest

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import PgTarget, parse_target
from collector.store.db import Store
from collector.store.dialect import pg_sql
from collector.store.rollups import orphans_sql
from collector.store.series import fleet_series_sql
from shared.schema import encode

pytestmark = pytest.mark.integration

URLS = pytest.mark.parametrize("url", ["postgres_url", "collated_postgres_url"])


def _plan(pg: psycopg.Connection[tuple[object, ...]], sql: str, params: tuple[object, ...]) -> str:
    for setting in ("seqscan", "hashjoin", "mergejoin", "bitmapscan"):
        pg.execute(f"SET enable_{setting} = off")
    return "\n".join(str(r[0]) for r in pg.execute(f"EXPLAIN {pg_sql(sql)}", params).fetchall())


def _conds(plan: str, table: str) -> set[str]:
    """The first condition line under each scan of ``table`` (a partition's: its prefix),
    its casts taken out; a scan with none gives ``''``."""
    lines = [line.strip() for line in plan.splitlines()]
    found = set()
    for i, line in enumerate(lines):
        if f" on {table}" in line and "Scan" in line:
            after = lines[i + 1] if i + 1 < len(lines) else ""
            cond = after if after.startswith(("Index Cond", "Filter")) else ""
            found.add(cond)
    return found


@URLS
async def test_a_pools_fleet_series_finds_its_nodes_samples_through_the_index(
    url: str, request: pytest.FixtureRequest
) -> None:
    """``collector plot --pool``: the samples of the pool's nodes (``pool_nodes.node``,
    ``C``) looked up by ``samples (node, ts_ms)``, not the whole window's samples filtered."""
    target = parse_target(request.getfixturevalue(url))
    assert isinstance(target, PgTarget)
    sim = FleetSimulator(3, gpus_per_node=2, seed=8, interval_s=5, epoch=7)
    t0 = time.time() - 60
    samples = [sim.sample(i, t0 + 5 * k, k) for k in range(3) for i in range(3)]
    async with Store(target) as store:
        await store.write_batch([sample_row(s, encode(s), s.ts) for s in samples], [], sim.node_ids)
    sql, extra = fleet_series_sql("postgresql", "a")
    with psycopg.connect(target.url, autocommit=True) as pg:
        pg.execute("INSERT INTO pools (name, created) VALUES ('a', 0)")
        pg.execute("INSERT INTO pool_nodes (pool, node) VALUES ('a', %s)", (sim.node_ids[1],))
        params = (1000, 1000, 0, *extra)
        nodes = [r[-1] for r in pg.execute(pg_sql(sql), params).fetchall()]
        plan = _plan(pg, sql, params)
    assert nodes, nodes
    assert nodes == [1] * len(nodes), nodes
    assert _conds(plan, "samples_") == {"Index Cond: (node = (pool_nodes.node)::text)"}, plan


@URLS
async def test_a_fold_finds_the_staged_rows_of_quiet_owners_through_the_index(
    url: str, request: pytest.FixtureRequest
) -> None:
    """A fold's takeover check (every fold): each other owner's staged rows looked up by
    ``rollup_stage (owner, shard, seq)``, not every staged row read."""
    target = parse_target(request.getfixturevalue(url))
    assert isinstance(target, PgTarget)
    async with Store(target):
        pass
    sql = orphans_sql("postgresql")
    with psycopg.connect(target.url, autocommit=True) as pg:
        for owner, folded in (("me", 100.0), ("quiet", 10.0), ("gone", 10.0)):
            pg.execute("INSERT INTO rollup_owners (owner, folded) VALUES (%s, %s)", (owner, folded))
        for owner in ("me", "quiet"):
            pg.execute(
                "INSERT INTO rollup_stage (owner, seq, shard, body) VALUES (%s, 1, 0, '')",
                (owner,),
            )
        orphans = [r[0] for r in pg.execute(pg_sql(sql), ("me", 50.0)).fetchall()]
        plan = _plan(pg, sql, ("me", 50.0))
    assert orphans == ["quiet"]
    assert _conds(plan, "rollup_stage") == {"Index Cond: (owner = (o.owner)::text)"}, plan
