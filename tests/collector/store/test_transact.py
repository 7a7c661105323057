"""A write transaction as one call in the store's thread (:meth:`Store.transact`): all or
nothing, the same errors as :meth:`Store.transaction`, the fence (both backends)."""

from __future__ import annotations

import threading
from pathlib import Path

import aiosqlite
import pytest

from collector.paths import StoreTarget, parse_target
from collector.store.db import Store
from collector.store.writes import Tx
from shared.errors import NotLeaderError, StoreError
from tests.collector.store.test_fenced_store import _two_terms

_META = ("INSERT INTO meta (key, value, updated)", 3, "")


def _keys(tx: Tx) -> list[str]:
    return [str(r[0]) for r in tx.fetchall("SELECT key FROM meta WHERE key LIKE 't%' ORDER BY key")]


async def test_aiosqlite_still_runs_a_function_in_the_connections_thread(tmp_path: Path) -> None:
    """The SQLite store runs a transaction through aiosqlite's private
    ``Connection._execute`` (omnilib/aiosqlite#19): a release without it fails here."""
    assert callable(getattr(aiosqlite.Connection, "_execute", None)), (
        "this aiosqlite has no Connection._execute: collector/store/db.py (_Sqlite.call) "
        "needs another way to run a function in the connection's thread"
    )
    async with Store(tmp_path / "c.db") as store:
        ident, keys = await store.transact("a test", lambda tx: (threading.get_ident(), _keys(tx)))
    assert ident != threading.get_ident()
    assert keys == []


async def test_transact_commits_all_of_it_or_nothing(store_url: StoreTarget) -> None:
    """A function that fails after its first statement leaves nothing written; the error is
    a refused write (the writer bisects), and the next transaction commits."""

    def half(tx: Tx) -> None:
        tx.insert_many(_META, [("t1", "a", 1.0)])
        raise ValueError("half way")

    async with Store(store_url) as store:
        with pytest.raises(StoreError, match=r"a test failed in .*half way") as info:
            await store.transact("a test", half)
        assert not info.value.fatal
        assert not info.value.unavailable
        written = await store.transact(
            "a test", lambda tx: tx.insert_many(_META, [("t2", "b", 1.0), ("t3", "c", 1.0)])
        )
        assert written == 2
        assert await store.transact("a test", _keys) == ["t2", "t3"]
        assert await store.meta("t1") is None


async def test_a_statement_the_store_refuses_rolls_the_transaction_back(
    store_url: StoreTarget,
) -> None:
    """A constraint the store enforces (NOT NULL) refuses the write, not fatal; what the
    transaction wrote before it is gone."""

    def bad(tx: Tx) -> None:
        tx.insert_many(_META, [("t1", "a", 1.0)])
        tx.insert_many(_META, [("t2", None, 1.0)])

    async with Store(store_url) as store:
        with pytest.raises(StoreError, match="a test failed") as info:
            await store.transact("a test", bad)
        assert not info.value.fatal
        assert await store.transact("a test", _keys) == []


async def test_transact_on_a_deleted_sqlite_file_is_fatal(tmp_path: Path) -> None:
    """The file gone, nothing may be committed into the unlinked inode: fatal, not bisected."""
    db = tmp_path / "c.db"
    async with Store(db) as store:
        db.unlink()
        with pytest.raises(StoreError, match="the database file is gone") as info:
            await store.transact("a test", lambda tx: tx.insert_many(_META, [("t1", "a", 1.0)]))
        assert info.value.fatal


@pytest.mark.integration
async def test_a_deposed_leaders_transact_writes_nothing(postgres_url: str) -> None:
    """Under a fence whose term has ended, the token check in the same call refuses the
    transaction with NotLeaderError; the new term's goes in."""
    async with Store(parse_target(postgres_url)) as store:
        old, new = await _two_terms(postgres_url)
        with store.fenced(old.token), pytest.raises(NotLeaderError):
            await store.transact("a test", lambda tx: tx.insert_many(_META, [("t1", "a", 1.0)]))
        with store.fenced(new.token):
            await store.transact("a test", lambda tx: tx.insert_many(_META, [("t2", "b", 1.0)]))
        assert await store.transact("a test", _keys) == ["t2"]
