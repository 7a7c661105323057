"""Each node's ingest budget at the validator: over it, a message is refused undecoded."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from agent.simulate import FleetSimulator
from collector.counters import value
from collector.ingest.budgets import BEAT_S, NodeBudgets, StallWatch
from collector.ingest.reader import MetaItem, Reader, StopUnit, Unit
from collector.ingest.validate import Ingestor, Item, Rejected
from collector.live import LiveView
from collector.store.db import SampleRow
from shared.budget import NodeBudget
from shared.clock import FakeClock
from shared.schema import encode
from shared.topics import SUBSCRIPTIONS, sample_topic
from tests.collector.ingest.scripted import ScriptedBroker
from tests.helpers import wait_until

BUDGET = NodeBudget(messages_per_s=10, bytes_per_s=1_000_000, burst_s=2.0)
"""20 messages at once, then 10 a second."""
T0 = 1_700_000_000.0


def _reason(item: Item) -> str | None:
    return item.quarantine.reason if isinstance(item, Rejected) else None


def _samples(node: int, n: int, nodes: int = 2) -> list[tuple[str, bytes]]:
    sim = FleetSimulator(nodes, gpus_per_node=2, seed=9)
    return [
        (sample_topic(sim.node_ids[node]), encode(sim.sample(node, T0 - 3600 + k, k)))
        for k in range(n)
    ]


def test_a_flooding_node_is_rate_limited_and_the_others_are_not() -> None:
    """One node sends 100 at once: its burst (20) is stored, the rest refused as
    rate_limited, counted for it and quarantined; another node's samples all pass."""
    clock = FakeClock(start_wall=T0)
    live = LiveView()
    ing = Ingestor(clock, budget=BUDGET, live=live)
    flood = [ing.handle(t, p) for t, p in _samples(0, 100)]
    calm = [ing.handle(t, p) for t, p in _samples(1, 15)]
    assert sum(isinstance(i, SampleRow) for i in flood) == 20
    assert {_reason(i) for i in flood[20:]} == {"rate_limited"}
    assert all(isinstance(i, SampleRow) for i in calm)
    assert value(ing.metrics.rejected_by["rate_limited"]) == 80
    node = FleetSimulator(2, gpus_per_node=2, seed=9).node_ids[0]
    assert ing.take_node_rejects()[(node, "rate_limited")][0] == 80
    clock.advance(0.1)
    assert isinstance(ing.handle(*_samples(0, 101)[100]), SampleRow)  # 0.1 s buys one


def test_an_over_budget_message_is_refused_before_it_is_decoded() -> None:
    """Garbage from a node over its budget is rate_limited, not not_json: never decoded."""
    ing = Ingestor(FakeClock(start_wall=T0), budget=BUDGET)
    topic, _ = _samples(0, 1)[0]
    verdicts = [_reason(ing.handle(topic, b"{not json")) for _ in range(21)]
    assert verdicts == ["not_json"] * 20 + ["rate_limited"]


def test_large_messages_spend_the_bytes_budget() -> None:
    """1 MB/s with 2 s of burst: two 900 KB messages pass, the third is refused, unparsed."""
    ing = Ingestor(FakeClock(start_wall=T0), budget=BUDGET)
    topic, _ = _samples(0, 1)[0]
    big = b"x" * 900_000
    assert [_reason(ing.handle(topic, big)) for _ in range(3)] == [
        "not_json",
        "not_json",
        "rate_limited",
    ]


def test_without_a_budget_nothing_is_rate_limited() -> None:
    """``budget=None`` (the default): a thousand samples at once all pass."""
    ing = Ingestor(FakeClock(start_wall=T0))
    assert all(isinstance(ing.handle(t, p), SampleRow) for t, p in _samples(0, 1000))


def test_a_credited_gap_lets_the_brokers_backlog_through_once() -> None:
    """The collector was away 30 s: 30 s of budget (300) plus the burst pass at once, as the
    broker's backlog arrives; once the credit has run out the budget holds again."""
    clock = FakeClock(start_wall=T0)
    ing = Ingestor(clock, budget=BUDGET)
    assert ing.budgets is not None
    ing.budgets.credit(30.0, clock.monotonic())
    verdicts = [ing.handle(t, p) for t, p in _samples(0, 400)]
    assert sum(isinstance(i, SampleRow) for i in verdicts) == 320
    clock.advance(30 + 60 + 1)  # the credit is open as long as the gap, plus a minute
    again = [ing.handle(t, p) for t, p in _samples(1, 100)]
    assert sum(isinstance(i, SampleRow) for i in again) == 20


def test_each_gaps_credit_ends_on_its_own_time() -> None:
    """A day of short waits on the writer's queue (0.15 s every 30 s) banks nothing: each
    wait's credit ends a minute after it, so a node then gets its burst and the open waits'
    credit (three: 20 + 4), not the day's 432 s (4,340: one window that each wait extended).
    A long gap keeps its own while beside newer waits, and ends with it."""
    budgets = NodeBudgets(BUDGET)
    now = 0.0
    for _ in range(2_880):
        now += 30.0
        budgets.credit(0.15, now)
    assert sum(budgets.take("n", 100, now) for _ in range(10_000)) == 20 + 4
    budgets.credit(30.0, now)  # the collector was away 30 s
    for _ in range(8):
        now += 10.0
        budgets.credit(0.15, now)
    # The gap and the last seven waits (the first ended a minute after it): 31.05 s.
    assert sum(budgets.take("m", 100, now) for _ in range(10_000)) == 20 + 310
    now += 11.0  # the gap's while (90 s) is over; the last five waits are open: 0.75 s
    assert sum(budgets.take("k", 100, now) for _ in range(10_000)) == 20 + 7


def test_idle_nodes_are_swept_from_the_table() -> None:
    """Thousands of nodes that each sent one message: once they have earned their credit
    back, the table drops them when it has doubled."""
    budgets = NodeBudgets(BUDGET)
    for k in range(1024):
        budgets.take(f"n{k}", 100, 0.0)
    assert len(budgets) == 1024
    budgets.take("late", 100, 10.0)  # all the others are idle again by now
    assert len(budgets) == 1


def test_a_fleet_within_its_bound_keeps_its_idle_allowances() -> None:
    """Below the fleet's bound (the live view's max_nodes) idle allowances stay: a fleet's
    are nearly all idle between two of its samples, and each dropped one was built again
    at the node's next message. Past it, idle ones are swept as above."""
    clock = FakeClock(start_wall=T0)
    ing = Ingestor(clock, live=LiveView(max_nodes=3000), budget=BUDGET)
    budgets = ing.budgets
    assert budgets is not None
    for k in range(2500):
        budgets.take(f"n{k}", 100, 0.0)
    budgets.take("late", 100, 10.0)  # all the others are idle again by now
    assert len(budgets) == 2501
    for k in range(499):
        budgets.take(f"m{k}", 100, 20.0)
    assert len(budgets) == 3000
    budgets.take("last", 100, 30.0)  # at the bound: the idle ones swept
    assert len(budgets) == 1


def _reader(
    ingestor: Ingestor,
    broker: ScriptedBroker,
    queue: asyncio.Queue[Unit | StopUnit],
    stop: asyncio.Event,
    connected: asyncio.Event,
) -> Reader:
    """A reader of ``broker``'s connections into ``queue``, reconnecting at once."""
    return Reader(
        broker.connect,
        ingestor,
        queue,
        topics=list(SUBSCRIPTIONS),
        session_key="test",
        had_session=False,
        stop=stop,
        connected=connected,
        reconnect_min_s=0.05,
        reconnect_max_s=0.05,
    )


async def _stop_reader(
    stop: asyncio.Event, queue: asyncio.Queue[Unit | StopUnit], task: asyncio.Task[None]
) -> None:
    """Stop the reader: take its units up to the last, which is then done."""
    stop.set()
    while not isinstance(unit := await asyncio.wait_for(queue.get(), 10), StopUnit):
        pass
    unit.done.set_result(None)
    await asyncio.wait_for(task, 10)


async def _backlog_passed(
    clock: FakeClock,
    silent_s: float,
    away_s: float,
    backlog: list[tuple[str, bytes]],
    *,
    drop: bool = True,
    held: bool = False,
) -> int:
    """A reader on a resumed session whose connection first delivers nothing for
    ``silent_s`` (the collector's clock), then drops, and is back ``away_s`` later with the
    broker's ``backlog`` at once: how many of it passed the budget as samples. ``drop``
    false: the backlog comes on the same connection, no drop (the loop was held). ``held``:
    the silence is seen as the loop held (credited) before the drop is noticed."""
    ingestor = Ingestor(clock, budget=BUDGET)
    broker = ScriptedBroker()
    queue: asyncio.Queue[Unit | StopUnit] = asyncio.Queue()
    stop, connected = asyncio.Event(), asyncio.Event()
    reader = _reader(ingestor, broker, queue, stop, connected)
    task = asyncio.create_task(reader.run())
    await asyncio.wait_for(connected.wait(), 10)
    await asyncio.sleep(0.05)  # the reader waits for its next read
    clock.advance(silent_s)
    budgets = ingestor.budgets
    assert budgets is not None
    if held:
        await wait_until(lambda: budgets.credit_s > 0, what="the loop's hold credited")
    if drop:
        broker.drop_connection()
        await wait_until(lambda: value(reader.metrics.disconnects) == 1, what="the drop noticed")
        clock.advance(away_s)
        await wait_until(lambda: broker.connections == 2 and connected.is_set(), what="resumed")
    broker.deliver([broker.message(t, p) for t, p in backlog])
    items: list[Item] = []

    def taken() -> int:
        while not queue.empty():
            unit = queue.get_nowait()
            if isinstance(unit, Unit) and unit.acks:
                items.extend(i for i in unit.items if not isinstance(i, MetaItem))
        return len(items)

    await wait_until(lambda: taken() >= len(backlog), what="the backlog validated")
    await _stop_reader(stop, queue, task)
    return sum(isinstance(i, SampleRow) for i in items)


async def test_the_reader_credits_the_budgets_with_the_time_it_was_disconnected() -> None:
    """The broker connection drops for 30 s (of the collector's clock) and the session is
    resumed: the backlog that arrives at once passes up to 30 s of budget plus the burst."""
    clock = FakeClock(start_wall=T0)
    assert await _backlog_passed(clock, 0.0, 30.0, _samples(0, 400)) == 320


async def test_a_connection_that_died_silently_is_credited_from_its_last_read() -> None:
    """A half-open connection (a network partition, a broker host gone without a reset) is
    noticed only at the keepalive timeout, and the reconnect is at once: the broker queued
    for the session since the last read, 30 s of an agent replaying at its pace (half the
    budget: 150), all of which pass. Credited from the drop's notice instead, the burst
    alone (20) passed and the rest was refused, acknowledged and lost."""
    clock = FakeClock(start_wall=T0)
    paced = int(30 * BUDGET.paced().messages_per_s)
    assert await _backlog_passed(clock, 30.0, 0.0, _samples(0, paced)) == paced


async def test_the_reader_credits_the_budgets_with_a_time_the_loop_was_held() -> None:
    """The event loop held 30 s without a disconnect (a long GC, a slow disk, SIGSTOP): the
    backlog that then arrives at once on the same connection passes up to the hold past a
    beat (29.5 s of budget) plus the burst. Uncredited, the burst alone (20) passed."""
    clock = FakeClock(start_wall=T0)
    passed = await _backlog_passed(clock, 30.0, 0.0, _samples(0, 400), drop=False)
    assert passed == 20 + int((30 - BEAT_S) * BUDGET.messages_per_s)


async def test_a_hold_that_outlived_the_connection_is_credited_once() -> None:
    """The loop held 30 s, credited as such, and the connection it ended (the keepalive ran
    out meanwhile) resumed: the gap since the last read counts the hold once, 30 s in all
    (320 pass). Counted twice, 615 of the 700 passed."""
    clock = FakeClock(start_wall=T0)
    assert await _backlog_passed(clock, 30.0, 0.0, _samples(0, 700), held=True) == 320


def test_a_stall_watch_credits_a_held_loop_past_a_beat_once() -> None:
    """The loop held a beat longer than a beat: nothing (the burst covers it). Held 20 s: 19.5
    s credited, once; the credit ends like any gap's, as long again plus a minute after."""
    clock = FakeClock()
    budgets = NodeBudgets(BUDGET)
    watch = StallWatch(budgets, clock.monotonic, "test")
    clock.advance(2 * BEAT_S - 0.01)
    watch.seen()
    assert watch.credited_s == budgets.credit_s == 0
    clock.advance(20.0)
    watch.seen()
    watch.seen()
    assert watch.credited_s == budgets.credit_s == 20.0 - BEAT_S
    now = clock.monotonic()
    assert sum(budgets.take("n", 100, now) for _ in range(1000)) == 20 + 195
    now += 19.5 + 60 + 0.1
    assert sum(budgets.take("m", 100, now) for _ in range(1000)) == 20


class _Filled(NamedTuple):
    clock: FakeClock
    budgets: NodeBudgets
    broker: ScriptedBroker
    queue: asyncio.Queue[Unit | StopUnit]
    stop: asyncio.Event
    connected: asyncio.Event
    reader: Reader
    task: asyncio.Task[None]


async def _queue_filled() -> _Filled:
    """A reader subscribed, whose session's facts filled the writer's queue (room for one
    unit)."""
    clock = FakeClock(start_wall=T0)
    ingestor = Ingestor(clock, budget=BUDGET)
    budgets = ingestor.budgets
    assert budgets is not None
    broker = ScriptedBroker()
    queue: asyncio.Queue[Unit | StopUnit] = asyncio.Queue(maxsize=1)
    stop, connected = asyncio.Event(), asyncio.Event()
    reader = _reader(ingestor, broker, queue, stop, connected)
    task = asyncio.create_task(reader.run())
    await asyncio.wait_for(connected.wait(), 10)  # the session's facts fill the queue
    return _Filled(clock, budgets, broker, queue, stop, connected, reader, task)


async def test_a_hold_during_a_wait_for_the_writers_queue_is_credited_once() -> None:
    """The reader waits for room in the writer's full queue, and the loop is held 30 s
    meanwhile (credited as a hold, 29.5 s): once there is room, the wait credits only the
    rest, 30 s in all. Counted twice, 59.5 s."""
    clock, budgets, broker, queue, stop, _, reader, task = await _queue_filled()
    broker.deliver([broker.message(t, p) for t, p in _samples(0, 1)])
    await wait_until(lambda: value(reader.metrics.waits) == 1, what="the reader waiting")
    clock.advance(30.0)
    await wait_until(lambda: budgets.credit_s > 0, what="the loop's hold credited")
    queue.get_nowait()
    await wait_until(queue.full, what="the sample's unit queued")
    assert budgets.credit_s == 30.0
    await _stop_reader(stop, queue, task)


async def test_a_wait_for_the_writers_queue_after_a_resumed_session_is_credited() -> None:
    """The connection drops for 10 s while the writer's queue is full (a drain), and the
    resumed session's facts wait 30 s for room in it: both gaps are credited, 40 s in all,
    whether the loop was seen held meanwhile or not (the wait credits what the stall watch
    did not, once). Credited only the 10 s, the backlog the broker kept while the reader
    waited was refused as rate_limited."""
    clock, budgets, broker, queue, stop, connected, reader, task = await _queue_filled()
    await asyncio.sleep(0.05)  # the reader waits for its next read
    broker.drop_connection()
    await wait_until(lambda: value(reader.metrics.disconnects) == 1, what="the drop noticed")
    connected.clear()
    clock.advance(10.0)
    await wait_until(lambda: budgets.credit_s == 10.0, what="the resumed session's gap")
    await asyncio.sleep(0.05)  # the reader waits for room for the session's facts
    assert not connected.is_set()
    clock.advance(30.0)
    await asyncio.sleep(2 * BEAT_S)  # a watch, if any, sees the loop held
    queue.get_nowait()
    await asyncio.wait_for(connected.wait(), 10)
    assert budgets.credit_s == 40.0
    await _stop_reader(stop, queue, task)
