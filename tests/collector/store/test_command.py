"""The one opener and the one command transaction, on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.store.command import GENERATION_KEY, Command
from collector.store.db import Store
from collector.store.pools import pool_transaction
from collector.store.reader import StoreReader
from collector.store.silences import add_silence
from shared.errors import StoreError
from tests.helpers import db_rows


async def _store(tmp_path: Path) -> Path:
    db = tmp_path / "c.db"
    async with Store(db):
        pass
    return db


def _fail_after_a_write(db: Path) -> None:
    with Command(db, now=4.0) as tx:
        tx.execute("INSERT INTO pools (name, created) VALUES ('d', 4)")
        tx.bump_generation()
        raise RuntimeError("boom")


def _create_pool_without_budget(db: Path) -> None:
    with pool_transaction(db, 1.0) as tx:
        tx.tx.lock_budget_s = 0.0
        tx.create("p")


def _generation(db: Path) -> list[tuple[object, ...]]:
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


async def test_a_foreign_file_names_the_table_the_command_needs(tmp_path: Path) -> None:
    """A SQLite file without our tables: the reader says it is not a capwatch database, a
    command says which table is missing and how to get it."""
    db = tmp_path / "other.db"
    sqlite3.connect(db).close()
    with StoreReader(db) as reader, pytest.raises(StoreError, match="not a capwatch database"):
        reader.fetchall("SELECT * FROM samples")
    with pytest.raises(StoreError, match="has no silences table yet"):
        add_silence(db, ["a=b"], 1.0, 2.0, comment="", author="t")


async def test_the_generation_moves_only_with_a_commit_that_asked_for_it(
    tmp_path: Path,
) -> None:
    db = await _store(tmp_path)
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


async def test_a_pool_change_past_the_lock_budget_changes_nothing(tmp_path: Path) -> None:
    """Pool commands run in the same command transaction: its lock budget holds for them."""
    db = await _store(tmp_path)
    with pytest.raises(StoreError, match="held the database's write lock for over 0 s"):
        _create_pool_without_budget(db)
    assert db_rows(db, "SELECT name FROM pools") == []


async def test_a_refused_statement_is_one_store_error(tmp_path: Path) -> None:
    db = await _store(tmp_path)
    insert = "INSERT INTO pools (name, created) VALUES (?, ?)"
    with Command(db) as tx:
        tx.execute(insert, ("x", 1))
    with pytest.raises(StoreError, match=r"cannot write .*UNIQUE constraint"), Command(db) as tx:
        tx.execute(insert, ("x", 2))
    with pytest.raises(StoreError, match="too large"), Command(db) as tx:
        tx.execute(insert, ("y", 1 << 70))
    assert db_rows(db, "SELECT name, created FROM pools") == [("x", 1)]
