"""The one opener and the one command transaction, on real SQLite files and a real
PostgreSQL (``store_url``)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from collector.paths import StoreTarget
from collector.store.command import Command
from collector.store.db import Store
from collector.store.governance import GENERATION_KEY
from collector.store.reader import StoreReader
from collector.store.silences import add_silence
from shared.errors import ConfigError, StoreError
from tests.helpers import db_rows


async def _store(db: StoreTarget) -> StoreTarget:
    async with Store(db):
        pass
    return db


def _fail_after_a_write(db: StoreTarget) -> None:
    with Command(db, now=4.0) as tx:
        tx.execute("INSERT INTO pools (name, created) VALUES ('d', 4)")
        tx.bump_generation()
        raise RuntimeError("boom")


def _create_pool_without_budget(db: StoreTarget) -> None:
    with Command(db, now=1.0, lock_budget_s=0.0) as tx:
        tx.pools.create("p")


def _insert_two(db: StoreTarget, insert: str) -> None:
    with Command(db) as tx:
        tx.execute(insert, ("y", 2))
        tx.execute(insert, ("x", 3))


def _generation(db: StoreTarget) -> list[tuple[object, ...]]:
    return db_rows(db, "SELECT value FROM meta WHERE key = ?", (GENERATION_KEY,))


async def test_every_way_in_says_the_same_line_for_a_missing_store(tmp_path: Path) -> None:
    """Reader, command and the collector's read-only store refuse a missing file alike,
    and create nothing."""
    db = tmp_path / "none.db"
    messages = []
    with pytest.raises(StoreError) as read:
        StoreReader(db).__enter__()
    messages.append(str(read.value))
    with pytest.raises(StoreError) as write:
        Command(db).__enter__()
    messages.append(str(write.value))
    with pytest.raises(StoreError) as daemon:
        await Store.open_readonly(db).__aenter__()
    messages.append(str(daemon.value))
    assert len(set(messages)) == 1
    assert messages[0].startswith(f"no capwatch database at {str(db)!r}")
    assert not db.exists()


async def test_a_foreign_file_is_not_a_capwatch_database_to_reads_and_writes(
    tmp_path: Path,
) -> None:
    """A SQLite file without our tables: the reader and a command alike say it is not a
    capwatch database (the command said 'has no silences table yet: start this version's
    `collector run` once', which would write capwatch's tables into another file)."""
    db = tmp_path / "other.db"
    sqlite3.connect(db).close()
    with StoreReader(db) as reader, pytest.raises(StoreError, match="not a capwatch database"):
        reader.fetchall("SELECT * FROM samples")
    with pytest.raises(StoreError, match="not a capwatch database"):
        add_silence(db, ["a=b"], 1.0, 2.0, comment="", author="t")


async def test_another_programs_migration_record_is_not_a_newer_capwatch(
    tmp_path: Path,
) -> None:
    """A SQLite file whose own ``schema_migrations`` holds a ``name`` capwatch never had (and
    not capwatch's first migration) is another program's: a command, the reader and the
    collector's start say it is not a capwatch database, not that a newer capwatch migrated
    it (whose fix, to install a newer version, would not help)."""
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE schema_migrations (name TEXT)")
        conn.execute("INSERT INTO schema_migrations VALUES ('2024_init')")
    conn.close()
    with pytest.raises(StoreError, match="not a capwatch database"):
        add_silence(db, ["a=b"], 1.0, 2.0, comment="", author="t")
    with StoreReader(db) as reader, pytest.raises(StoreError, match="not a capwatch database"):
        reader.fetchall("SELECT * FROM samples")
    with pytest.raises(StoreError, match="not a capwatch database"):
        async with Store(db):
            pass
    assert db_rows(db, "SELECT name FROM schema_migrations") == [("2024_init",)]


async def test_the_generation_moves_only_with_a_commit_that_asked_for_it(
    store_url: StoreTarget,
) -> None:
    db = await _store(store_url)
    with Command(db, now=1.0) as tx:
        tx.execute("INSERT INTO pools (name, created) VALUES ('a', 1)")
    assert _generation(db) == []
    with Command(db, now=2.0) as tx:
        tx.execute("INSERT INTO pools (name, created) VALUES ('b', 2)")
        tx.bump_generation()
    first = _generation(db)
    assert len(first) == 1
    with Command(db, now=3.0) as tx:
        tx.execute("INSERT INTO pools (name, created) VALUES ('c', 3)")
        tx.bump_generation()
        tx.discard()
    with pytest.raises(RuntimeError):
        _fail_after_a_write(db)
    assert _generation(db) == first
    assert db_rows(db, "SELECT name FROM pools ORDER BY name") == [("a",), ("b",)]


async def test_only_governance_writes_move_the_generation(store_url: StoreTarget) -> None:
    """Reading the governance state or moving unleased nodes between pools leaves the
    generation (the collector's cue to reload leases and quotas) where it was; a tenant's
    write moves it, a declared inventory too (a leased node's GPUs count from it)."""
    db = await _store(store_url)
    with Command(db, now=1.0) as tx:
        assert tx.governance.state().tenants == {}
        tx.pools.create("p")
        assert tx.pools.move(["n1"], "p", "test") == {}
    assert _generation(db) == []
    with Command(db, now=2.0) as tx:
        tx.governance.put_tenant("t", None, 0)
    first = _generation(db)
    assert len(first) == 1
    with Command(db, now=3.0) as tx:
        tx.pools.declare_inventories([("n1", b"{}")])
    assert _generation(db) not in ([], first)


async def test_a_tenant_written_without_a_comment_keeps_its_comment(
    store_url: StoreTarget,
) -> None:
    """``quota set`` and ``apply`` write a tenant's cohort and priority and give no comment:
    the stored one was overwritten with "". Not given, it is kept; given, even "", it is
    replaced (as a lease's, :meth:`~collector.store.governance.GovernanceWrites.update_lease`)."""
    db = await _store(store_url)
    with Command(db, now=1.0) as tx:
        tx.governance.put_tenant("t", None, 0, comment="lab A's share")
    with Command(db, now=2.0) as tx:
        tx.governance.put_tenant("t", "research", 5)
    assert db_rows(db, "SELECT cohort, priority, comment FROM tenants") == [
        ("research", 5, "lab A's share")
    ]
    with Command(db, now=3.0) as tx:
        tx.governance.put_tenant("t", None, 0, comment="")
        tx.governance.put_tenant("u", None, 0)
    assert db_rows(db, "SELECT name, comment FROM tenants ORDER BY name") == [("t", ""), ("u", "")]


async def test_a_pool_change_past_the_lock_budget_changes_nothing(store_url: StoreTarget) -> None:
    """Pool commands run in the same command transaction: its lock budget holds for them."""
    db = await _store(store_url)
    with pytest.raises(StoreError, match="held the database's write lock for over 0 s"):
        _create_pool_without_budget(db)
    assert db_rows(db, "SELECT name FROM pools") == []


async def test_a_refused_statement_is_one_store_error(store_url: StoreTarget) -> None:
    db = await _store(store_url)
    insert = "INSERT INTO pools (name, created) VALUES (?, ?)"
    with Command(db) as tx:
        tx.execute(insert, ("x", 1))
    with (
        pytest.raises(StoreError, match=r"cannot write .*(UNIQUE constraint|duplicate key)"),
        Command(db) as tx,
    ):
        tx.execute(insert, ("x", 2))
    big = "INSERT INTO lease_nodes (lease_id, node) VALUES (?, 'n')"  # a 64-bit column
    with pytest.raises(StoreError, match="too large"), Command(db) as tx:
        tx.execute(big, (1 << 70,))
    assert db_rows(db, "SELECT name, created FROM pools") == [("x", 1)]
    with pytest.raises(StoreError) as caught:
        _insert_two(db, insert)
    assert "\n" not in str(caught.value)  # PostgreSQL's DETAIL line left out
    assert db_rows(db, "SELECT name FROM pools") == [("x",)]


async def test_two_commands_never_interleave(store_url: StoreTarget) -> None:
    """A second command waits for the first one's commit (SQLite's write lock, PostgreSQL's
    advisory lock): its check sees the first one's write."""
    db = await _store(store_url)
    order: list[str] = []
    first = Command(db, now=1.0).__enter__()
    first.execute("INSERT INTO pools (name, created) VALUES ('a', 1)")

    def second() -> None:
        with Command(db, now=2.0) as tx:
            order.append(f"second sees {len(tx.fetchall('SELECT name FROM pools'))}")

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # waiting for the first one's lock
    order.append("first commits")
    first.__exit__(None, None, None)
    thread.join(10)
    assert order == ["first commits", "second sees 1"]


async def test_text_with_a_nul_is_refused_alike_on_both_backends(store_url: StoreTarget) -> None:
    """PostgreSQL cannot keep a NUL in text; SQLite can. A comment or a reason with one (a
    TOML file's "\\u0000", a script's argument) was stored on SQLite, refused on PostgreSQL,
    and then stopped `collector migrate` of that SQLite store: both refuse it, one line
    naming the value, nothing written."""
    db = await _store(store_url)
    with pytest.raises(ConfigError) as caught, Command(db, now=1.0) as tx:
        tx.pools.create("p", "row 3\x00 cooling")
    message = str(caught.value)
    assert "\n" not in message
    assert "NUL" in message
    assert "'row 3\\x00 cooling'" in message
    assert db_rows(db, "SELECT name FROM pools") == []
    with Command(db, now=2.0) as tx:
        tx.pools.create("p", "row 3 cooling")  # the same without it
    assert db_rows(db, "SELECT name, comment FROM pools") == [("p", "row 3 cooling")]


async def test_a_store_a_newer_capwatch_migrated_is_refused_by_the_collector_and_commands(
    store_url: StoreTarget,
) -> None:
    """A store whose record holds a migration this code does not have (a newer capwatch
    migrated it) is refused, exit 2, naming the migration: by the collector's start, which
    would write it by the older rules, and by a write command; the store is untouched. A
    read command still reads it. Both were silent: the old code wrote on."""
    db = await _store(store_url)
    with Command(db, now=1.0) as tx:
        tx.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_future', 2)")
    with pytest.raises(StoreError) as start:
        async with Store(db):
            pass
    with pytest.raises(StoreError) as write, Command(db, now=3.0) as tx:
        tx.pools.create("p")
    for err in (start.value, write.value):
        assert err.exit_code == 2
        assert "migrated by a newer capwatch (9999_future," in str(err), err
    assert db_rows(db, "SELECT name FROM pools WHERE name = 'p'") == []
    with StoreReader(db) as reader:
        assert reader.fetchall("SELECT name FROM schema_migrations WHERE name = '9999_future'")
