"""The collector's core without a broker: reader -> queue -> writer -> store -> acks.

A scripted subscriber stands in for the MQTT connection (the broker is the boundary); the
store is a real SQLite file. The real-broker behaviour is in tests/integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.simulate import FleetSimulator
from collector.counters import value
from collector.ingest.packets import Message
from collector.ingest.reader import (
    FILTERS_META_KEY,
    RETIRE_AFTER_S,
    FilterState,
    StopUnit,
    Unit,
)
from collector.ingest.validate import QUARANTINE_PER_KEY, Ingestor, sample_row
from collector.ingest.watermark import Watermarks
from collector.ingest.writer import Writer, WriterItem
from collector.service import Collector
from collector.settings import CollectorMqttSettings, CollectorSettings
from collector.store.db import NodeUpdate, SampleRow, Store
from shared.clock import FakeClock
from shared.errors import ConfigError, StoreError
from shared.schema import decode_sample, decode_watermark, encode
from shared.topics import (
    LEGACY_SUBSCRIPTIONS,
    SUBSCRIPTIONS,
    collector_subscriptions,
    inventory_topic,
    sample_topic,
    watermark_topic,
)
from tests.collector.ingest.scripted import ScriptedBroker
from tests.helpers import count_samples, db_rows, wait_until, write_locked

T0 = 1_800_000_000.0
"""The collector's wall clock in these tests; samples are stamped just before it."""


def _sample_messages(broker: ScriptedBroker, n_nodes: int, ticks: int) -> list[Message]:
    sim = FleetSimulator(n_nodes, gpus_per_node=2, seed=5, interval_s=5)
    out = []
    for k in range(ticks):
        for i in range(n_nodes):
            s = sim.sample(i, T0 - 100 + 5 * k, k)
            out.append(broker.message(sample_topic(s.node), encode(s)))
    return out


class Running:
    """A collector on a scripted broker, in this event loop."""

    def __init__(
        self, tmp_path: Path, broker: ScriptedBroker, *, wall: float = T0, **settings: object
    ) -> None:
        self.db = tmp_path / "c.db"
        self.broker = broker
        self.settings = CollectorSettings.model_validate({"db_path": self.db, **settings})
        self.collector = Collector(
            self.settings, clock=FakeClock(start_wall=wall), connect=broker.connect
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Collector:
        """Start and wait until subscribed and the session fact is stored."""
        self.task = asyncio.create_task(self.collector.run(), name="collector-under-test")
        await wait_until(self.collector.connected.is_set, timeout_s=10, what="subscribed")
        await wait_until(
            lambda: bool(
                db_rows(self.db, "SELECT value FROM meta WHERE key LIKE 'mqtt_session %'")
            ),
            timeout_s=10,
            what="session remembered",
        )
        return self.collector

    async def stop(self) -> None:
        """Stop and wait for run() to return."""
        self.collector.stop()
        assert self.task is not None
        async with asyncio.timeout(20):
            await self.task


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """A collector on a scripted broker whose probe counts stored samples."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker)
    broker.probe = lambda: count_samples(run.db)
    yield run
    if run.task is not None and not run.task.done():
        run.collector.stop()
        await asyncio.wait_for(run.task, 20)


async def test_each_message_is_acked_only_after_the_commit_that_stored_it(
    running: Running,
) -> None:
    """At every ack, the store already holds every sample acknowledged so far."""
    await running.start()
    messages = _sample_messages(running.broker, 10, 6)
    async with write_locked(running.db):  # a backlog builds up behind the first commit
        for i in range(0, 60, 10):
            running.broker.deliver(messages[i : i + 10])
        await wait_until(
            lambda: value(running.collector.ingest_metrics.received) == 60, what="60 taken"
        )
    await wait_until(lambda: len(running.broker.acked_ids()) == 60, what="60 acks")

    acked = 0
    commits: list[int] = []
    for record in running.broker.acks:
        acked += len(record.packet_ids)
        assert record.observed >= acked, "acknowledged before it was stored"
        if not commits or commits[-1] != record.observed:
            commits.append(record.observed)
    assert sorted(running.broker.acked_ids()) == sorted(m.packet_id or 0 for m in messages)
    assert commits[-1] == 60
    sizes = [b - a for a, b in zip([0, *commits], commits, strict=False)]
    assert max(sizes) > 10, f"no batching across reads: commits of {sizes}"


async def test_batches_end_at_read_boundaries_near_batch_max_rows(tmp_path: Path) -> None:
    """With batch_max_rows=25 and reads of 10, a backlog is committed 30 rows at a time."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker, batch_max_rows=25)
    broker.probe = lambda: count_samples(run.db)
    await run.start()
    messages = _sample_messages(broker, 10, 10)
    async with write_locked(run.db):
        for i in range(0, 100, 10):
            broker.deliver(messages[i : i + 10])
        await wait_until(
            lambda: value(run.collector.ingest_metrics.received) == 100, what="100 taken"
        )
    await wait_until(lambda: len(broker.acked_ids()) == 100, what="100 acks")
    await run.stop()
    observed = sorted({r.observed for r in broker.acks})
    sizes = [b - a for a, b in zip([0, *observed], observed, strict=False)]
    assert sum(sizes) == 100
    assert all(size % 10 == 0 and size <= 30 for size in sizes), sizes
    assert 30 in sizes, sizes


async def test_stop_stores_and_acks_everything_the_reader_took(running: Running) -> None:
    """A stop while the writer is behind still commits and acks every message received."""
    await running.start()
    messages = _sample_messages(running.broker, 20, 5)
    async with write_locked(running.db):
        for i in range(0, 100, 20):
            running.broker.deliver(messages[i : i + 20])
        await wait_until(
            lambda: value(running.collector.ingest_metrics.received) == 100, what="taken"
        )
        assert count_samples(running.db) == 0
        running.collector.stop()  # with 100 samples still waiting for the writer
    await running.stop()
    assert count_samples(running.db) == 100
    assert sorted(running.broker.acked_ids()) == sorted(m.packet_id or 0 for m in messages)
    counters = dict(db_rows(running.db, "SELECT name, value FROM counters"))
    assert counters["stored"] == 100  # the final counters are flushed too


async def test_rejected_messages_are_quarantined_counted_per_node_and_acked(
    running: Running,
) -> None:
    """Garbage, a future timestamp, a foreign topic: quarantined with the reason, acked."""
    collector = await running.start()
    broker = running.broker
    sim = FleetSimulator(1, gpus_per_node=2, seed=1, interval_s=5)
    node = sim.node_ids[0]
    future = encode(sim.sample(0, T0 + 3600, 1))  # an hour ahead of the collector's clock
    good = encode(sim.sample(0, T0 - 5, 2))
    messages = [
        broker.message(sample_topic(node), b"{not json"),
        broker.message(sample_topic(node), future),
        broker.message("somewhere/else", good),
        broker.message(sample_topic(node), good),
    ]
    broker.deliver(messages)
    await wait_until(lambda: len(broker.acked_ids()) == 4, what="all four acked")
    await running.stop()

    assert count_samples(running.db) == 1
    quarantined = db_rows(
        running.db, "SELECT node, topic, reason, payload_bytes FROM quarantine ORDER BY id"
    )
    assert quarantined == [
        (node, sample_topic(node), "not_json", 9),
        (node, sample_topic(node), "clock_skew", len(future)),
        (None, "somewhere/else", "bad_topic", len(good)),
    ]
    assert value(collector.ingest_metrics.rejected_by["clock_skew"]) == 1
    per_node = db_rows(running.db, "SELECT node, reason, count FROM node_rejects ORDER BY reason")
    assert per_node == [(node, "clock_skew", 1), (node, "not_json", 1)]


async def test_a_node_sending_junk_fast_keeps_a_few_rows_in_quarantine_all_counted(
    running: Running,
) -> None:
    """A node flooding junk: every message is counted (per reason, per node, in the
    store's totals) and acked, but only the first QUARANTINE_PER_KEY of it reach the
    quarantine table between two counter flushes, so another node's reject stays in it."""
    await running.start()
    broker = running.broker
    flood = [broker.message(sample_topic("flooder"), b"{junk") for _ in range(60)]
    other = broker.message(sample_topic("quiet"), b"{junk")
    broker.deliver([*flood, other])
    await wait_until(lambda: len(broker.acked_ids()) == 61, what="all acked")
    await running.stop()

    kept = db_rows(running.db, "SELECT node, count(*) FROM quarantine GROUP BY node ORDER BY node")
    assert kept == [("flooder", QUARANTINE_PER_KEY), ("quiet", 1)]
    counters = dict(db_rows(running.db, "SELECT name, value FROM counters"))
    assert counters["quarantined_total"] == 61
    assert counters["quarantined_total_not_json"] == 61
    per_node = db_rows(running.db, "SELECT node, count FROM node_rejects ORDER BY node")
    assert per_node == [("flooder", 60), ("quiet", 1)]


async def test_nodes_past_max_nodes_are_quarantined_as_fleet_full_and_acked(
    tmp_path: Path,
) -> None:
    """``max_nodes = 2``: a third node's samples are quarantined (``fleet_full``) and
    acknowledged; the store holds neither them nor the node; the first two are stored."""
    running = Running(tmp_path, ScriptedBroker(), max_nodes=2)
    collector = await running.start()
    assert (collector.live.max_nodes, collector.watermarks.max_nodes) == (2, 2)
    messages = _sample_messages(running.broker, 3, 2)
    running.broker.deliver(messages)
    await wait_until(lambda: len(running.broker.acked_ids()) == 6, what="all six acked")
    await running.stop()
    nodes = sorted({decode_sample(m.payload).node for m in messages})
    assert db_rows(running.db, "SELECT node, count(*) FROM samples GROUP BY node") == [
        (nodes[0], 2),
        (nodes[1], 2),
    ]
    assert db_rows(running.db, "SELECT node, reason FROM quarantine") == [
        (nodes[2], "fleet_full"),
        (nodes[2], "fleet_full"),
    ]
    assert db_rows(running.db, "SELECT node FROM nodes ORDER BY node") == [
        (nodes[0],),
        (nodes[1],),
    ]


async def test_a_lost_broker_session_is_counted_and_the_collector_subscribes_again(
    tmp_path: Path,
) -> None:
    """A restart that finds no session where one was held says so; a resumed one does not."""
    broker = ScriptedBroker()
    first = Running(tmp_path, broker)
    await first.start()
    await first.stop()
    assert value(first.collector.reader_metrics.sessions_lost) == 0
    assert len(broker.subscriptions) == 1

    resumed = Running(tmp_path, broker)  # the broker kept the session
    await resumed.start()
    await resumed.stop()
    assert value(resumed.collector.reader_metrics.sessions_lost) == 0
    assert len(broker.subscriptions) == 1  # a resumed session is not subscribed again

    broker.session_present = False  # someone took the session over, or the broker lost it
    lost = Running(tmp_path, broker)
    await lost.start()
    await lost.stop()
    assert value(lost.collector.reader_metrics.sessions_lost) == 1
    assert len(broker.subscriptions) == 2


# -- the writer on its own: data SQLite refuses, and a store that cannot be written ----------


class _Link:
    """Records acks; stands in for the connection a unit came from."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, packet_ids: Iterable[int]) -> None:
        self.acked.extend(packet_ids)

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


async def _run_writer(store: Store, units: list[Unit]) -> Writer:
    ingestor = Ingestor(FakeClock(start_wall=T0))
    queue: asyncio.Queue[WriterItem] = asyncio.Queue()
    for unit in units:
        queue.put_nowait(unit)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    queue.put_nowait(StopUnit(done))
    writer = Writer(store, queue, ingestor, FakeClock(start_wall=T0), retention_s=1e9)
    await asyncio.wait_for(writer.run(), 20)
    return writer


async def test_a_row_sqlite_refuses_is_found_by_bisection_and_quarantined(
    tmp_path: Path,
) -> None:
    """One unstorable row among 64: the other 63 are stored, it is quarantined, all acked."""
    sim = FleetSimulator(64, gpus_per_node=2, seed=8, interval_s=5)
    rows = []
    for i in range(64):
        s = sim.sample(i, T0 - 10, 0)
        rows.append(sample_row(s, encode(s), T0))
    # Past int64: what a validation gap once let through, and what crashed the writer.
    rows[41] = rows[41]._replace(gpu_mem_used_bytes=2**64)
    link = _Link()
    unit = Unit(link, list(rows), list(range(1, 65)))
    async with Store(tmp_path / "c.db") as store:
        writer = await _run_writer(store, [unit])
    assert count_samples(tmp_path / "c.db") == 63
    assert db_rows(
        tmp_path / "c.db", "SELECT count(*) FROM samples WHERE node = ?", (rows[41].node,)
    ) == [(0,)]
    quarantined = db_rows(tmp_path / "c.db", "SELECT node, reason, detail FROM quarantine")
    assert len(quarantined) == 1
    assert quarantined[0][:2] == (rows[41].node, "store_refused")
    assert "OverflowError" in quarantined[0][2]
    assert link.acked == list(range(1, 65))
    assert value(writer.metrics.bisections) >= 6  # log2(64) levels down to one row
    assert value(writer.metrics.stored) == 63


async def test_each_batch_logs_how_old_its_oldest_sample_was_when_committed(
    tmp_path: Path,
) -> None:
    """``batch_stored`` carries ``age_ms``: commit time minus the batch's oldest sample's own
    ts (bench/bench_ingest_stall.py counts a stall only while a sample waited); a batch
    without samples has none."""
    sim = FleetSimulator(3, gpus_per_node=1, seed=8, interval_s=5)
    samples = [sim.sample(i, T0 - 2.5 - i, 0) for i in range(3)]
    rows = [sample_row(s, encode(s), T0) for s in samples]
    status = NodeUpdate(node=samples[0].node, status="online", status_ts=T0)
    units = [Unit(_Link(), list(rows), [1, 2, 3]), Unit(_Link(), [status], [4])]
    with capture_logs() as logs:
        async with Store(tmp_path / "c.db") as store:
            await _run_writer(store, units[:1])
            await _run_writer(store, units[1:])
    ages = [e.get("age_ms") for e in logs if e["event"] == "batch_stored"]
    assert ages == [4500, None]  # T0 - (T0 - 4.5 s): the third node's sample


async def test_a_store_that_cannot_be_written_stops_without_acking(tmp_path: Path) -> None:
    """Disk full: the writer raises a fatal StoreError and acknowledges nothing."""
    db = tmp_path / "c.db"
    sim = FleetSimulator(200, gpus_per_node=8, seed=3, interval_s=5)
    rows = []
    for i in range(200):
        s = sim.sample(i, T0 - 10, 0)
        rows.append(sample_row(s, encode(s), T0))
    link = _Link()
    async with Store(db) as store:
        pages = (await store.fetchall("PRAGMA page_count"))[0][0]
        await store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        with pytest.raises(StoreError, match="full") as caught:
            await _run_writer(store, [Unit(link, list(rows), list(range(1, 201)))])
    assert caught.value.fatal
    assert caught.value.exit_code == 1
    assert link.acked == []
    assert count_samples(db) == 0


async def test_statements_fit_an_old_sqlite_variable_limit(tmp_path: Path) -> None:
    """With 999 bound variables (SQLite < 3.32), a 2,000-row batch is still stored."""
    sim = FleetSimulator(200, gpus_per_node=2, seed=3, interval_s=5)
    rows = []
    for k in range(10):
        for i in range(200):
            s = sim.sample(i, T0 - 100 + 5 * k, k)
            rows.append(sample_row(s, encode(s), T0))
    async with Store(tmp_path / "c.db", variable_limit=999) as store:
        assert store.max_variables == 999
        assert await store.write_batch(rows) == 2000
    assert count_samples(tmp_path / "c.db") == 2000


async def test_a_second_collector_on_the_same_database_is_refused(running: Running) -> None:
    """Two collectors would steal one broker session from each other: the second one stops."""
    await running.start()
    second = Collector(
        running.settings, clock=FakeClock(start_wall=T0), connect=running.broker.connect
    )
    with pytest.raises(ConfigError, match=r"another collector \(pid \d+\) is using the database"):
        await second.run()
    assert running.broker.connections == 1
    await running.stop()
    again = Running(running.db.parent, running.broker)  # the lock went with the first one
    await again.start()
    await again.stop()


async def test_the_quarantine_keeps_only_the_newest_rows(tmp_path: Path) -> None:
    """A flood of rejects cannot grow the database: the newest quarantine_max_rows stay."""
    ingestor = Ingestor(FakeClock(start_wall=T0))
    rejects = [ingestor.handle(sample_topic(f"n{i}"), b"{junk") for i in range(150)]
    queue: asyncio.Queue[WriterItem] = asyncio.Queue()
    queue.put_nowait(Unit(None, list(rejects)))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    queue.put_nowait(StopUnit(done))
    async with Store(tmp_path / "c.db") as store:
        writer = Writer(store, queue, ingestor, FakeClock(start_wall=T0), quarantine_max_rows=100)
        await asyncio.wait_for(writer.run(), 20)
    kept = db_rows(tmp_path / "c.db", "SELECT count(*), min(node), max(id) FROM quarantine")
    assert kept == [(100, "n100", 150)]
    assert value(writer.metrics.quarantine_trimmed) == 50


def test_per_node_reject_counts_are_bounded() -> None:
    """Rejects from ever new node names fold into '*' past the bound, and still count."""
    ingestor = Ingestor(FakeClock(start_wall=T0))
    for i in range(10_050):
        ingestor.handle(sample_topic(f"n{i}"), b"{junk")
    taken = ingestor.take_node_rejects()
    assert len(taken) == 10_001
    assert taken[("*", "not_json")][0] == 50
    assert sum(count for count, _ in taken.values()) == 10_050


async def test_a_row_a_trigger_refuses_is_bisected_not_fatal(tmp_path: Path) -> None:
    """An SQLite error about the data (a constraint) costs that row only, not the store."""
    sim = FleetSimulator(40, gpus_per_node=2, seed=8, interval_s=5)
    rows = []
    for i in range(40):
        s = sim.sample(i, T0 - 10, 0)
        rows.append(sample_row(s, encode(s), T0))
    refused = rows[17].node
    link = _Link()
    async with Store(tmp_path / "c.db") as store:
        await store.conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON samples WHEN NEW.node = "
            f"'{refused}' BEGIN SELECT RAISE(ABORT, 'refused by policy'); END"
        )
        await store.conn.commit()
        await _run_writer(store, [Unit(link, list(rows), list(range(1, 41)))])
    assert count_samples(tmp_path / "c.db") == 39
    assert db_rows(tmp_path / "c.db", "SELECT node, reason FROM quarantine") == [
        (refused, "store_refused")
    ]
    assert link.acked == list(range(1, 41))


async def test_the_reader_waits_when_the_queue_is_full(tmp_path: Path) -> None:
    """With the writer stuck, the reader stops taking reads: memory stays bounded."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker, batch_max_rows=50, queue_max=100)  # a queue of 2 units
    broker.probe = lambda: count_samples(run.db)
    collector = await run.start()
    messages = _sample_messages(broker, 10, 20)
    async with write_locked(run.db):
        for i in range(0, 200, 10):
            broker.deliver(messages[i : i + 10])
        await wait_until(lambda: value(collector.reader_metrics.waits) >= 1, what="reader waiting")
        # One read in the writer's hands, two queued, one in the reader's: no more.
        assert value(collector.ingest_metrics.received) <= 40
    await wait_until(lambda: len(broker.acked_ids()) == 200, what="everything, once unstuck")
    await run.stop()
    assert count_samples(run.db) == 200


def _held_filters(db: Path) -> FilterState | None:
    rows = db_rows(db, f"SELECT value FROM meta WHERE key LIKE '{FILTERS_META_KEY} %'")
    return FilterState.from_json(rows[0][0]) if rows else None


async def test_a_new_session_subscribes_the_one_filter_and_records_it(tmp_path: Path) -> None:
    """A fresh session gets the one filter of every kind, and the database remembers it."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker)
    await run.start()
    await run.stop()
    assert broker.subscriptions == [[("capwatch/v1/nodes/#", 1)]]
    assert _held_filters(run.db) == FilterState(SUBSCRIPTIONS, T0)


async def test_a_resumed_session_with_the_current_filter_is_not_resubscribed(
    tmp_path: Path,
) -> None:
    """Resuming a session that holds the current filter subscribes nothing (no retained flood)."""
    await _run_once(tmp_path, ScriptedBroker())
    broker = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, broker)
    assert broker.subscriptions == []
    assert broker.unsubscriptions == []


async def test_a_new_database_on_a_resumed_session_adds_the_filter(tmp_path: Path) -> None:
    """A resumed session this database never saw holds unknown filters: the filter is added."""
    broker = ScriptedBroker(session_present=True)
    run = await _run_once(tmp_path, broker)
    assert broker.subscriptions == [[(SUBSCRIPTIONS[0], 1)]]
    assert broker.unsubscriptions == []
    assert _held_filters(run.db) == FilterState((*LEGACY_SUBSCRIPTIONS, *SUBSCRIPTIONS), T0)


async def test_a_legacy_session_gets_the_new_filter_and_retires_the_old_ones_later(
    tmp_path: Path,
) -> None:
    """Per-kind filters of an older collector: add '#' now, unsubscribe them only later."""
    run = await _run_once(tmp_path, ScriptedBroker())
    with sqlite3.connect(run.db) as conn:  # as an older collector left it: no filters fact
        conn.execute("DELETE FROM meta WHERE key LIKE ?", (f"{FILTERS_META_KEY} %",))
    added = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, added)
    assert added.subscriptions == [[(SUBSCRIPTIONS[0], 1)]]
    assert added.unsubscriptions == []
    soon = ScriptedBroker(session_present=True)  # a restart soon after: nothing changes
    await _run_once(tmp_path, soon, wall=T0 + RETIRE_AFTER_S - 1)
    assert (soon.subscriptions, soon.unsubscriptions) == ([], [])
    later = ScriptedBroker(session_present=True)
    run = await _run_once(tmp_path, later, wall=T0 + RETIRE_AFTER_S + 1)
    assert later.subscriptions == []
    assert later.unsubscriptions == [list(LEGACY_SUBSCRIPTIONS)]
    assert _held_filters(run.db) == FilterState(SUBSCRIPTIONS, T0)
    again = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, again, wall=T0 + 2 * RETIRE_AFTER_S)
    assert (again.subscriptions, again.unsubscriptions) == ([], [])


async def test_joining_a_share_group_adds_its_filters_then_retires_the_plain_one(
    tmp_path: Path,
) -> None:
    """A lone collector's session given --share-group goes through the same migration:
    the shared sample filter and the plain inventory/status filters now, '#' only later."""
    group = CollectorMqttSettings(share_group="g")
    await _run_once(tmp_path, ScriptedBroker(), client_id="c1")
    added = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, added, client_id="c1", mqtt=group)
    wanted = collector_subscriptions("g")
    assert added.subscriptions == [[(t, 1) for t in wanted]]
    assert wanted[0] == "$share/g/capwatch/v1/nodes/+/sample"
    assert added.unsubscriptions == []
    later = ScriptedBroker(session_present=True)
    run = await _run_once(tmp_path, later, wall=T0 + RETIRE_AFTER_S + 1, client_id="c1", mqtt=group)
    assert later.unsubscriptions == [list(SUBSCRIPTIONS)]
    assert _held_filters(run.db) == FilterState(wanted, T0)


async def _run_once(
    tmp_path: Path, broker: ScriptedBroker, *, wall: float = T0, **settings: object
) -> Running:
    run = Running(tmp_path, broker, wall=wall, **settings)
    await run.start()  # waits for the mqtt_session fact (written after the filters fact)
    await run.stop()
    return run


async def test_collectors_sharing_a_store_each_keep_their_own_session(tmp_path: Path) -> None:
    """Two collectors on one store (a share group): each remembers its own broker session
    and filters, so a restart of one resumes its session without subscribing again (a
    resubscription makes the broker resend every retained message, and where the session
    of the other was taken for its own, it lost the samples its session held)."""
    a = await _run_once(tmp_path, ScriptedBroker(), client_id="capwatch-collector-a")
    b = await _run_once(tmp_path, ScriptedBroker(), client_id="capwatch-collector-b")
    assert a.db == b.db
    again = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, again, client_id="capwatch-collector-a")
    assert again.subscriptions == []
    assert value(a.collector.reader_metrics.sessions_lost) == 0


async def test_a_store_from_before_per_session_keys_keeps_its_session(tmp_path: Path) -> None:
    """A store of one collector written before the keys carried the session: its bare
    mqtt_session / mqtt_filters facts still say the session is known and what it holds."""
    run = await _run_once(tmp_path, ScriptedBroker())
    with sqlite3.connect(run.db) as conn:  # as the version before left it
        conn.execute("UPDATE meta SET key = 'mqtt_session' WHERE key LIKE 'mqtt_session %'")
        conn.execute(
            "UPDATE meta SET key = ? WHERE key LIKE ?", (FILTERS_META_KEY, f"{FILTERS_META_KEY} %")
        )
    resumed = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, resumed)
    assert resumed.subscriptions == []  # the filters it holds are known: nothing to add


async def test_a_session_the_broker_keeps_closing_is_called_contested(tmp_path: Path) -> None:
    """Closed right after each connect (another client with our id): an error, with backoff."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker, mqtt={"reconnect_min_s": 0.01, "reconnect_max_s": 0.05})
    for _ in range(4):
        broker.drop_connection()
    task = asyncio.create_task(run.collector.run())
    await wait_until(
        lambda: value(run.collector.reader_metrics.session_contested) >= 1, what="contested"
    )
    assert value(run.collector.reader_metrics.disconnects) >= 3
    run.collector.stop()
    await asyncio.wait_for(task, 20)


async def test_refused_credentials_are_an_error_and_retried(tmp_path: Path) -> None:
    """CONNACK 'bad username or password': counted and logged as an error, retried with backoff."""
    broker = ScriptedBroker(refuse_with=4)
    run = Running(tmp_path, broker, mqtt={"reconnect_min_s": 0.01, "reconnect_max_s": 0.05})
    task = asyncio.create_task(run.collector.run())
    await wait_until(
        lambda: value(run.collector.reader_metrics.not_authorized) >= 2, what="retried"
    )
    assert not run.collector.connected.is_set()
    run.collector.stop()
    await asyncio.wait_for(task, 20)


async def test_old_filters_are_retired_after_the_wall_clock_went_back(tmp_path: Path) -> None:
    """Filters added while the wall clock ran a day ahead: once it is set right, the old
    ones go RETIRE_AFTER_S later, not when the clock reaches the day-ahead time."""
    ahead = T0 + 86_400.0
    run = await _run_once(tmp_path, ScriptedBroker(), wall=ahead)
    with sqlite3.connect(run.db) as conn:  # as an older collector left it: no filters fact
        conn.execute("DELETE FROM meta WHERE key LIKE ?", (f"{FILTERS_META_KEY} %",))
    added = ScriptedBroker(session_present=True)
    await _run_once(tmp_path, added, wall=ahead)
    assert added.subscriptions == [[(SUBSCRIPTIONS[0], 1)]]
    corrected = ScriptedBroker(session_present=True)  # NTP set the clock right
    await _run_once(tmp_path, corrected, wall=T0)
    assert corrected.unsubscriptions == []
    later = ScriptedBroker(session_present=True)
    run = await _run_once(tmp_path, later, wall=T0 + RETIRE_AFTER_S + 1)
    assert later.unsubscriptions == [list(LEGACY_SUBSCRIPTIONS)]
    assert _held_filters(run.db) == FilterState(SUBSCRIPTIONS, T0)


# -- the store's watermarks -------------------------------------------------------------------


def _epoch_messages(broker: ScriptedBroker, nodes: int, seqs: Iterable[int]) -> list[Message]:
    """Samples of epoch 7 with the given seqs, for each of ``nodes`` nodes."""
    sim = FleetSimulator(nodes, gpus_per_node=1, seed=5, interval_s=1)
    out = []
    for seq in seqs:
        for i in range(nodes):
            s = msgspec.structs.replace(sim.sample(i, T0 - 100 + seq, seq), epoch=7)
            out.append(broker.message(sample_topic(s.node), encode(s)))
    return out


def _published(broker: ScriptedBroker) -> list[tuple[str, int, int, int, int]]:
    """(node, epoch, seq, top, samples stored when published) of every watermark published."""
    out = []
    for _topic, payload, observed in broker.published:
        mark = decode_watermark(payload)
        out.append((mark.node, mark.epoch, mark.seq, mark.top, observed))
    return out


async def _flushed(clock: FakeClock, published: Callable[[], bool], what: str) -> None:
    """Move ``clock`` a watermark interval on until ``published()`` (at most three times).
    A round the writer took while units still waited rides the next batch, or goes alone
    at the flush after: with a fake clock and no batch to come, one more interval is what
    real time would have given it (under load the round was taken before the last batch
    was in, and a single step timed out)."""
    for _ in range(3):
        clock.advance(1.0)
        with contextlib.suppress(AssertionError):
            await wait_until(published, what=what, timeout_s=3.0)
            return
    await wait_until(published, what=what)


async def test_watermarks_are_published_after_their_commit_once_per_node_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    """Five reads of three nodes' seqs 0..4: one watermark per node (seq 4), published with
    all 15 samples stored; seq 7 of one node leaves a hole (seq 4, top 7); after a restart,
    5 and 6 arriving close it (seq 7): the store, not memory, knew 7 was there."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker)
    broker.probe = lambda: count_samples(run.db)
    collector = await run.start()
    clock = collector.clock
    assert isinstance(clock, FakeClock)
    messages = _epoch_messages(broker, 3, range(5))
    for k in range(0, 15, 3):
        broker.deliver(messages[k : k + 3])
    await wait_until(lambda: count_samples(run.db) == 15, what="15 stored")
    await _flushed(clock, lambda: len(broker.published) >= 3, "watermarks published")
    nodes = sorted({m.topic.split("/")[3] for m in messages})
    assert sorted(_published(broker)) == [(n, 7, 4, 4, 15) for n in nodes]
    assert sorted(broker.retained) == [watermark_topic(n) for n in nodes]
    node = nodes[0]

    broker.deliver(_epoch_messages(broker, 1, [7]))
    await wait_until(lambda: count_samples(run.db) == 16, what="seq 7 stored")
    await _flushed(clock, lambda: len(broker.published) == 4, "the hole published")
    assert _published(broker)[-1][:4] == (node, 7, 4, 7)
    await run.stop()

    again = Running(tmp_path, broker)
    collector = await again.start()
    clock = collector.clock
    assert isinstance(clock, FakeClock)
    broker.deliver(_epoch_messages(broker, 1, [5, 6]))
    await wait_until(lambda: count_samples(run.db) == 18, what="5 and 6 stored")
    await _flushed(clock, lambda: len(broker.published) == 5, "the closed hole published")
    assert _published(broker)[-1] == (node, 7, 7, 7, 18)


class _TickingLink(_Link):
    """Advances ``clock`` a second at each ack (so watermarks fall due while units still
    wait) and records, at each publish, the topics and how many samples were stored."""

    def __init__(self, clock: FakeClock, db: Path) -> None:
        super().__init__()
        self.clock, self.db = clock, db
        self.published: list[tuple[list[str], int]] = []
        self.unwritten: list[str] = []
        """Topics published before their watermark row was committed."""

    def ack(self, packet_ids: Iterable[int]) -> None:
        super().ack(packet_ids)
        self.clock.advance(1.0)

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.published.append((sorted(t for t, _ in messages), count_samples(self.db)))
        held = {watermark_topic(n) for (n,) in db_rows(self.db, "SELECT node FROM watermarks")}
        self.unwritten.extend(t for t, _ in messages if t not in held)


async def _ride(tmp_path: Path, *, poison: int | None = None) -> tuple[_TickingLink, list[str]]:
    """Three units of two nodes' seq 0 through a writer that takes a unit a batch, the clock
    a second on at each ack; ``poison``: that node's row one the store refuses."""
    clock = FakeClock(start_wall=T0)
    sim = FleetSimulator(6, gpus_per_node=1, seed=2, interval_s=5, epoch=3)
    db = tmp_path / "c.db"
    link = _TickingLink(clock, db)
    queue: asyncio.Queue[WriterItem] = asyncio.Queue()
    for k in range(3):
        rows: list[SampleRow] = []
        for i in (2 * k, 2 * k + 1):
            x = sim.sample(i, T0 - 10, 0)
            row = sample_row(x, encode(x), T0)
            rows.append(row._replace(gpu_mem_used_bytes=2**64) if i == poison else row)
        queue.put_nowait(Unit(link, [*rows], [2 * k + 1, 2 * k + 2]))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    queue.put_nowait(StopUnit(done))
    async with Store(db) as store:
        writer = Writer(
            store,
            queue,
            Ingestor(clock),
            clock,
            batch_max_rows=2,  # a unit a batch: the others wait
            retention_s=1e9,
            watermarks=Watermarks(hole_s=60),
            watermark_interval_s=1.0,
        )
        await asyncio.wait_for(writer.run(), 20)
    return link, list(sim.node_ids)


async def test_watermarks_due_while_units_wait_ride_the_next_batch(tmp_path: Path) -> None:
    """A round that falls due while units wait is written in the next batch's transaction
    and published after its commit (not in a transaction of its own between the two): the
    first nodes' watermarks go out with the second batch stored, then the rest at the stop."""
    link, nodes = await _ride(tmp_path)
    assert link.published[0] == ([watermark_topic(n) for n in sorted(nodes[:2])], 4)
    assert sorted(t for topics, _ in link.published for t in topics) == sorted(
        watermark_topic(n) for n in nodes
    )
    assert link.unwritten == []
    stored = db_rows(tmp_path / "c.db", "SELECT node, epoch, seq FROM watermarks ORDER BY node")
    assert stored == [(n, 3, 0) for n in sorted(nodes)]


async def test_watermarks_riding_a_batch_the_store_refuses_go_later_on_their_own(
    tmp_path: Path,
) -> None:
    """The batch the first round rides holds a row the store refuses: it is bisected, the
    round is not published with it (its rows were not written) but later, after a commit
    of its own; every node's watermark is still written and published."""
    link, nodes = await _ride(tmp_path, poison=3)
    assert link.unwritten == []
    published = sorted(t for topics, _ in link.published for t in topics)
    assert published == sorted(watermark_topic(n) for n in nodes if n != nodes[3])
    stored = db_rows(tmp_path / "c.db", "SELECT node FROM watermarks ORDER BY node")
    assert stored == [(n,) for n in sorted(nodes) if n != nodes[3]]


async def test_a_round_of_many_watermarks_goes_out_in_parts_the_first_a_probe(
    tmp_path: Path,
) -> None:
    """2,500 nodes' watermarks due: each part is written before it is published, at most
    1,000 a part; the first part on a new connection is a probe, the rest of the round
    follows at the next interval, each node once."""
    broker = ScriptedBroker()
    run = Running(tmp_path, broker)
    broker.probe = lambda: len(db_rows(run.db, "SELECT node FROM watermarks"))
    collector = await run.start()
    clock = collector.clock
    assert isinstance(clock, FakeClock)
    messages = _epoch_messages(broker, 2500, [0])
    for k in range(0, 2500, 500):
        broker.deliver(messages[k : k + 500])
    await wait_until(lambda: count_samples(run.db) == 2500, what="2,500 stored")
    clock.advance(1.0)
    await wait_until(lambda: len(broker.published) >= 1000, what="the probe published")
    await asyncio.sleep(0.2)
    assert len(broker.published) == 1000
    clock.advance(1.0)
    await wait_until(lambda: len(broker.published) >= 2500, what="the rest published")
    parts = [o for _t, _p, o in broker.published]  # watermark rows stored at each publish
    assert sorted(set(parts)) == [1000, 2000, 2500]
    assert sorted(n for n, *_ in _published(broker)) == sorted(
        m.topic.split("/")[3] for m in messages
    )
    await run.stop()


class _PartedRecord:
    """A record written in ``parts`` parts, noting how many samples were stored before each."""

    def __init__(
        self, db: Path, parts: int, queue: asyncio.Queue[WriterItem], arrivals: list[WriterItem]
    ) -> None:
        self.name = "parted"
        self._db, self._left, self._queue, self._arrivals = db, parts, queue, arrivals
        self.seen: list[int] = []

    async def write(self, store: Store) -> bool:
        self.seen.append(count_samples(self._db))
        await store.write_counters({"parted": len(self.seen)}, T0, {})
        if self._arrivals:  # what arrives while this part is written
            self._queue.put_nowait(self._arrivals.pop(0))
        self._left -= 1
        return self._left > 0


async def test_a_record_in_parts_lets_the_batches_that_arrive_meanwhile_commit_between_them(
    tmp_path: Path,
) -> None:
    """Samples that arrive while a long record is written are committed between its parts,
    not after all of them; records stay in order (the one behind waits for the last part)."""
    db = tmp_path / "c.db"
    sim = FleetSimulator(3, gpus_per_node=1, seed=5, interval_s=5)
    units: list[WriterItem] = []
    for i in range(3):
        s = sim.sample(i, T0 - 10, 0)
        units.append(Unit(_Link(), [sample_row(s, encode(s), T0)], [i + 1]))
    queue: asyncio.Queue[WriterItem] = asyncio.Queue()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    arrivals = [units[1], units[2]]
    first = _PartedRecord(db, 3, queue, arrivals)
    behind = _PartedRecord(db, 1, queue, [])
    queue.put_nowait(units[0])
    queue.put_nowait(first)
    queue.put_nowait(behind)
    async with Store(db) as store:
        clock = FakeClock(start_wall=T0)
        writer = Writer(store, queue, Ingestor(clock), clock, retention_s=1e9)
        task = asyncio.create_task(writer.run())
        await wait_until(lambda: bool(behind.seen))
        queue.put_nowait(StopUnit(done))
        await asyncio.wait_for(task, 20)
    assert first.seen == [1, 2, 3]
    assert behind.seen == [3]


async def test_a_cleared_retained_inventory_is_acknowledged_and_keeps_what_is_stored(
    tmp_path: Path,
) -> None:
    """An empty retained inventory (a node decommissioned with ``mosquitto_pub -r -n``) is
    acknowledged, quarantines nothing and leaves the node's stored inventory as it was."""
    ingestor = Ingestor(FakeClock(start_wall=T0))
    sim = FleetSimulator(1, gpus_per_node=1, seed=4, interval_s=5)
    node = sim.node_ids[0]
    inventory = ingestor.handle(inventory_topic(node), encode(sim.inventory(0, T0 - 1)))
    cleared = ingestor.handle(inventory_topic(node), b"")
    link = _Link()
    async with Store(tmp_path / "c.db") as store:
        await _run_writer(store, [Unit(link, [inventory], [1]), Unit(link, [cleared], [2])])
    assert link.acked == [1, 2]
    assert db_rows(tmp_path / "c.db", "SELECT count(*) FROM quarantine") == [(0,)]
    (stored,) = db_rows(tmp_path / "c.db", "SELECT inventory FROM nodes WHERE node = ?", (node,))
    assert isinstance(inventory, NodeUpdate)
    assert stored[0] == inventory.inventory
