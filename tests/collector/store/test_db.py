"""The store on real SQLite files and a real PostgreSQL (``store_url``: each backend in
turn): migrations, dedup, retention, node news, payloads."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget, parse_target
from collector.store.db import (
    MIGRATIONS,
    NodeUpdate,
    QuarantineRow,
    SampleRow,
    Store,
    Synchronous,
)
from collector.store.reader import StoreReader
from shared.errors import StoreError
from shared.schema import encode
from tests.helpers import count_samples, db_rows, wait_until


def _rows(n_nodes: int, ticks: int, t0: float = 1.8e9) -> list[SampleRow]:
    sim = FleetSimulator(n_nodes, gpus_per_node=2, seed=4, interval_s=5)
    out = []
    for k in range(ticks):
        for i in range(n_nodes):
            s = sim.sample(i, t0 + 5 * k, k)
            out.append(sample_row(s, encode(s), t0 + 5 * k + 0.1))
    return out


async def test_migrations_are_recorded_once(store_url: StoreTarget) -> None:
    """Opening twice applies each named migration once."""
    db = store_url
    async with Store(db) as store:
        assert await store.migrations() == [name for name, _ in MIGRATIONS]
    async with Store(db) as store:
        assert await store.migrations() == [name for name, _ in MIGRATIONS]
    if isinstance(db, Path):
        assert db_rows(db, "PRAGMA journal_mode") == [("wal",)]


async def test_redelivered_samples_are_stored_once(store_url: StoreTarget) -> None:
    """(node, ts) is unique: writing the same rows again inserts nothing."""
    rows = _rows(3, 4)
    async with Store(store_url) as store:
        assert await store.write_batch(rows) == 12
        assert await store.write_batch(rows[5:]) == 0
        assert await store.write_batch(rows[:2] + rows[:2]) == 0  # twice in one batch too
    assert count_samples(store_url) == 12


async def test_store_totals_count_what_was_committed_across_restarts(
    store_url: StoreTarget,
) -> None:
    """stored_total, duplicates_total and quarantined_total(_<reason>) are added in each
    batch's transaction: after restarts they equal what the store holds; a write still in
    flight when the process dies (a transaction never committed) counts nothing."""
    rows = _rows(3, 4)
    bad = QuarantineRow(1, "n1", "capwatch/v1/nodes/n1/sample", "invalid", "x", b"{", 1)
    async with Store(store_url) as store:
        assert await store.write_batch(rows[:8], quarantine=[bad]) == 8
    async with Store(store_url) as store:  # a restart
        assert await store.write_batch(rows[4:], quarantine=[bad, bad._replace(reason="skew")])
        # NOT NULL: a row the store refuses, as a real refusal would come
        refused = rows[8]._replace(ts_ms=rows[8].ts_ms + 1, interval_s=None)  # type: ignore[arg-type]
        with pytest.raises(StoreError):  # rolled back: neither stored nor counted
            await store.write_batch([*rows[:3], refused], quarantine=[bad])
        await store.write_batch(rows[:1])
    with StoreReader(store_url) as reader:
        c = reader.counters()
    assert c["stored_total"] == count_samples(store_url) == 12
    assert c["duplicates_total"] == 4 + 1
    assert c["quarantined_total"] == 3
    assert c["quarantined_total_invalid"] == 2
    assert c["quarantined_total_skew"] == 1


async def test_retention_deletes_in_chunks_only_old_rows(store_url: StoreTarget) -> None:
    """Rows older than the cutoff go, at most chunk_rows per call; newer ones stay."""
    rows = _rows(10, 10)  # ts_ms from 1.8e12 in 5 s steps
    async with Store(store_url) as store:
        await store.write_batch(rows)
        cutoff = round((1.8e9 + 5 * 6) * 1000)  # ticks 0..5 are older: 60 rows
        assert await store.delete_older_than(cutoff, 25) == 25
        assert await store.delete_older_than(cutoff, 25) == 25
        assert await store.delete_older_than(cutoff, 25) == 10
        assert await store.delete_older_than(cutoff, 25) == 0
    remaining = db_rows(store_url, "SELECT min(ts_ms), count(*) FROM samples")
    assert remaining == [(cutoff, 40)]


async def test_retention_keeps_a_late_arrival_whatever_its_day(store_url: StoreTarget) -> None:
    """Retention goes by arrival on both backends: a sample replayed from an agent's spool
    after a long outage (its time stamp three days old, its arrival now) stays until its
    arrival is older than the cutoff, even where (PostgreSQL) the day of its time stamp is a
    partition wholly before the cutoff; the day's sample that arrived then goes."""
    sim = FleetSimulator(2, gpus_per_node=2, seed=4, interval_s=5)
    now = 1.8e9
    old = now - 3 * 86_400
    on_time = sim.sample(0, old, 0)
    replayed = sim.sample(1, old, 0)
    rows = [
        sample_row(on_time, encode(on_time), old + 0.1),
        sample_row(replayed, encode(replayed), now),
    ]
    async with Store(store_url) as store:
        await store.write_batch(rows)
        cutoff = round((now - 86_400) * 1000)
        while await store.delete_older_than(cutoff, 25):
            pass
    assert db_rows(store_url, "SELECT node FROM samples") == [(replayed.node,)]


async def test_status_updates_merge_into_nodes(store_url: StoreTarget) -> None:
    """Status and inventory land in the nodes table; a later status replaces the earlier."""
    async with Store(store_url) as store:
        await store.write_batch([], [NodeUpdate("n1", status="online", status_ts=1.0)])
        await store.write_batch([], [NodeUpdate("n1", inventory=b"{}", inventory_ts=2.0)])
        await store.write_batch([], [NodeUpdate("n1", status="offline", status_ts=3.0)])
    assert db_rows(store_url, "SELECT status, status_ts, inventory FROM nodes") == [
        ("offline", 3.0, b"{}")
    ]


async def test_a_key_twice_in_one_batch_is_applied_row_by_row(store_url: StoreTarget) -> None:
    """A batch that names one key twice (the reader's session filters, remembered twice at a
    connection; two statuses of a node) is stored on both backends, its rows applied in
    order: PostgreSQL refuses an upsert that affects a row twice in one statement (it made
    the writer bisect valid batches); SQLite decides row by row."""
    news = [
        NodeUpdate("n1", status="online", status_ts=5.0),
        NodeUpdate("n1", status="offline", status_ts=7.0),
        NodeUpdate("n1", status="late", status_ts=6.0),  # older than the one before: kept out
    ]
    meta = [("test_filters", "a"), ("test_own", "x"), ("test_filters", "b")]
    async with Store(store_url) as store:
        await store.write_batch([], news, meta=meta)
    assert db_rows(store_url, "SELECT status, status_ts FROM nodes") == [("offline", 7.0)]
    assert sorted(db_rows(store_url, "SELECT key, value FROM meta WHERE key LIKE 'test_%'")) == [
        ("test_filters", "b"),
        ("test_own", "x"),
    ]


def _db_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".db")


async def test_readonly_store_opens_paths_with_uri_characters_read_only(tmp_path: Path) -> None:
    """'?' and '#' in the path are escaped: the right file opens, read-only."""
    db = tmp_path / "we?ird#name.db"
    async with Store(db) as store:
        await store.write_batch(_rows(1, 1))
    async with Store.open_readonly(db) as reader:
        assert (await reader.fetchall("SELECT count(*) AS n FROM samples"))[0]["n"] == 1
    assert _db_files(tmp_path) == ["we?ird#name.db"]


async def test_readonly_store_on_missing_file_says_what_to_do(tmp_path: Path) -> None:
    """A query before any collector ran gets one line with the fix."""
    with pytest.raises(StoreError, match="start `collector run` first or pass --db"):
        async with Store.open_readonly(tmp_path / "none.db"):
            pass


async def test_payloads_are_compressed_and_read_back_exactly(store_url: StoreTarget) -> None:
    """Stored payloads are zstd frames ~8x smaller; reading one gives the original JSON."""
    rows = _rows(5, 2)
    async with Store(store_url) as store:
        await store.write_batch(rows)
    # A reader (another process, the query commands) finds the dictionary in the store.
    with StoreReader(store_url) as reader:
        stored = reader.fetchall("SELECT node, ts_ms, payload, payload_dict FROM samples")
        assert len(stored) == 10
        originals = {(r.node, r.ts_ms): r.payload for r in rows}
        for r in stored:
            original = originals[(r["node"], r["ts_ms"])]
            assert len(r["payload"]) * 4 < len(original)
            assert reader.payload(r["payload"], r["payload_dict"]) == original


@pytest.mark.parametrize(("mode", "pragma"), [("full", 2), ("normal", 1)])
async def test_commits_are_durable_by_default(
    tmp_path: Path, mode: Synchronous, pragma: int
) -> None:
    """synchronous=FULL unless told otherwise: an acked sample survives a power cut."""
    async with Store(tmp_path / "c.db") as store:
        assert (await store.fetchall("PRAGMA synchronous"))[0][0] == 2
    async with Store(tmp_path / "d.db", synchronous=mode) as store:
        assert (await store.fetchall("PRAGMA synchronous"))[0][0] == pragma


async def test_a_deleted_database_file_is_fatal_not_written_into_the_void(tmp_path: Path) -> None:
    """SQLite would commit into the unlinked file; the store refuses, so nothing is acked."""
    db = tmp_path / "c.db"
    rows = _rows(2, 2)
    async with Store(db) as store:
        assert await store.write_batch(rows[:2]) == 2
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"c.db{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreError, match="database file is gone") as caught:
            await store.write_batch(rows[2:])
    assert caught.value.fatal
    assert caught.value.exit_code == 1


async def test_per_node_rejects_add_up_over_restarts_and_stay_bounded(
    store_url: StoreTarget,
) -> None:
    """Each flush adds its counts; only the most recently rejected pairs are kept."""
    db = store_url
    async with Store(db) as store:
        await store.write_counters({}, 1.0, {("n1", "invalid"): (2, 1000), ("n2", "x"): (1, 500)})
    async with Store(db) as store:  # a restarted collector
        await store.write_counters({}, 2.0, {("n1", "invalid"): (3, 2000), ("n3", "y"): (1, 900)})
        assert db_rows(db, "SELECT count(*) FROM node_rejects") == [(3,)]
        await store.write_counters({}, 3.0, keep_node_rejects=2)  # one pair trimmed
        assert db_rows(db, "SELECT count(*) FROM node_rejects") == [(2,)]
    assert db_rows(db, "SELECT node, reason, count, last_ms FROM node_rejects ORDER BY node") == [
        ("n1", "invalid", 5, 2000),
        ("n3", "y", 1, 900),
    ]


async def test_rejects_not_kept_are_counted_in_the_totals(store_url: StoreTarget) -> None:
    """write_batch(unkept=): rejected messages not kept in quarantine (QUARANTINE_PER_KEY)
    still count in quarantined_total and its reason's total; only the kept rows are
    written."""
    bad = QuarantineRow(1, "n1", "capwatch/v1/nodes/n1/sample", "invalid", "x", b"{", 1)
    async with Store(store_url) as store:
        await store.write_batch([], quarantine=[bad], unkept={"invalid": 4, "rate_limited": 7})
    assert db_rows(store_url, "SELECT count(*) FROM quarantine") == [(1,)]
    with StoreReader(store_url) as reader:
        c = reader.counters()
    assert c["quarantined_total"] == 12
    assert c["quarantined_total_invalid"] == 5
    assert c["quarantined_total_rate_limited"] == 7


async def test_counters_rejects_and_both_trims_are_one_transaction(
    store_url: StoreTarget,
) -> None:
    """The writer's counters flush: counters replaced, node rejects added, the quarantine
    and the node rejects trimmed, in one transaction; it returns the quarantined rows that
    went."""
    bad = QuarantineRow(1, "n1", "capwatch/v1/nodes/n1/sample", "invalid", "x", b"{", 1)
    async with Store(store_url) as store:
        await store.write_batch([], quarantine=[bad] * 5)
        await store.write_counters({"a": 1}, 1.0, {("n1", "invalid"): (2, 1000)})
        trimmed = await store.write_counters(
            {"a": 2, "b": 3},
            2.0,
            {("n1", "invalid"): (3, 2000), ("n2", "x"): (1, 500)},
            keep_quarantine=2,
            keep_node_rejects=1,
        )
    assert trimmed == 3
    assert db_rows(store_url, "SELECT count(*) FROM quarantine") == [(2,)]
    counters = "SELECT name, value FROM counters WHERE name IN ('a', 'b') ORDER BY name"
    assert db_rows(store_url, counters) == [("a", 2), ("b", 3)]
    assert db_rows(store_url, "SELECT node, reason, count, last_ms FROM node_rejects") == [
        ("n1", "invalid", 5, 2000)
    ]


async def test_postgresql_partitions_samples_by_day_and_drops_whole_days(
    postgres_url: str,
) -> None:
    """A day without a partition gets one before its batch (a late sample never fails);
    retention drops the days wholly past the cutoff and trims the partial one."""
    target = parse_target(postgres_url)
    day_s = 86_400
    first = (int(time.time()) // day_s - 5) * day_s  # midnight UTC five days ago
    sim = FleetSimulator(2, gpus_per_node=2, seed=4, interval_s=5)
    rows = []
    for d in range(3):
        for i in range(2):
            s = sim.sample(i, first + d * day_s + 3600, d)
            rows.append(sample_row(s, encode(s), first + d * day_s + 3600.1))
    async with Store(target) as store:
        assert await store.write_batch(rows) == 6
        names = [r[0] for r in db_rows(target, _PARTITIONS)]
        days = [time.strftime("%Y%m%d", time.gmtime(first + d * day_s)) for d in range(3)]
        assert {f"samples_d{d}" for d in days} <= set(names)
        cutoff_ms = (first + day_s + 7200) * 1000  # day 0 wholly before, day 1 in part
        await store.delete_older_than(cutoff_ms, 100)
        names = [r[0] for r in db_rows(target, _PARTITIONS)]
        assert f"samples_d{days[0]}" not in names
        assert f"samples_d{days[1]}" in names  # partly inside the window: trimmed
        left = db_rows(target, "SELECT ts_ms FROM samples ORDER BY ts_ms")
        assert left == [((first + 2 * day_s + 3600) * 1000,)] * 2
        assert await store.write_batch(rows[:2]) == 2  # a late day again: on demand


_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'samples'::regclass ORDER BY 1"
)


async def test_a_store_that_cannot_be_opened_starts_no_connection_thread(tmp_path: Path) -> None:
    """``collector run --db DIRECTORY``: aiosqlite started its connection thread, the
    connect failed, and the thread was only asked to stop; the command printed its one
    line and closed the event loop, and the thread, stopping after that, printed two
    'Event loop is closed' tracebacks (most runs on this machine). No thread is started for
    a store that cannot be opened, so none can outlive the loop."""
    started: set[str] = set()

    def seen(*_: object) -> None:
        started.add(threading.current_thread().name)

    threading.setprofile(seen)
    try:
        with pytest.raises(StoreError, match="is a folder, not a database file"):
            async with Store(parse_target(str(tmp_path))):
                pass
    finally:
        threading.setprofile(None)
    assert not [name for name in started if "connection_worker" in name]


async def test_opening_cancelled_at_any_point_leaves_no_connection(store_url: StoreTarget) -> None:
    """A read-only store whose opening is cancelled (a delivery stopped while it rescans the
    outbox) closes what it had opened: no connection, and no thread of one, is left behind.
    SQLite's connection thread is not a daemon, so one left open would also keep the process
    from exiting."""
    async with Store(store_url):
        pass
    before = threading.active_count()
    for steps in range(60):

        async def enter() -> None:
            async with Store.open_readonly(store_url):
                await asyncio.sleep(3600)

        task = asyncio.create_task(enter())
        await asyncio.sleep(steps * 1e-4)  # 0 to 6 ms: each step of an opening in turn
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await wait_until(
            lambda: threading.active_count() <= before,
            what=f"no connection thread left after a cancel at step {steps}",
        )


async def test_each_sample_column_holds_its_field(store_url: StoreTarget) -> None:
    """A stored sample's columns are its row's fields, in order (the payload as stored,
    the codec's row beside it), whether its optional fields are set or not, in some rows
    of a batch or in none (SQLite: bound as NaN, stored as NULL)."""
    rows = _rows(3, 2)
    rows[1] = rows[1]._replace(epoch=7, node_power_w=812.5, node_power_source="redfish")
    rows[4] = rows[4]._replace(cpu_pct=None, gpu_util_pct=None, cpu_power_w=None, epoch=0)
    rows[5] = rows[5]._replace(cpu_pct=None, gpu_util_pct=None, cpu_power_w=None)
    assert {r.epoch for r in rows[4:]} == {0, None}
    async with Store(store_url) as store:
        assert await store.write_batch(rows[:4]) == 4
        assert await store.write_batch(rows[4:]) == 2  # only None but in one column
        assert await store.write_batch(rows[5:]) == 0
        assert await store.write_batch([rows[5]._replace(ts_ms=rows[5].ts_ms + 1)]) == 1
        rows.append(rows[5]._replace(ts_ms=rows[5].ts_ms + 1))
    names = Store.sample_columns()
    kept = [n for n in names if n not in ("payload", "payload_dict")]
    with StoreReader(store_url) as reader:
        stored = reader.fetchall(f"SELECT {', '.join(names)} FROM samples ORDER BY node, ts_ms")
        dicts = {int(r[0]) for r in reader.fetchall("SELECT id FROM payload_dicts")}
        for r, want in zip(stored, sorted(rows, key=lambda r: (r.node, r.ts_ms)), strict=True):
            assert [r[n] for n in kept] == [getattr(want, n) for n in kept]
            assert [r[n] is None for n in kept] == [getattr(want, n) is None for n in kept]
            assert r["payload_dict"] in dicts
            assert reader.payload(r["payload"], r["payload_dict"]) == want.payload


async def test_bytes_and_none_are_bound_without_an_adapter_search(tmp_path: Path) -> None:
    """The writer's connection binds bytes and None through identity adapters
    (:func:`collector.store.connect.bind_plainly`: sqlite3 otherwise searches, and fails
    to find, an adapter for each such parameter); the values stored are the same."""
    async with Store(tmp_path / "c.db") as store:
        await store.execute("CREATE TABLE t (b BLOB, n BLOB)")
        await store.execute("INSERT INTO t VALUES (?, ?)", (b"\x00\xffx", None))
        assert [tuple(r) for r in await store.fetchall("SELECT b, n FROM t")] == [
            (b"\x00\xffx", None)
        ]
    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)] is bytes
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None


async def test_batches_of_any_size_insert_their_samples_in_few_statement_sizes(
    tmp_path: Path,
) -> None:
    """SQLite parses a multi-row statement in more instructions than it inserts its rows,
    and keeps a connection's last 128 prepared: batches of 48 sizes insert their samples in
    statements of powers of two rows (each parsed once), every row stored once."""
    rows = _rows(40, 30)
    sizes: list[int] = []

    def traced(sql: str) -> None:
        if sql.startswith("INSERT INTO samples"):
            sizes.append(sql.count("), (") + 1)

    async with Store(tmp_path / "c.db") as store:
        await store.conn.set_trace_callback(traced)
        start = 0
        for n in range(1, 49):
            assert await store.write_batch(rows[start : start + n]) == n
            start += n
    assert count_samples(tmp_path / "c.db") == start == sum(sizes)
    assert set(sizes) == {1, 2, 4, 8, 16, 32}
