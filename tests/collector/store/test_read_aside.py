"""A read beside the writer (:meth:`Store.read_aside`): on a connection of its own, in a
worker thread, so the store's one thread goes on committing while it runs (both backends)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from collector.paths import StoreTarget
from collector.store.db import Store
from collector.store.reader import StoreReader
from shared.errors import StoreError

_META = ("INSERT INTO meta (key, value, updated)", 3, "")


async def test_the_writer_commits_while_a_read_aside_is_still_running(
    store_url: StoreTarget,
) -> None:
    """A read held open (the ledger's, at 12,500 nodes, took 1.24 s under load) does not
    hold the store's thread: transactions commit meanwhile, and the read sees the snapshot
    it began with."""
    reading = threading.Event()
    release = threading.Event()

    def slow_read(reader: StoreReader) -> tuple[int, int]:
        before = reader.fetchall("SELECT count(*) FROM meta WHERE key LIKE 'ra%'")[0][0]
        reading.set()
        assert release.wait(30), "the test never released the read"
        after = reader.fetchall("SELECT count(*) FROM meta WHERE key LIKE 'ra%'")[0][0]
        return int(before), int(after)

    async with Store(store_url) as store:
        read = asyncio.create_task(store.read_aside(slow_read))
        assert await asyncio.to_thread(reading.wait, 30)
        # On the store's own thread this would wait for the read: the test times out.
        written = await asyncio.wait_for(
            store.transact("a test", lambda tx: tx.insert_many(_META, [("ra1", "x", 1.0)])),
            timeout=10,
        )
        assert written == 1
        assert await store.meta("ra1") == "x"
        release.set()
        assert await read == (0, 0)  # one snapshot: the commit came after it began
        later = await store.read_aside(
            lambda r: r.fetchall("SELECT value FROM meta WHERE key = 'ra1'")[0][0]
        )
        assert later == "x"


async def test_a_failed_read_aside_is_a_store_error(store_url: StoreTarget) -> None:
    """A query the store refuses is the store's error (the evaluator logs and counts it),
    not a crash of the job."""
    async with Store(store_url) as store:
        with pytest.raises(StoreError, match="no_such_column"):
            await store.read_aside(lambda r: r.fetchall("SELECT no_such_column FROM meta"))
