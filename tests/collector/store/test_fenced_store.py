"""A leader's records fenced in their own transaction on the real PostgreSQL store, the
delivery's claim of the outbox, and node news that only move forward (both backends)."""

from __future__ import annotations

import pytest

from collector.governance.job import UsageRecord
from collector.ingest.writer import Record
from collector.paths import StoreTarget, parse_target
from collector.role import Fence, FencedRecords
from collector.store.alerts import OutboxNew, pending_outbox, write_alerts
from collector.store.db import NodeUpdate, Store
from collector.store.governance import USAGE_KEY
from collector.store.leader import LeaderLease, Lease
from shared.errors import NotLeaderError
from tests.collector.store.test_leader import acquire_when_free

pytestmark = pytest.mark.integration


class _Queue:
    """The writer's queue as the jobs see it: what they put, for the test to write."""

    def __init__(self) -> None:
        self.items: list[Record] = []

    async def put(self, item: Record, /) -> None:
        self.items.append(item)


async def _two_terms(url: str) -> tuple[Lease, Lease]:
    """a's term (1 s), then b's once a's has ended: a is deposed."""
    async with LeaderLease(url) as a, LeaderLease(url) as b:
        old = await a.try_acquire("a", ttl_s=1.0)
        assert old is not None
        new = await acquire_when_free(b, "b", ttl_s=30.0)
    return old, new


async def _write_fenced(store: Store, fence: Fence, record: Record) -> None:
    queue = _Queue()
    await FencedRecords(queue, fence).put(record)
    (fenced,) = queue.items
    await fenced.write(store)  # as the writer does


async def test_a_deposed_leaders_record_is_refused_in_its_own_transaction(
    postgres_url: str,
) -> None:
    """The old term's fence is still open in this process (it has not noticed), yet the
    store refuses its record: the token check runs in the record's transaction. The term
    is then closed; the new leader's record goes in."""
    target = parse_target(postgres_url)
    async with Store(target) as store:
        old, new = await _two_terms(postgres_url)
        stale = Fence(old.token)
        await _write_fenced(store, stale, UsageRecord("from-a"))
        assert await store.meta(USAGE_KEY) is None
        assert not stale.active  # nothing more is queued in that term
        await _write_fenced(store, Fence(new.token), UsageRecord("from-b"))
        assert await store.meta(USAGE_KEY) == "from-b"
        with pytest.raises(NotLeaderError), Store.fenced(old.token):
            await write_alerts(store, [], 3600.0)


async def test_a_fence_outside_the_store_checks_nothing(postgres_url: str) -> None:
    """A lease kept in another database (``election.url``): the store has no row to check."""
    target = parse_target(postgres_url)
    async with Store(target) as store:
        await _write_fenced(store, Fence(7, in_store=False), UsageRecord("x"))
        assert await store.meta(USAGE_KEY) == "x"


async def test_the_outbox_claim_reads_nothing_for_a_deposed_leader(postgres_url: str) -> None:
    """The delivery's claim (pending rows read with the term's token in one snapshot): the
    old term reads none, the new one every pending row with its Idempotency-Key."""
    target = parse_target(postgres_url)
    async with Store(target) as store:
        old, new = await _two_terms(postgres_url)
        note = OutboxNew("uuid-1", "hook", "fp", "r", "firing", "{}", 1.0, 1e12)
        with Store.fenced(new.token):
            await write_alerts(store, [], 3600.0, [note], 1.0)
    async with Store.open_readonly(target) as reader:
        assert await pending_outbox(reader, old.token) == []
        (row,) = await pending_outbox(reader, new.token)
        assert row.uuid == "uuid-1"
        assert [e.uuid for e in await pending_outbox(reader)] == ["uuid-1"]


@pytest.mark.parametrize("order", ["newer_last", "newer_first"])
async def test_node_news_only_move_forward(store_url: StoreTarget, order: str) -> None:
    """Two collectors commit one node's status and inventory in either order: the newer
    (by the message's time) stays. Both backends."""
    older = NodeUpdate("n1", "old-status", 100.0, b"old-inv", 100.0)
    newer = NodeUpdate("n1", "new-status", 200.0, b"new-inv", 200.0)
    first, last = (older, newer) if order == "newer_last" else (newer, older)
    async with Store(store_url) as store:
        await store.write_batch([], [first], ["n1"])
        await store.write_batch([], [last])
        rows = await store.fetchall(
            "SELECT status, status_ts, inventory, inventory_ts FROM nodes WHERE node = ?",
            ("n1",),
        )
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows] == [
        ("new-status", 200.0, b"new-inv", 200.0)
    ]


async def test_a_leaders_record_in_parts_is_written_part_by_part_under_its_fence(
    postgres_url: str,
) -> None:
    """The fence passes on 'parts remain': the writer calls the fenced ledger record again
    until its last part, each part checked in its own transaction."""
    from collector.governance.ledger import LedgerRecord  # noqa: PLC0415
    from collector.store.ledger import ledger_parts  # noqa: PLC0415
    from tests.collector.store.test_ledger_parts import HOURS, NODES, _rows  # noqa: PLC0415

    target = parse_target(postgres_url)
    async with Store(target) as store, LeaderLease(postgres_url) as lease:
        term = await acquire_when_free(lease, "a", ttl_s=30.0)
        record = LedgerRecord(
            ledger_parts(HOURS, _rows(HOURS, NODES, 1.0), [], 5.0, until=5.0, most_rows=3)
        )
        queue = _Queue()
        await FencedRecords(queue, Fence(term.token)).put(record)
        (fenced,) = queue.items
        calls = 1
        while await fenced.write(store):
            calls += 1
        assert calls == len(record.parts) > 2
        assert await store.meta("ledger_at") == "5.0"
