"""The writer's pickup of the nodes ``collector inventory forget`` forgot, against messages
of theirs the reader validated before it: what the live view dropped at the pickup, the
store does not keep either (each backend). A message validated after it is a new node, in
both."""

from __future__ import annotations

import asyncio

from agent.simulate import FleetSimulator
from collector.ingest.reader import MetaItem, StopUnit, Unit
from collector.ingest.validate import Ingestor, Item
from collector.ingest.watermark import Watermarks
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.store.command import Command
from collector.store.db import Store
from collector.store.forget import forget_nodes, last_forgotten, remembered_at_start
from shared.clock import FakeClock
from shared.schema import NodeStatus, encode
from shared.topics import sample_topic, status_topic
from tests.helpers import db_rows, wait_until

T0 = 1_800_000_000.0


class _Fleet:
    """One node's messages, validated by the ingestor as the reader does (the live view
    takes each), and the writer that stores them."""

    def __init__(self, store: Store, forgotten_id: int) -> None:
        self.clock = FakeClock(start_wall=T0)
        self.view = LiveView()
        self.ingestor = Ingestor(self.clock, live=self.view)
        self.queue: asyncio.Queue[WriterItem] = asyncio.Queue()
        self.writer = Writer(
            store,
            self.queue,
            self.ingestor,
            self.clock,
            retention_s=1e9,
            watermarks=Watermarks(hole_s=60.0),
            forgotten_id=forgotten_id,
            forget_check_s=1e9,  # the test calls the pickup
        )
        self.sim = FleetSimulator(1, gpus_per_node=2, seed=3, interval_s=1, epoch=1)
        self.node = self.sim.node_ids[0]
        self.seq = 0

    def validate(
        self, *, status: str | None = None, sample: bool = False, hold: bool = False
    ) -> Unit:
        """The node's messages, validated and queued for the writer (``hold``: returned
        instead, as the reader holds a unit while the queue has no room)."""
        now = self.clock.time()
        items: list[Item | MetaItem] = []
        if status is not None:
            st = NodeStatus(v=1, node=self.node, status=status, ts=now)  # type: ignore[arg-type]
            items.append(self.ingestor.handle(status_topic(self.node), encode(st)))
        if sample:
            payload = encode(self.sim.sample(0, now - 0.5, self.seq))
            self.seq += 1
            items.append(self.ingestor.handle(sample_topic(self.node), payload))
        unit = Unit(None, items)
        if not hold:
            self.queue.put_nowait(unit)
        self.clock.advance(1.0)
        return unit

    async def write(self) -> None:
        """The writer stores what is queued, then stops."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(StopUnit(done))
        await asyncio.wait_for(self.writer.run(), 20)


def _forget(db: StoreTarget, node: str, *, at: float | None = None) -> None:
    with Command(db, now=at) as tx:
        forget_nodes(tx, [node])


def _in_store(db: StoreTarget, node: str) -> bool:
    return bool(db_rows(db, "SELECT 1 FROM nodes WHERE node = ?", (node,)))


async def test_a_message_stored_after_the_forget_but_before_the_pickup_is_dropped_with_it(
    store_url: StoreTarget,
) -> None:
    """The agent's offline status (its stop, just before a --force forget) stored between
    the command's commit and the writer's pickup wrote the node's ``nodes`` row again: the
    pickup drops the node from the live view, and its row goes too (it stayed: the node was
    listed, and the next collector loaded it back, NodeOffline firing for a decommissioned
    node)."""
    async with Store(store_url) as store:
        fleet = _Fleet(store, await store.run(last_forgotten()))
        fleet.validate(status="online", sample=True)
        await fleet.write()
        assert _in_store(store_url, fleet.node)
        _forget(store_url, fleet.node)
        fleet.validate(status="offline")
        await fleet.write()
        assert _in_store(store_url, fleet.node)  # what the pickup must undo
        assert await fleet.writer.forget_nodes() == [fleet.node]
        assert fleet.node not in fleet.view
        assert not _in_store(store_url, fleet.node)

        fleet.validate(sample=True)  # after the pickup: a new node, in both
        await fleet.write()
        assert fleet.node in fleet.view
        assert _in_store(store_url, fleet.node)


async def test_messages_queued_at_the_pickup_do_not_bring_the_node_back(
    store_url: StoreTarget,
) -> None:
    """Messages validated before the pickup and still in the writer's queue at it (its
    sample wrote the ``nodes`` row again: the pickup had taken the node out of the nodes the
    writer knows) are stored as history, and the node stays forgotten in the store as in
    the live view, with no watermark."""
    async with Store(store_url) as store:
        fleet = _Fleet(store, await store.run(last_forgotten()))
        fleet.validate(status="online", sample=True)
        await fleet.write()
        _forget(store_url, fleet.node)
        fleet.validate(status="offline", sample=True)
        assert await fleet.writer.forget_nodes() == [fleet.node]
        assert fleet.node not in fleet.view
        await fleet.write()
        assert db_rows(store_url, "SELECT count(*) FROM samples") == [(2,)]
        assert fleet.node not in fleet.view
        assert not _in_store(store_url, fleet.node)
        assert fleet.writer.watermarks is not None
        assert fleet.writer.watermarks.get(fleet.node) is None


async def test_a_unit_the_reader_held_at_the_pickup_does_not_bring_the_node_back(
    store_url: StoreTarget,
) -> None:
    """The reader validated the node's status and sample before the pickup, then waited for
    room in the full queue: its unit comes after the pickup, and the writer, running on,
    stores its sample as history only."""
    async with Store(store_url) as store:
        fleet = _Fleet(store, await store.run(last_forgotten()))
        running = asyncio.create_task(fleet.writer.run())
        try:
            fleet.validate(status="online", sample=True)
            await wait_until(lambda: _in_store(store_url, fleet.node), what="the node stored")
            _forget(store_url, fleet.node)
            held = fleet.validate(status="offline", sample=True, hold=True)
            assert await fleet.writer.forget_nodes() == [fleet.node]
            fleet.queue.put_nowait(held)
            await wait_until(
                lambda: db_rows(store_url, "SELECT count(*) FROM samples") == [(2,)],
                what="the held unit stored",
            )
            assert not _in_store(store_url, fleet.node)
            assert fleet.node not in fleet.view
        finally:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fleet.queue.put_nowait(StopUnit(done))
            await asyncio.wait_for(running, 20)


async def test_rejects_counted_before_the_pickup_are_not_written_after_it(
    store_url: StoreTarget,
) -> None:
    """A reject of the node counted before the pickup and flushed after it (the counters
    go every ~2 s) does not write its ``node_rejects`` row again; nor does one after the
    pickup (counted by reason only: the node stays forgotten)."""
    async with Store(store_url) as store:
        fleet = _Fleet(store, await store.run(last_forgotten()))
        fleet.validate(status="online", sample=True)
        await fleet.write()
        rejects = "SELECT count(*) FROM node_rejects WHERE node = ?"
        fleet.ingestor.handle(sample_topic(fleet.node), b"][")
        _forget(store_url, fleet.node)
        assert await fleet.writer.forget_nodes() == [fleet.node]
        await fleet.writer.flush_counters()
        assert db_rows(store_url, rejects, (fleet.node,)) == [(0,)]

        fleet.ingestor.handle(sample_topic(fleet.node), b"][")
        await fleet.writer.flush_counters()
        assert db_rows(store_url, rejects, (fleet.node,)) == [(0,)]
        assert fleet.view.was_forgotten(fleet.node)


async def test_a_row_written_before_a_pickup_that_never_came_is_dropped_at_the_next_start(
    store_url: StoreTarget,
) -> None:
    """The collector stopped (crashed) between a forget's commit and its writer's pickup,
    after storing a status of the node: its ``nodes`` row is there again, written within
    seconds of the forget. The next collector's start drops it and remembers the node as
    forgotten (it skipped the node, which had a row, and loaded it back stale: listed,
    NodeOffline firing for a decommissioned node). A node that came back after its pickup
    (a status stamped past the forget by more than max_clock_skew_s) keeps its row."""
    async with Store(store_url) as store:
        fleet = _Fleet(store, await store.run(last_forgotten()))
        fleet.validate(status="online", sample=True)
        await fleet.write()
        _forget(store_url, fleet.node, at=fleet.clock.time())
        fleet.validate(status="offline")
        await fleet.write()  # and no pickup: the collector stops here
        assert _in_store(store_url, fleet.node)
        remembered, dropped = await remembered_at_start(
            store, 10, max_skew_s=fleet.ingestor.max_skew_s
        )
        assert [f.node for f in remembered] == dropped == [fleet.node]
        assert not _in_store(store_url, fleet.node)

        _forget(store_url, fleet.node, at=fleet.clock.time())
        assert await fleet.writer.forget_nodes() == [fleet.node]
        fleet.clock.advance(fleet.ingestor.max_skew_s + 1.0)
        fleet.validate(status="online")  # back, after its pickup
        await fleet.write()
        assert fleet.node in fleet.view
        assert await remembered_at_start(store, 10, max_skew_s=fleet.ingestor.max_skew_s) == (
            [],
            [],
        )
        assert _in_store(store_url, fleet.node)
