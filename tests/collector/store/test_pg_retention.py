"""Retention of PostgreSQL's day partitions, on a real PostgreSQL: a late sample another
collector of the share group is inserting is never dropped with its day, and a day kept for
a few late arrivals goes in one transaction, its late arrivals kept."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget, parse_target
from collector.store.db import SampleRow, Store
from collector.store.pgdays import partition_name
from shared.schema import encode
from tests.helpers import db_rows, wait_until

pytestmark = pytest.mark.integration

_DAY_S = 86_400


def _day_rows(nodes: int, ticks: int, t0: float, received: float | None = None) -> list[SampleRow]:
    """``nodes x ticks`` samples from ``t0`` every 5 s; each arrives 0.1 s after its time,
    or at ``received``."""
    sim = FleetSimulator(nodes, gpus_per_node=2, seed=4, interval_s=5)
    out = []
    for k in range(ticks):
        for i in range(nodes):
            s = sim.sample(i, t0 + 5 * k, k)
            out.append(sample_row(s, encode(s), t0 + 5 * k + 0.1 if received is None else received))
    return out


def _old_day() -> tuple[float, float, int]:
    """Now, a time 1 h into the UTC day three days ago (a day wholly before a cutoff a day
    ago), and that cutoff in ms."""
    now = time.time()
    old = (int(now) // _DAY_S - 3) * _DAY_S + 3600.0
    return now, old, round((now - _DAY_S) * 1000)


def _partition(old: float) -> str:
    return partition_name(int(old) // _DAY_S)


def _insert_late(conn: psycopg.Connection[Any], node: str, received_ms: int) -> None:
    """In ``conn``'s open transaction: a copy of a stored sample of the old day as node
    ``node``'s, arrived at ``received_ms`` (another collector storing a replayed spool)."""
    conn.execute("CREATE TEMP TABLE late ON COMMIT DROP AS SELECT * FROM samples LIMIT 1")
    conn.execute("UPDATE late SET node = %s, received_ms = %s", (node, received_ms))
    conn.execute("INSERT INTO samples SELECT * FROM late")


def _waiting_for_a_lock(poll: psycopg.Connection[Any], connections: int = 1) -> bool:
    """Whether ``connections`` capwatch connections (the stores') wait for a lock."""
    row = poll.execute(
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.application_name = 'capwatch'"
    ).fetchone()
    return bool(row and row[0] >= connections)


def _nodes(target: StoreTarget) -> list[str]:
    return [r[0] for r in db_rows(target, "SELECT node FROM samples ORDER BY node")]


async def test_a_late_sample_committed_while_retention_waits_is_kept(postgres_url: str) -> None:
    """Another collector's transaction inserted a late sample into a day wholly before the
    cutoff and commits while retention waits to drop that day: the sample stays (retention
    decides on what it sees once no one writes the day); the day's on-time sample goes."""
    target = parse_target(postgres_url)
    now, old, cutoff_ms = _old_day()
    async with Store(target) as store:
        await store.write_batch(_day_rows(1, 1, old))
        with (
            psycopg.connect(postgres_url) as other,
            psycopg.connect(postgres_url, autocommit=True) as poll,
        ):
            _insert_late(other, "late", round(now * 1000))
            retention = asyncio.create_task(store.delete_older_than(cutoff_ms, 25))
            await wait_until(
                lambda: retention.done() or _waiting_for_a_lock(poll),
                what="retention waiting for the other transaction's lock",
            )
            other.commit()
            await retention
        while await store.delete_older_than(cutoff_ms, 25):
            pass
    assert _nodes(target) == ["late"]


async def test_retention_gives_way_to_a_transaction_that_holds_samples(postgres_url: str) -> None:
    """A transaction inserting into a day wholly before the cutoff stays open throughout
    retention: retention neither fails nor waits for it past its short lock wait, drops
    nothing it could not see, and deletes the day's on-time samples by the chunked delete;
    its next call does not try the day again (writers would queue behind each try)."""
    target = parse_target(postgres_url)
    now, old, cutoff_ms = _old_day()
    async with Store(target) as store:
        await store.write_batch(_day_rows(30, 1, old))
        oid = db_rows(target, "SELECT to_regclass(?)::oid", (_partition(old),))
        with psycopg.connect(postgres_url) as other:
            _insert_late(other, "late", round(now * 1000))
            t0 = time.monotonic()
            assert await store.delete_older_than(cutoff_ms, 25) == 25
            waited_s = time.monotonic() - t0
            other.commit()
        assert await store.delete_older_than(cutoff_ms, 25) == 5
        assert db_rows(target, "SELECT to_regclass(?)::oid", (_partition(old),)) == oid
    assert _nodes(target) == ["late"]
    assert waited_s < 4.0  # the writers' own lock_timeout is 5 s: retention gave up first


async def test_a_day_kept_for_late_arrivals_goes_in_one_call_keeping_them(
    postgres_url: str,
) -> None:
    """A day wholly before the cutoff holding 200 on-time samples and 2 late arrivals: one
    retention call (chunks of 25) removes the 200 and keeps the 2 in the day's partition,
    where the unique key still drops a redelivered one."""
    target = parse_target(postgres_url)
    now, old, cutoff_ms = _old_day()
    late = _day_rows(2, 1, old + 600, received=now)
    late = [r._replace(node=f"late-{r.node}") for r in late]
    async with Store(target) as store:
        await store.write_batch(_day_rows(20, 10, old))
        await store.write_batch(late)
        await store.delete_older_than(cutoff_ms, 25)
        assert _nodes(target) == sorted(r.node for r in late)
        assert await store.write_batch(late[:1]) == 0
        partitions = {r[0] for r in db_rows(target, _PARTITIONS)}
        assert _partition(old) in partitions


async def test_a_day_with_more_late_arrivals_than_a_chunk_goes_whole_keeping_them(
    postgres_url: str,
) -> None:
    """More late arrivals than a retention chunk (30, chunks of 25), yet fewer than its
    on-time samples (60): one retention call rebuilds the day (its partition a new table)
    with only the 30, rather than deleting the 60 chunk by chunk; the unique key still
    drops a redelivered one, and the day's next late sample is stored beside them."""
    target = parse_target(postgres_url)
    now, old, cutoff_ms = _old_day()
    late = [r._replace(node=f"late-{r.node}") for r in _day_rows(30, 2, old + 600, now)]
    async with Store(target) as store:
        await store.write_batch(_day_rows(20, 3, old))
        await store.write_batch(late[:30])
        oid = db_rows(target, "SELECT to_regclass(?)::oid", (_partition(old),))
        # What autovacuum did long before the day left the window: its rows counted.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"ANALYZE {_partition(old)}")
        await store.delete_older_than(cutoff_ms, 25)
        assert _nodes(target) == sorted(r.node for r in late[:30])
        assert db_rows(target, "SELECT to_regclass(?)::oid", (_partition(old),)) != oid
        indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = ?"
        assert db_rows(target, indexes, (_partition(old),)) == db_rows(
            target, indexes, ("samples",)
        )
        assert await store.write_batch(late[:1]) == 0
        assert await store.write_batch(late[30:31]) == 1
        assert not await store.delete_older_than(cutoff_ms, 25)
    assert len(_nodes(target)) == 31


async def test_a_day_with_more_late_arrivals_than_on_time_ones_is_trimmed_not_rebuilt(
    postgres_url: str,
) -> None:
    """More late arrivals than a retention chunk and than on-time samples: the day is not
    rebuilt (copying what stays would cost more than deleting what goes: its partition
    stays the same table); its on-time samples go by the chunked delete."""
    target = parse_target(postgres_url)
    now, old, cutoff_ms = _old_day()
    late = [r._replace(node=f"late-{r.node}") for r in _day_rows(30, 1, old + 600, now)]
    async with Store(target) as store:
        await store.write_batch(_day_rows(10, 1, old))
        await store.write_batch(late)
        oid = db_rows(target, "SELECT to_regclass(?)::oid", (_partition(old),))
        while await store.delete_older_than(cutoff_ms, 25):
            pass
        assert db_rows(target, "SELECT to_regclass(?)::oid", (_partition(old),)) == oid
    assert _nodes(target) == sorted(r.node for r in late)


@pytest.mark.parametrize("late_nodes", [0, 3])
async def test_two_collectors_dropping_the_same_day_at_once_both_go_on(
    postgres_url: str, late_nodes: int
) -> None:
    """Two collectors of a share group both wait to drop the same day (a writer holds
    samples), then take the lock in turn: the second finds the day gone (or rebuilt with
    only late arrivals) and goes on; neither fails; the day's on-time samples go, its late
    ones stay."""
    target = parse_target(postgres_url)
    now, old, cutoff_ms = _old_day()
    replayed = _day_rows(late_nodes, 1, old + 600, now) if late_nodes else []
    late = [r._replace(node=f"late-{r.node}") for r in replayed]
    async with Store(target) as a, Store(target) as b:
        await a.write_batch(_day_rows(10, 3, old))
        await b.write_batch(late)
        with (
            psycopg.connect(postgres_url) as writer,
            psycopg.connect(postgres_url, autocommit=True) as poll,
        ):
            writer.execute("LOCK TABLE ONLY samples IN ROW EXCLUSIVE MODE")
            both = asyncio.gather(
                a.delete_older_than(cutoff_ms, 25), b.delete_older_than(cutoff_ms, 25)
            )
            await wait_until(
                lambda: both.done() or _waiting_for_a_lock(poll, 2),
                what="both collectors waiting to drop the day",
            )
            writer.commit()
            await both
        while await a.delete_older_than(cutoff_ms, 25):
            pass
    assert _nodes(target) == sorted(r.node for r in late)


async def test_a_day_another_collector_drops_while_retention_looks_at_it_is_passed_over(
    postgres_url: str,
) -> None:
    """Retention waits to read a day another collector holds, which then drops it: this
    retention passes over the day (no error for the writer), and a later sample of that
    day gets a partition again."""
    target = parse_target(postgres_url)
    _, old, cutoff_ms = _old_day()
    rows = _day_rows(1, 2, old)
    async with Store(target) as store:
        await store.write_batch(rows[:1])
        with (
            psycopg.connect(postgres_url) as other,
            psycopg.connect(postgres_url, autocommit=True) as poll,
        ):
            other.execute(f"LOCK TABLE {_partition(old)} IN ACCESS EXCLUSIVE MODE")
            retention = asyncio.create_task(store.delete_older_than(cutoff_ms, 25))
            await wait_until(
                lambda: retention.done() or _waiting_for_a_lock(poll),
                what="retention waiting to read the day",
            )
            other.execute(f"DROP TABLE {_partition(old)}")
            other.commit()
            assert await retention == 0
        assert await store.write_batch(rows[1:]) == 1
    assert _nodes(target) == [rows[1].node]


_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'samples'::regclass ORDER BY 1"
)
