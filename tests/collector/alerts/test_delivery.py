"""Webhook delivery against a real HTTP receiver on loopback, on a fake clock.

The rig is the collector's own path: a rule fires in an :class:`AlertJob` run by the real
:class:`Writer` on a real store, the outbox row is committed with the change, the
:class:`Delivery` sends it and its outcome comes back through the writer's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import HttpUrl, SecretStr

from collector.alerts.delivery import Delivery, read_pending
from collector.alerts.evaluator import Evaluator
from collector.alerts.fingerprint import fingerprint
from collector.alerts.job import AlertJob
from collector.alerts.route import ALL_LABELS, Route
from collector.alerts.rule import Instance, Rule
from collector.alerts.silence import DEFAULT_INHIBIT_RULES, InhibitRule
from collector.alerts.webhook import ZERO_TIME, rfc3339
from collector.counters import value
from collector.evaluate import PeriodicEvaluator
from collector.ingest.reader import StopUnit
from collector.ingest.validate import Ingestor
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.localbroker import free_port
from collector.settings import ReceiverSettings
from collector.store.alerts import OutboxEntry, OutboxReport
from collector.store.db import Store
from shared.clock import FakeClock
from tests.collector.alerts.receiver import Answer, Receiver, each
from tests.helpers import collector_cli, db_rows, wait_until

SECRET = "s3cret-shared-with-the-receiver"


class Switch:
    """A rule condition the test turns on and off per node."""

    def __init__(self) -> None:
        self.active: set[str] = set()

    def __call__(self, view: LiveView, now: float) -> Iterable[Instance]:
        for node in sorted(self.active):
            yield Instance({"node": node}, {"value": "1"})


@dataclass
class Rig:
    """A running writer + alert job + delivery on ``db``; ``step`` evaluates the rule."""

    db: Path
    clock: FakeClock
    switch: Switch
    delivery: Delivery
    offline: Switch = field(default_factory=Switch)
    """Turns a ``NodeOffline`` rule on per node."""
    evaluated_at: Callable[[], float] = lambda: 0.0
    """Clock time of the alert job's last recorded evaluation."""

    async def tick(self, seconds: float) -> None:
        """Move the clock on and wait until the alert job has evaluated (and recorded) at the
        new time or later."""
        self.clock.advance(seconds)
        target = self.clock.time()
        await wait_until(lambda: self.evaluated_at() >= target, what="an evaluation")

    def step(self, seconds: float = 1.0) -> None:
        """Move the clock on: the alert job runs, due retries go out."""
        self.clock.advance(seconds)

    def outbox(self, columns: str = "state, attempts, last_status") -> list[tuple[Any, ...]]:
        """Outbox rows, oldest first."""
        return db_rows(self.db, f"SELECT {columns} FROM outbox ORDER BY id")


def receiver_settings(url: str, **kw: Any) -> ReceiverSettings:
    """A receiver named ``hook`` at ``url``."""
    return ReceiverSettings(name=kw.pop("name", "hook"), url=HttpUrl(url), **kw)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    receivers: list[ReceiverSettings],
    clock: FakeClock | None = None,
    routes: list[Route] | None = None,
    inhibit_rules: Sequence[InhibitRule] = DEFAULT_INHIBIT_RULES,
) -> AsyncIterator[Rig]:
    """The collector's alert and delivery path, stopped (writer first) when the test ends.

    Default route: every receiver, no grouping, no waiting (one message per change)."""
    if routes is None:
        names = tuple(r.name for r in receivers)
        routes = [Route((), names, (ALL_LABELS,), 0.0, 0.0, 4 * 3600.0)]
    clock = clock or FakeClock()
    db = tmp_path / "capwatch.db"
    switch, offline = Switch(), Switch()
    offline_rule = Rule("NodeOffline", "critical", "{node} is offline", "", offline)
    rule = Rule(
        name="TestAlert",
        severity="warning",
        summary="{node} is hot",
        description="value {value}",
        condition=switch,
    )
    async with Store(db) as store:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=8)
        delivery = Delivery(
            receivers,
            queue.put,
            clock,
            load_pending=read_pending(db),
            rescan_s=0.05,
            poll_s=0.01,
            rng=random.Random(7),
        )
        job = AlertJob(
            Evaluator([rule, offline_rule]),
            clock,
            interval_s=0.05,
            receivers=receivers,
            external_url="http://capwatch.example:8080",
            notify=delivery.offer,
            routes=routes,
            inhibit_rules=inhibit_rules,
        )
        await job.restore(store, hold_s=0.0)
        writer = Writer(store, queue, Ingestor(clock), clock)
        async with Store.open_readonly(db) as reads, asyncio.TaskGroup() as tg:
            evaluator = PeriodicEvaluator([job], LiveView(), reads, queue, clock)
            tg.create_task(writer.run(), name="writer")
            evaluating = tg.create_task(evaluator.run(), name="evaluator")
            tg.create_task(delivery.run(), name="delivery")
            # The evaluator schedules the job from its start: nudge the clock until it has run.
            while not value(job.metrics.evaluations):
                clock.advance(0.05)
                await asyncio.sleep(0.01)
            yield Rig(db, clock, switch, delivery, offline, lambda: job.evaluated_at)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await queue.put(StopUnit(done))
            await done
            evaluating.cancel()
            delivery.stop()


async def _first_try_backs_off(rig: Rig, status: int) -> None:
    """A notification fires; its first try is answered ``status``: it stays pending, its next
    try one backoff later (0.5 s with jitter)."""
    rig.switch.active.add("n1")
    rig.step()
    await wait_until(lambda: rig.outbox() == [("pending", 1, status)], what=f"the {status}")
    (next_at,) = rig.outbox("next_at - created")[0]
    assert 0.25 <= next_at <= 0.5


async def test_receiver_gets_the_v4_body_with_a_signature_it_verifies(tmp_path: Path) -> None:
    """Firing then resolved: Alertmanager's version-4 JSON, HMAC-SHA256 over ``ts:body``."""
    with Receiver().serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url, secret=SecretStr(SECRET))]) as rig:
            rig.switch.active.add("n1")
            rig.step()
            fired_at = rig.clock.time()
            await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="delivered")
            rig.switch.active.clear()
            rig.step()
            resolved_at = rig.clock.time()
            await wait_until(lambda: len(rx.received()) == 2, what="the resolved notification")
            await wait_until(lambda: rig.outbox("state")[-1] == ("delivered",), what="recorded")
    firing, resolved = rx.received()
    for req in (firing, resolved):
        ts = req.headers["x-capwatch-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{ts}:".encode() + req.body, hashlib.sha256)
        assert req.headers["x-capwatch-signature"] == expected.hexdigest()
        assert req.headers["content-type"] == "application/json"
    assert firing.headers["x-capwatch-timestamp"] == str(int(fired_at))
    labels = {"alertname": "TestAlert", "node": "n1", "severity": "warning"}
    fp = fingerprint(labels)
    body = json.loads(firing.body)
    assert body == {
        "version": "4",
        "groupKey": '{}:{alertname="TestAlert", node="n1", severity="warning"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "hook",
        "groupLabels": labels,
        "commonLabels": labels,
        "commonAnnotations": {"summary": "n1 is hot", "description": "value 1"},
        "externalURL": "http://capwatch.example:8080",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "n1 is hot", "description": "value 1"},
                "startsAt": rfc3339(fired_at),
                "endsAt": ZERO_TIME,
                "generatorURL": f"http://capwatch.example:8080/alerts?fingerprint={fp}",
                "fingerprint": fp,
            }
        ],
    }
    after = json.loads(resolved.body)
    assert after["status"] == "resolved"
    assert after["alerts"][0]["status"] == "resolved"
    assert after["alerts"][0]["startsAt"] == rfc3339(fired_at)
    assert after["alerts"][0]["endsAt"] == rfc3339(resolved_at)
    keys = [
        uuid for (uuid,) in db_rows(tmp_path / "capwatch.db", "SELECT uuid FROM outbox ORDER BY id")
    ]
    assert list(each([firing, resolved], "Idempotency-Key")) == keys
    assert len(set(keys)) == 2


async def test_503_twice_then_200_is_delivered_once_with_one_idempotency_key(
    tmp_path: Path,
) -> None:
    """5xx is retried with backoff; the key stays; nothing is sent after the 200."""
    script = [Answer(503, body=b"busy"), Answer(503, body=b"busy"), Answer(200)]
    with Receiver(script=script).serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)]) as rig:
            await _first_try_backs_off(rig, 503)
            rig.step(1.0)
            await wait_until(lambda: rig.outbox() == [("pending", 2, 503)], what="second 503")
            rig.step(1.0)
            await wait_until(lambda: rig.outbox() == [("delivered", 3, 200)], what="delivered")
            # A later notification goes out after it: the first is not sent again.
            rig.switch.active.clear()
            rig.step(120.0)

            # A cycle the step found running read the switch before it was cleared, and the
            # next is due on the fake clock after the step: keep the clock moving.
            def resolved_sent() -> bool:
                rig.step(0.1)
                return len(rig.outbox()) == 2

            await wait_until(resolved_sent, what="the resolved notification")
            await wait_until(lambda: rig.outbox()[1] == ("delivered", 1, 200), what="resolved")
    keys = list(each(rx.received(), "Idempotency-Key"))
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2] != keys[3]


async def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    """``Retry-After: 120``: the next try is not sent before 120 s have passed."""
    script = [Answer(429, {"Retry-After": "120"}, b"slow down"), Answer(200)]
    with Receiver(script=script).serve() as rx:
        settings = receiver_settings(rx.url, secret=SecretStr(SECRET))
        async with running(tmp_path, [settings]) as rig:
            rig.switch.active.add("n1")
            rig.step()
            await wait_until(lambda: rig.outbox() == [("pending", 1, 429)], what="the 429")
            first = int(rx.received()[0].headers["x-capwatch-timestamp"])
            assert rig.outbox("next_at - created") == [(120.0,)]
            for _ in range(11):
                rig.step(10.0)  # 110 s: not yet
            rig.step(15.0)
            await wait_until(lambda: rig.outbox() == [("delivered", 2, 200)], what="delivered")
    second = int(rx.received()[1].headers["x-capwatch-timestamp"])
    assert second - first >= 120
    assert len(rx.received()) == 2


async def test_429_with_retry_after_0_still_backs_off(tmp_path: Path) -> None:
    """``Retry-After: 0`` (or a date already past) is no licence to hammer: the next try
    waits at least the usual backoff (it was sent again at once, in a loop as fast as the
    receiver answered, for max_age_s)."""
    script = [Answer(429, {"Retry-After": "0"}, b"slow down")] * 3 + [Answer(200)]
    with Receiver(script=script).serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)]) as rig:
            await _first_try_backs_off(rig, 429)
            await asyncio.sleep(0.5)  # the clock stands still: nothing is due
            assert len(rx.received()) == 1
            for _ in range(6):
                rig.step(2.0)
                await asyncio.sleep(0.05)
            await wait_until(lambda: rig.outbox() == [("delivered", 4, 200)], what="delivered")
    assert len(rx.received()) == 4


async def test_429_with_a_retry_after_that_only_looks_like_digits_is_retried(
    tmp_path: Path,
) -> None:
    """``Retry-After: ²`` (byte 0xb2, which HTTP clients read as Latin-1) passes
    ``str.isdigit`` yet is no number: an unreadable value, so the usual backoff, then the
    200; the delivery goes on (it once raised ValueError out of the receiver's worker)."""
    script = [Answer(429, {"Retry-After": "\xb2"}, b"slow down"), Answer(200)]
    with Receiver(script=script).serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)]) as rig:
            await _first_try_backs_off(rig, 429)  # not Retry-After's wait
            rig.step(1.0)
            await wait_until(lambda: rig.outbox() == [("delivered", 2, 200)], what="delivered")
    assert len(rx.received()) == 2


async def test_400_is_a_dead_letter_at_once_with_the_response(tmp_path: Path) -> None:
    """A 4xx other than 429 is not retried; status and the answer's head are kept."""
    with Receiver(script=[Answer(400, body=b"bad payload: no field 'foo'")]).serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)]) as rig:
            rig.switch.active.add("n1")
            rig.step()
            await wait_until(lambda: rig.outbox() == [("dead", 1, 400)], what="dead letter")
            rig.step(120.0)
            rig.step(120.0)
        assert len(rx.received()) == 1
    (error, head) = rig.outbox("last_error, response_head")[0]
    assert error == "HTTP 400: not retried"
    assert head == "bad payload: no field 'foo'"


def _cli(*args: str) -> tuple[int, str]:
    code, out, _ = collector_cli("alerts", *args)
    return code, out


async def test_receiver_down_past_max_age_is_listed_then_redelivered(tmp_path: Path) -> None:
    """Connection refused until max_age_s: a dead letter in ``--dead-letters``; once the
    receiver is up, ``--redeliver`` sends it with the same idempotency key."""
    port = free_port()
    settings = receiver_settings(f"http://127.0.0.1:{port}/hook", max_age_s=30)
    # --redeliver gives the row a fresh max_age_s from the system's time: start the fake
    # clock so that it is still behind that when the row is dead.
    async with running(tmp_path, [settings], FakeClock(start_wall=time.time() - 50)) as rig:
        rig.switch.active.add("n1")
        rig.step()
        await wait_until(lambda: rig.outbox()[:1] == [("pending", 1, None)], what="refused")
        (error,) = rig.outbox("last_error")[0]
        assert "ConnectError" in error
        for _ in range(31):
            rig.step(1.0)
        await wait_until(lambda: rig.outbox("state") == [("dead",)], what="dead letter")
        (uuid, error) = rig.outbox("uuid, last_error")[0]
        assert "max_age_s" in error

        code, text = _cli("--dead-letters", "--db", str(rig.db))
        assert code == 0
        header, line = text.splitlines()
        assert header.split()[:4] == ["ID", "RECEIVER", "ALERT", "STATUS"]
        assert line.split()[:3] == ["1", "hook", "TestAlert"]
        code, text = _cli("--dead-letters", "--json", "--db", str(rig.db))
        (listed,) = json.loads(text)["dead_letters"]
        assert (listed["id"], listed["receiver"], listed["uuid"]) == (1, "hook", uuid)
        assert "max_age_s" in listed["last_error"]

        with Receiver(port=port).serve() as rx:
            code, text = _cli("--redeliver", "1", "--db", str(rig.db))
            assert code == 0
            rig.step()
            await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="redelivered")
        assert list(each(rx.received(), "Idempotency-Key")) == [uuid]
    assert _cli("--dead-letters", "--db", str(rig.db)) == (0, "no dead letters\n")


async def test_redeliver_of_an_unknown_id_is_one_line(tmp_path: Path) -> None:
    """``--redeliver`` names the id when there is no such dead letter (exit 2)."""
    async with running(tmp_path, []):
        pass
    code, _ = _cli("--redeliver", "7", "--db", str(tmp_path / "capwatch.db"))
    assert code == 2


async def test_a_dead_receiver_does_not_hold_up_another(tmp_path: Path) -> None:
    """One receiver never answers (timeouts); the other gets its notification at once."""
    with Receiver().serve() as good:
        # A listening socket nobody accepts on: connects, then silence until the timeout.
        import socket  # noqa: PLC0415

        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            dead_url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
            receivers = [
                receiver_settings(dead_url, name="dead", timeout_s=30),
                receiver_settings(good.url, name="good"),
            ]
            async with running(tmp_path, receivers) as rig:
                rig.switch.active.update({"n1", "n2", "n3"})
                rig.step()
                await wait_until(lambda: len(good.received()) == 3, what="the good receiver")
                # The outcomes reach the store through the writer's queue, just after.
                await wait_until(
                    lambda: (
                        db_rows(rig.db, "SELECT count(*) FROM outbox WHERE state = 'delivered'")
                        == [(3,)]
                    ),
                    what="the good receiver's outcomes recorded",
                )
                states = db_rows(rig.db, "SELECT receiver, state, attempts FROM outbox")
                assert sorted(s for s in states if s[0] == "good") == [("good", "delivered", 1)] * 3
                assert sorted(s for s in states if s[0] == "dead") == [("dead", "pending", 0)] * 3


async def test_rows_left_pending_by_a_previous_run_are_sent_at_start(tmp_path: Path) -> None:
    """The outbox is the truth: a new delivery task finds what the last one did not send."""
    port = free_port()
    settings = receiver_settings(f"http://127.0.0.1:{port}/hook")
    clock = FakeClock()
    async with running(tmp_path, [settings], clock) as rig:
        rig.switch.active.add("n1")
        rig.step()
        await wait_until(lambda: rig.outbox()[:1] == [("pending", 1, None)], what="refused")
    with Receiver(port=port).serve() as rx:
        async with running(tmp_path, [settings], clock) as rig:
            rig.step()
            await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="delivered")
    assert len(rx.received()) == 1
    assert json.loads(rx.received()[0].body)["status"] == "firing"


async def test_a_rescan_before_the_outcome_is_committed_does_not_send_again() -> None:
    """Delivered but not yet recorded (the writer is busy): the row still reads pending,
    and rescans must not send it a second time."""
    clock = FakeClock()
    entry = OutboxEntry(1, "key-1", "hook", "{}", clock.time(), clock.time() + 60, 0, 0.0, 0)
    scans = 0

    async def load_pending() -> list[OutboxEntry]:
        nonlocal scans
        scans += 1
        return [entry]  # the writer never records the outcome in this test

    reports: list[OutboxReport] = []

    async def report(r: OutboxReport) -> None:
        reports.append(r)

    with Receiver().serve() as rx:
        delivery = Delivery(
            [receiver_settings(rx.url)], report, clock, load_pending=load_pending, rescan_s=0.01
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(delivery.run(), name="delivery")
            await wait_until(lambda: bool(reports), what="the delivered outcome")
            seen = scans
            await wait_until(lambda: scans >= seen + 5, what="five more rescans")
            delivery.stop()
    assert len(rx.received()) == 1
    assert [o.state for r in reports for o in r.outcomes] == ["delivered"]


async def test_a_row_both_rescanned_and_handed_over_is_sent_once() -> None:
    """A row committed just before a rescan reaches the delivery twice, from the store and
    from the writer's hand-off: it is still sent once."""
    clock = FakeClock()
    entry = OutboxEntry(1, "key-1", "hook", "{}", clock.time(), clock.time() + 60, 0, 0.0, 0)
    reports: list[OutboxReport] = []

    async def load_pending() -> list[OutboxEntry]:
        return [entry]  # the rescan at start sees the row the writer just committed

    async def report(r: OutboxReport) -> None:
        reports.append(r)

    with Receiver().serve() as rx:
        delivery = Delivery(
            [receiver_settings(rx.url)], report, clock, load_pending=load_pending, rescan_s=60
        )
        delivery.offer([entry])  # ... and the writer hands the same row over
        async with asyncio.TaskGroup() as tg:
            tg.create_task(delivery.run(), name="delivery")
            await wait_until(lambda: bool(reports), what="the delivered outcome")
            await asyncio.sleep(0.2)  # a second send would arrive meanwhile
            delivery.stop()
    assert len(rx.received()) == 1
