"""A query written once gives the same answer on every connection of the store."""

from __future__ import annotations

import threading
from typing import Any

from collector.governance.quota import Quota
from collector.paths import StoreTarget
from collector.store.command import Command
from collector.store.db import Store
from collector.store.governance import generation, governance, usage_snapshot
from collector.store.query import single
from collector.store.reader import StoreReader
from collector.store.usage import gpu_hours_in


async def test_reader_command_and_collector_read_the_same_governance(
    store_url: StoreTarget,
) -> None:
    db = store_url
    async with Store(db) as store:
        assert await store.run(generation()) == ""
        assert await store.run(usage_snapshot()) is None
    with Command(db, now=1.0) as tx:
        tx.governance.put_tenant("t", "c", 3)
        tx.governance.put_quota("t", "gpus", Quota(8.0, None, None))
    with StoreReader(db) as reader:
        from_reader = reader.run(governance())
        hours_reader = reader.run(gpu_hours_in(["a", "b"], 0.0, 10.0))
    with Command(db) as tx:
        from_command = tx.run(governance())
        tx.discard()
    async with Store(db) as store:
        from_store = await store.run(governance())
        assert await store.run(generation()) == from_store.generation != ""
        assert await store.run(gpu_hours_in(["a", "b"], 0.0, 10.0)) == hours_reader == 0.0
    assert from_reader == from_command == from_store
    assert from_store.tenants == {"t": "c"}
    assert from_store.quotas[("t", "gpus")].quota.nominal == 8.0


async def test_the_collector_builds_a_large_answer_in_a_worker_thread(
    store_url: StoreTarget,
) -> None:
    """``build_in_thread``: the same answer, what the rows become made off the loop's thread
    (the usage ledger's 12,500 nodes' hardware and rollups)."""
    builders: list[int] = []

    def build(rows: list[Any]) -> list[str]:
        builders.append(threading.get_ident())
        return [str(r[0]) for r in rows]

    query = single("SELECT key FROM meta ORDER BY key", (), build)
    async with Store(store_url) as store:
        await store.write_batch([], meta=[("a", "1"), ("b", "2")])
        assert await store.run(query, build_in_thread=True) == await store.run(query)
    loop_thread = threading.get_ident()
    assert builders[1] == loop_thread
    assert builders[0] != loop_thread
