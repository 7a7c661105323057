"""A mass event's alert record written in parts (both backends): the same rows as in one
transaction, its notification once and only after every state it names, and a stop between
parts, or a part the store refuses, that loses nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import pytest
from pydantic import HttpUrl

from collector.alerts.evaluator import Evaluator
from collector.alerts.job import AlertJob
from collector.alerts.rule import Instance, Rule
from collector.counters import labelled_values, value
from collector.ingest.reader import StopUnit
from collector.ingest.validate import Ingestor
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.paths import PgTarget, StoreTarget
from collector.settings import ReceiverSettings
from collector.store.alerts import OutboxEntry
from collector.store.db import Store
from shared.clock import FakeClock
from tests.helpers import db_execute, db_rows

T0 = 1_800_000_000.0
HOOK = ReceiverSettings(name="hook", url=HttpUrl("http://127.0.0.1:9/hook"))


class _Fleet:
    """The nodes down now: the rule's condition."""

    def __init__(self) -> None:
        self.down: list[str] = []

    def __call__(self, view: LiveView, now: float) -> Iterable[Instance]:
        for node in self.down:
            yield Instance({"node": node})


class _Sent:
    """The delivery as the job sees it: each entry offered, checked against the store at
    that moment (what a separate connection sees is what is committed)."""

    def __init__(self, db: StoreTarget) -> None:
        self.db = db
        self.entries: list[OutboxEntry] = []
        self.uncommitted: list[str] = []

    def __call__(self, entries: list[OutboxEntry]) -> None:
        self.entries.extend(entries)
        stored = {f for (f,) in db_rows(self.db, "SELECT fingerprint FROM alerts")}
        for e in entries:
            named = {a["fingerprint"] for a in json.loads(e.body)["alerts"]}
            self.uncommitted.extend(sorted(named - stored))


def _job(fleet: _Fleet, sent: _Sent, clock: FakeClock, part_changes: int) -> AlertJob:
    rule = Rule("NodeDown", "critical", "{node} is down", "", fleet)
    return AlertJob(
        Evaluator([rule]),
        clock,
        receivers=[HOOK],
        notify=sent,
        part_changes=part_changes,
    )


async def _evaluate(
    job: AlertJob, store: Store, clock: FakeClock, at: float, *, parts: int | None = None
) -> int:
    """One evaluation at ``at``, its record written (``parts``: only that many); return the
    parts written."""
    clock.advance(at - clock.time())
    record = await job(store, LiveView())
    n = 1
    while await record.write(store):
        if parts is not None and n >= parts:
            break
        n += 1
    return n


def _tables(db: StoreTarget) -> tuple[list[tuple[object, ...]], ...]:
    return (
        db_rows(db, "SELECT fingerprint, state, active_at, starts_at FROM alerts ORDER BY 1"),
        db_rows(db, "SELECT fingerprint, previous, state, at FROM alert_history ORDER BY 1, 4"),
        db_rows(db, "SELECT receiver, status, state FROM outbox ORDER BY id"),
    )


async def test_a_mass_event_in_parts_records_what_one_transaction_does_and_notifies_once(
    store_url: StoreTarget, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """25 nodes down, then 25 more with the group's first notification: in parts of 4
    changes the tables end as with one transaction; the notification (50 alerts) is offered
    once, after the last part, and every alert it names is committed by then."""
    other: StoreTarget = tmp_path_factory.mktemp("whole") / "c.db"
    results = []
    for db, part in ((store_url, 4), (other, 10_000)):
        fleet, sent = _Fleet(), _Sent(db)
        clock = FakeClock(start_wall=T0)
        job = _job(fleet, sent, clock, part)
        async with Store(db) as store:
            fleet.down = [f"n{i:02d}" for i in range(25)]
            written = [await _evaluate(job, store, clock, T0)]
            fleet.down = [f"n{i:02d}" for i in range(50)]
            written.append(await _evaluate(job, store, clock, T0 + 6))  # past the group's wait
        assert written == ([7, 7] if part == 4 else [1, 1])
        assert sent.uncommitted == []
        assert [len(json.loads(e.body)["alerts"]) for e in sent.entries] == [50]
        results.append(_tables(db))
    assert results[0] == results[1]
    assert len(results[0][0]) == 50


async def test_a_stop_between_parts_loses_no_alert_and_sends_the_notification_once(
    store_url: StoreTarget,
) -> None:
    """Stopped after two of the second record's parts (its notification not committed): a
    restarted job restores the 8 alerts committed, finds the other 17 again and notifies
    the group once; every alert has one firing change in the history."""
    fleet, sent = _Fleet(), _Sent(store_url)
    async with Store(store_url) as store:
        fleet.down = [f"n{i:02d}" for i in range(25)]
        clock = FakeClock(start_wall=T0)
        job = _job(fleet, sent, clock, 4)
        assert await _evaluate(job, store, clock, T0 + 6, parts=2) == 2
        assert sent.entries == []
        (alerts, _, outbox) = _tables(store_url)
        assert len(alerts) == 8
        assert outbox == []

        clock = FakeClock(start_wall=T0 + 10)
        again = _job(fleet, sent, clock, 4)  # the restart
        assert await again.restore(store, hold_s=0.0) == 8
        await _evaluate(again, store, clock, T0 + 10)
        await _evaluate(again, store, clock, T0 + 16)  # past the group's wait
        await _evaluate(again, store, clock, T0 + 30)  # nothing new: nothing sent again
    assert sent.uncommitted == []
    assert [len(json.loads(e.body)["alerts"]) for e in sent.entries] == [25]
    alerts, history, outbox = _tables(store_url)
    assert len(alerts) == 25
    assert [(f, state) for f, _, state, _ in history] == [(f, "firing") for f, *_ in alerts]
    assert len(outbox) == 1


def _refuse_node(db: StoreTarget, node: str) -> None:
    """Make the store refuse the history row of ``node``'s alert (a constraint, as far as
    the writer can tell: rolled back, the store still writable)."""
    if isinstance(db, PgTarget):
        db_execute(
            db,
            "CREATE FUNCTION refuse_node() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF position('\"{node}\"' in NEW.labels) > 0 THEN "
            "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
        )
        db_execute(
            db,
            "CREATE TRIGGER refuse_node BEFORE INSERT ON alert_history "
            "FOR EACH ROW EXECUTE FUNCTION refuse_node()",
        )
    else:
        db_execute(
            db,
            "CREATE TRIGGER refuse_node BEFORE INSERT ON alert_history "
            f"WHEN instr(NEW.labels, '\"{node}\"') > 0 "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )


async def test_a_refused_middle_part_is_found_again_and_notified_once(
    store_url: StoreTarget,
) -> None:
    """The third of seven parts refused (the writer drops the rest of the record), and the
    record evaluated behind it (the group's notification of all 25, made from the states
    the refusal left uncommitted) dropped too: the next evaluation takes the 8 committed
    alerts back from the store and finds the other 17 again; the group is notified once,
    after every alert it names is committed; job and store agree, and a restart restores
    all 25, each with one firing change in the history."""
    fleet, sent = _Fleet(), _Sent(store_url)
    fleet.down = [f"n{i:02d}" for i in range(25)]
    clock = FakeClock(start_wall=T0)
    job = _job(fleet, sent, clock, 4)
    async with Store(store_url) as store:
        _refuse_node(store_url, "n09")  # in the third part: n08-n11
        queue: asyncio.Queue[WriterItem] = asyncio.Queue()
        writer = Writer(store, queue, Ingestor(clock), clock)
        queue.put_nowait(await job(store, LiveView()))
        clock.advance(6)  # past the group's wait: this record notifies the group
        queue.put_nowait(await job(store, LiveView()))
        done = asyncio.get_running_loop().create_future()
        queue.put_nowait(StopUnit(done))
        await writer.run()
        assert labelled_values(writer.metrics.job_failures) == {"alerts": 1}
        assert len(_tables(store_url)[0]) == 8
        assert sent.entries == []

        db_execute(
            store_url,
            "DROP TRIGGER refuse_node"
            + (" ON alert_history" if isinstance(store_url, PgTarget) else ""),
        )
        for at in (T0 + 12, T0 + 18, T0 + 30):  # found again; the group's wait; nothing new
            await _evaluate(job, store, clock, at)
        alerts, history, outbox = _tables(store_url)
        assert sorted((s.fingerprint, s.state) for s in job._evaluator.states()) == [
            (f, state) for f, state, *_ in alerts
        ]

        again = _job(fleet, sent, FakeClock(start_wall=T0 + 40), 4)  # a restart
        assert await again.restore(store, hold_s=0.0) == 25
    assert sent.uncommitted == []
    assert [len(json.loads(e.body)["alerts"]) for e in sent.entries] == [25]
    assert len(alerts) == 25
    assert value(job.metrics.changes) == 25  # the changes committed, each once
    assert [(f, state) for f, _, state, _ in history] == [(f, "firing") for f, *_ in alerts]
    assert len(outbox) == 1


class _Things:
    """Node a's things now, an alert each: the rule's condition."""

    def __init__(self) -> None:
        self.on: list[str] = []

    def __call__(self, view: LiveView, now: float) -> Iterable[Instance]:
        for thing in self.on:
            yield Instance({"node": "a", "thing": thing})


async def test_a_take_back_counts_each_nodes_alerts_once_against_its_bound(
    store_url: StoreTarget,
) -> None:
    """Node a's four things (the rule holds at most 4 a node) in parts of one change, the
    third refused: the take-back restores the two committed and the next evaluation finds
    the other two again; when all four go, four new things are held. (The per-node counts
    kept what the job held before the take-back, so the restored alerts counted twice: the
    refused two were dropped as over the bound, and the counts never came back down.)"""
    things = _Things()
    rule = Rule("Thing", "warning", "{thing} on {node}", "", things, max_per_node=4)
    clock = FakeClock(start_wall=T0)
    job = AlertJob(Evaluator([rule]), clock, part_changes=1)
    async with Store(store_url) as store:
        _refuse_node(store_url, "t2")  # the third part
        things.on = ["t0", "t1", "t2", "t3"]
        queue: asyncio.Queue[WriterItem] = asyncio.Queue()
        writer = Writer(store, queue, Ingestor(clock), clock)
        queue.put_nowait(await job(store, LiveView()))
        queue.put_nowait(StopUnit(asyncio.get_running_loop().create_future()))
        await writer.run()
        assert labelled_values(writer.metrics.job_failures) == {"alerts": 1}
        db_execute(
            store_url,
            "DROP TRIGGER refuse_node"
            + (" ON alert_history" if isinstance(store_url, PgTarget) else ""),
        )

        def held() -> list[str]:
            rows = db_rows(store_url, "SELECT labels FROM alerts")
            return sorted(json.loads(labels)["thing"] for (labels,) in rows)

        assert held() == ["t0", "t1"]
        await _evaluate(job, store, clock, T0 + 5)  # taken back; t2, t3 found again
        assert held() == ["t0", "t1", "t2", "t3"]
        things.on = ["u0", "u1", "u2", "u3"]
        await _evaluate(job, store, clock, T0 + 10)  # the four resolve (the u's wait)
        await _evaluate(job, store, clock, T0 + 15)
        assert held() == ["u0", "u1", "u2", "u3"]


async def test_a_pending_alert_gone_beside_a_refused_change_is_counted_cleared_once(
    store_url: StoreTarget,
) -> None:
    """A pending alert that goes away in the evaluation whose record the store refuses (a
    node's firing change refused, the pending alert's end in the same part): the take-back
    restores it pending from the store, and it goes away again at the next evaluation;
    ``alert_pending_cleared`` counts it once, as it is committed (it counted it twice)."""
    down, slow = _Fleet(), _Fleet()
    ev = Evaluator(
        [
            Rule("NodeDown", "critical", "{node} is down", "", down),
            Rule("NodeSlow", "warning", "{node} is slow", "", slow, for_s=60),
        ]
    )
    clock = FakeClock(start_wall=T0)
    job = AlertJob(ev, clock)
    async with Store(store_url) as store:
        slow.down = ["s0"]
        await _evaluate(job, store, clock, T0)  # s0 pending, committed
        _refuse_node(store_url, "n0")
        down.down, slow.down = ["n0"], []
        queue: asyncio.Queue[WriterItem] = asyncio.Queue()
        writer = Writer(store, queue, Ingestor(clock), clock)
        clock.advance(5)
        queue.put_nowait(await job(store, LiveView()))
        queue.put_nowait(StopUnit(asyncio.get_running_loop().create_future()))
        await writer.run()
        assert labelled_values(writer.metrics.job_failures) == {"alerts": 1}
        assert db_rows(store_url, "SELECT rule, state FROM alerts") == [("NodeSlow", "pending")]
        db_execute(
            store_url,
            "DROP TRIGGER refuse_node"
            + (" ON alert_history" if isinstance(store_url, PgTarget) else ""),
        )
        await _evaluate(job, store, clock, T0 + 10)  # taken back: s0 pending, then gone
        assert db_rows(store_url, "SELECT rule, state FROM alerts") == [("NodeDown", "firing")]
    assert labelled_values(ev.metrics.pending_cleared) == {"NodeSlow": 1}
