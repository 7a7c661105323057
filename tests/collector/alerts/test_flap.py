"""A node flipping what it reports cannot make alerts fire and resolve at the evaluation rate.

The node's samples go through the real validation (:class:`Ingestor`) into the live view; the
built-in rules are built as the collector builds them from its default settings (``[alerts]``,
and the staleness with its floor) and evaluated every second (``alerts.eval_interval_s``) on a
fake clock. What bounds a flapping node: ``keep_firing_for`` (an alert resolves only once its
condition has been gone that long; the condition coming back cancels the countdown, as in
Prometheus 2.42+), and for ``NodeStale`` the shortest sample interval staleness believes.

The bound stated: an alert fires only after its condition held ``for_s`` and resolves only
after it was gone ``keep_firing_for_s``, so one alert makes at most ``1 + T / (for_s +
keep_firing_for_s)`` fire/resolve pairs in ``T`` seconds, whatever the node's rhythm: for
``GpuEccUncorrectable`` and ``GpuRowRemap`` (15 min) one in 10 minutes, for ``NodeStale``
(1 min) 11. ``NodeOffline`` follows the node's status messages (30 s ``for``, 5 min
``keep_firing_for``): one in 10 minutes; kept firing after its node is back, it mutes none of
the node's other alerts.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
from pydantic import HttpUrl

from collector.alerts.builtin import HW_THERMAL_SLOWDOWN, builtin_rules
from collector.alerts.delivery import Delivery, read_pending
from collector.alerts.evaluator import Evaluator, Transition
from collector.alerts.job import AlertJob
from collector.alerts.route import ALL_LABELS, Route
from collector.alerts.rule import Rule
from collector.evaluate import run_once
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.settings import CollectorSettings, ReceiverSettings
from collector.store.alerts import OutboxReport
from collector.store.db import Store
from shared.clock import FakeClock
from shared.topics import sample_topic, status_topic
from tests.collector.alerts.receiver import Receiver
from tests.helpers import collector_cli, db_rows, wait_until
from tests.shared.wire_samples import sample_dict, status_dict

NODE = "x1000c0s0b0n0"
T0 = 1_800_000_000.0
TEN_MINUTES_S: Final = 600


def _ecc(d: dict[str, Any]) -> None:
    for g in d["gpus"]:
        g["ecc"]["uncorrected_volatile"] = 2


def _remap(d: dict[str, Any]) -> None:
    for g in d["gpus"]:
        g["remapped_rows"]["pending"] = True


def _hot(d: dict[str, Any]) -> None:
    for g in d["gpus"]:
        g["temp_c"] = 95.0


def _throttled(d: dict[str, Any]) -> None:
    for g in d["gpus"]:
        g["clock_event_reasons"] = 0x4 | HW_THERMAL_SLOWDOWN


def _xid(d: dict[str, Any]) -> None:
    d["xids"] = [{"gpu_index": g["index"], "xid": 79, "ts": d["ts"]} for g in d["gpus"]]


def _idle(d: dict[str, Any]) -> None:
    for g in d["gpus"]:
        g["util_pct"] = 1.0


BAD: Final[dict[str, Callable[[dict[str, Any]], None]]] = {
    "GpuEccUncorrectable": _ecc,
    "GpuRowRemap": _remap,
    "GpuTemperature": _hot,
    "GpuClockThrottled": _throttled,
    "GpuXid": _xid,
    "JobGpuIdle": _idle,
}
"""Per rule, what a sample that makes its condition hold on every GPU changes."""


def _defaults() -> list[Rule]:
    """The built-in rules as the collector builds them from its default settings."""
    s = CollectorSettings()
    return builtin_rules(s.alerts, s.staleness())


class _Node:
    """One node as the collector hears it, the built-in rules evaluated on its live view."""

    def __init__(
        self, clock: FakeClock, rules: list[Rule] | None = None, *, online: bool = True
    ) -> None:
        """``online``: the node's online status heard at once (else: no status yet)."""
        self.clock = clock
        self.view = LiveView()
        self.ingestor = Ingestor(clock, live=self.view)
        if online:
            self.status("online")
        self.ev = Evaluator(_defaults() if rules is None else rules)
        self.seq = 0
        self.log: list[Transition] = []

    def send(self, *bad: Callable[[dict[str, Any]], None], interval_s: float = 1.0) -> None:
        """A healthy sample (the realistic one, no XID), with each of ``bad`` applied."""
        d = sample_dict()
        d["xids"] = []
        self.seq += 1
        d["seq"], d["ts"], d["interval_s"] = self.seq, self.clock.time(), interval_s
        for change in bad:
            change(d)
        item = self.ingestor.handle(sample_topic(NODE), json.dumps(d).encode())
        assert type(item).__name__ == "SampleRow", item

    def status(self, status: str) -> None:
        """The node's status message (``online``/``offline``, as its agent or the broker's
        last will publishes it) through the ingest path."""
        d = {**status_dict(), "status": status, "ts": self.clock.time()}
        item = self.ingestor.handle(status_topic(NODE), json.dumps(d).encode())
        assert type(item).__name__ == "NodeUpdate", item

    def evaluate(self) -> None:
        """One evaluation 10 ms after the clock's second (a sample sent on it is 10 ms old),
        then the clock on to the next second."""
        self.clock.advance(0.01)
        self.log += self.ev.evaluate(self.view, self.clock.time())
        self.clock.advance(0.99)

    def changes(self, rule: str) -> Counter[str]:
        """How many transitions of ``rule``'s alerts went to each state."""
        return Counter(t.state for t in self.log if t.rule == rule)

    def per_alert(self, rule: str, state: str) -> Counter[str]:
        """Transitions of ``rule`` to ``state``, per alert (fingerprint)."""
        return Counter(t.fingerprint for t in self.log if t.rule == rule and t.state == state)


def _bound(rule: Rule, seconds: float) -> int:
    """Fire/resolve pairs one alert of ``rule`` can make in ``seconds`` at most (module)."""
    cycle = rule.for_s + rule.keep_firing_for_s
    assert cycle >= 60, f"{rule.name}: for + keep_firing_for = {cycle:g} s, it can flap"
    return 1 + int(seconds // cycle)


RHYTHMS = [(1, 1), (1, 3), (1, 4), (3, 2), (60, 4), (61, 61), (1, 59), (120, 65)]
"""(on, off) seconds: the condition held ``on`` seconds (one sample a second), then not for
``off``; for NodeStale, samples for ``on`` seconds, then silence for ``off``."""


@pytest.mark.parametrize(("on", "off"), RHYTHMS)
@pytest.mark.parametrize("name", sorted(BAD))
def test_a_gpu_rule_flipped_in_any_rhythm_makes_bounded_pairs(name: str, on: int, off: int) -> None:
    """Ten minutes of a node holding a GPU rule's condition ``on`` s then not ``off`` s, on
    all 8 GPUs: each alert fires at most 1 + 600 s / (for + keep_firing_for) times, and
    resolves at most as often."""
    node = _Node(FakeClock(start_wall=T0))
    rule = node.ev.rules[name]
    for k in range(TEN_MINUTES_S):
        node.send(*((BAD[name],) if k % (on + off) < on else ()))
        node.evaluate()
    fired, resolved = node.per_alert(name, "firing"), node.per_alert(name, "resolved")
    most = max(fired.values(), default=0)
    assert most <= 1 + TEN_MINUTES_S // 60, f"an alert of {name} fired {most} times"
    assert most <= _bound(rule, TEN_MINUTES_S)
    assert all(resolved[fp] <= fired[fp] for fp in resolved)


@pytest.mark.parametrize(("on", "off"), RHYTHMS)
def test_a_node_sending_in_any_rhythm_makes_bounded_node_stale_pairs(on: int, off: int) -> None:
    """Ten minutes of a node claiming a 10 ms interval (the schema's least) and sending one
    sample a second for ``on`` s, then nothing for ``off`` s: NodeStale fires at most 1 + 600 s
    / (for + keep_firing_for) times; a node silent for no more than 3 s (3 x the 1 s
    evaluation interval, the shortest interval staleness believes) is never stale."""
    node = _Node(FakeClock(start_wall=T0))
    for k in range(TEN_MINUTES_S):
        if k % (on + off) < on:
            node.send(interval_s=0.01)
        node.evaluate()
    fired = node.changes("NodeStale")["firing"]
    assert fired <= 1 + TEN_MINUTES_S // 60, f"NodeStale fired {fired} times"
    assert fired <= _bound(node.ev.rules["NodeStale"], TEN_MINUTES_S)
    assert node.changes("NodeStale")["resolved"] <= fired
    if off <= 2:  # the newest sample is at most off + 0.01 s old at an evaluation
        assert fired == 0


@pytest.mark.parametrize("name", ["GpuEccUncorrectable", "GpuRowRemap"])
def test_an_honest_memory_error_fires_at_once_and_resolves_15_minutes_after_it_clears(
    name: str,
) -> None:
    """An uncorrected ECC count (a pending remap) that stays fires at the first evaluation
    that sees it; once the driver reload clears it, the alert resolves at the first
    evaluation 15 min (``ecc_keep_firing_for_s``) after the first one without it."""
    node = _Node(FakeClock(start_wall=T0))
    node.send(BAD[name])
    node.evaluate()
    assert node.changes(name) == {"firing": 8}
    for _ in range(300):  # five minutes, the error stays
        node.send(BAD[name])
        node.evaluate()
    cleared_at = node.clock.time()
    for _ in range(900):
        node.send()
        node.evaluate()
    assert node.changes(name) == {"firing": 8}
    node.send()
    node.evaluate()
    assert node.changes(name) == {"firing": 8, "resolved": 8}
    assert {t.at for t in node.log if t.state == "resolved"} == {cleared_at + 900.01}


def test_an_honestly_stale_node_fires_at_once_and_resolves_a_minute_after_it_is_back() -> None:
    """A node sampling every 5 s that falls silent is NodeStale at the first evaluation past
    3 x 5 s; sampling again, the alert resolves a minute (``stale_keep_firing_for_s``) after
    the first evaluation that found it fresh."""
    node = _Node(FakeClock(start_wall=T0))
    node.send(interval_s=5.0)
    for _ in range(15):  # the newest sample 15.01 s old at the 15th evaluation
        node.evaluate()
    assert node.changes("NodeStale") == {}
    node.evaluate()
    assert node.changes("NodeStale") == {"firing": 1}
    back_at = node.clock.time()
    for k in range(60):
        if k % 5 == 0:
            node.send(interval_s=5.0)
        node.evaluate()
    assert node.changes("NodeStale") == {"firing": 1}
    node.evaluate()
    assert node.changes("NodeStale") == {"firing": 1, "resolved": 1}
    assert [t.at for t in node.log if t.state == "resolved"] == [back_at + 60.01]


class _Collector:
    """The collector's alert job over ``node``'s live view, recording into a real store, and
    its delivery to a real receiver on loopback, on a route that notifies every change of
    every alert at once (one group per alert, no wait)."""

    def __init__(self, node: _Node, store: Store, rx: Receiver, store_url: StoreTarget) -> None:
        self.node, self.store, self.rx, self.store_url = node, store, rx, store_url
        hook = ReceiverSettings(name="hook", url=HttpUrl(rx.url))

        async def report(r: OutboxReport) -> None:
            pass  # outcomes unrecorded: the receiver's requests are what the tests count

        self.delivery = Delivery(
            [hook], report, node.clock, load_pending=read_pending(store_url), poll_s=0.01
        )
        self.job = AlertJob(
            node.ev,
            node.clock,
            interval_s=1.0,
            receivers=[hook],
            notify=self.delivery.offer,
            routes=[Route((), ("hook",), (ALL_LABELS,), 0.0, 0.0, 4 * 3600.0)],
        )

    async def evaluate(self) -> None:
        """One evaluation 10 ms after the clock's second, its record written; then the clock
        on to the next second (as :meth:`_Node.evaluate`)."""
        self.node.clock.advance(0.01)
        await run_once(self.job, self.store, self.node.view)
        self.node.clock.advance(0.99)


@asynccontextmanager
async def _collector(store_url: StoreTarget, node: _Node) -> AsyncIterator[_Collector]:
    """A :class:`_Collector` with its receiver served and its delivery running."""
    with Receiver().serve() as rx:
        async with Store(store_url) as store, asyncio.TaskGroup() as tg:
            c = _Collector(node, store, rx, store_url)
            tg.create_task(c.delivery.run(), name="delivery")
            try:
                yield c
            finally:
                c.delivery.stop()


async def test_a_node_flipping_every_sample_for_ten_minutes_fires_each_alert_once(
    store_url: StoreTarget,
) -> None:
    """The review's case, with the collector's record and a real receiver: for 10 minutes a
    node claiming a 10 ms interval sends a sample every 2 s, alternately with uncorrected ECC
    and pending row remaps on its 8 GPUs and without (evaluations every second, on a route
    that notifies every change): each of the 16 alerts fires once and none resolves (one
    pair per 15 min at most), NodeStale never fires (the node is never 3 s silent), and the
    receiver gets 16 notifications, not one per flip."""
    node = _Node(FakeClock(start_wall=T0))
    async with _collector(store_url, node) as c:
        for k in range(TEN_MINUTES_S):
            if k % 2 == 0:
                node.send(*((_ecc, _remap) if k % 4 == 0 else ()), interval_s=0.01)
            await c.evaluate()
        history = db_rows(store_url, "SELECT rule, state FROM alert_history")
        assert Counter(history) == {
            ("GpuEccUncorrectable", "firing"): 8,
            ("GpuRowRemap", "firing"): 8,
        }
        (outbox,) = db_rows(store_url, "SELECT count(*) FROM outbox")
        assert outbox == (16,)
        await wait_until(lambda: len(c.rx.received()) == 16, what="16 notifications")
    bodies = [json.loads(r.body) for r in c.rx.received()]
    assert Counter(b["status"] for b in bodies) == {"firing": 16}


STATUS_RHYTHMS = [*RHYTHMS, (31, 1), (35, 5), (31, 30)]
"""(offline, online) seconds for a node's status; (31, 1): offline just past ``for`` (30 s),
then back for a second."""


@pytest.mark.parametrize(("off", "on"), STATUS_RHYTHMS)
def test_a_node_whose_status_toggles_in_any_rhythm_makes_bounded_node_offline_pairs(
    off: int, on: int
) -> None:
    """Ten minutes of a node's status saying offline for ``off`` s, then online (and a sample
    a second) for ``on`` s: NodeOffline fires at most 1 + 600 s / (for + keep_firing_for)
    times, and never when the node is never offline for its ``for`` (30 s)."""
    node = _Node(FakeClock(start_wall=T0))
    for k in range(TEN_MINUTES_S):
        phase = k % (off + on)
        if phase == 0:
            node.status("offline")
        elif phase >= off:
            if phase == off:
                node.status("online")
            node.send()
        node.evaluate()
    fired = node.changes("NodeOffline")["firing"]
    assert fired <= 1 + TEN_MINUTES_S // 60, f"NodeOffline fired {fired} times"
    assert fired <= _bound(node.ev.rules["NodeOffline"], TEN_MINUTES_S)
    assert node.changes("NodeOffline")["resolved"] <= fired
    if off < 31:  # offline at the evaluations 0.01 .. off - 0.99 s after it said so
        assert fired == 0


async def test_a_node_offline_every_31_s_for_ten_minutes_fires_node_offline_once(
    store_url: StoreTarget,
) -> None:
    """The known flap, through the collector's record and a real receiver: for 10 minutes a
    node's status says offline for 31 s (just past NodeOffline's 30 s ``for``), then online
    for 1 s: one NodeOffline alert fires and stays firing (it resolves 5 min after the node
    is back for good), one notification; not a fire/resolve pair every 32 s."""
    node = _Node(FakeClock(start_wall=T0))
    async with _collector(store_url, node) as c:
        for k in range(TEN_MINUTES_S):
            if k % 32 == 0:
                node.status("offline")
            elif k % 32 == 31:
                node.status("online")
                node.send()
            await c.evaluate()
        history = db_rows(store_url, "SELECT rule, state FROM alert_history")
        assert Counter(history) == {("NodeOffline", "firing"): 1}
        await wait_until(lambda: len(c.rx.received()) == 1, what="one notification")
        assert db_rows(store_url, "SELECT count(*) FROM outbox") == [(1,)]
    (body,) = [json.loads(r.body) for r in c.rx.received()]
    assert (body["status"], body["commonLabels"]["alertname"]) == ("firing", "NodeOffline")


async def _offline_with_ecc(c: _Collector) -> None:
    """The node sends uncorrected ECC errors on its 8 GPUs (8 alerts fire, notified at
    once), then its status says offline for 40 s: NodeOffline fires and mutes them."""
    c.node.send(_ecc)
    await c.evaluate()
    c.node.status("offline")
    for _ in range(40):
        await c.evaluate()
    assert Counter(db_rows(c.store_url, "SELECT rule, status FROM outbox")) == {
        ("GpuEccUncorrectable", "firing"): 8,
        ("NodeOffline", "firing"): 1,
    }


async def test_a_node_back_online_has_its_alerts_notified_while_node_offline_keeps_firing(
    store_url: StoreTarget,
) -> None:
    """NodeOffline kept firing after its node is back mutes nothing: a node with uncorrected
    ECC errors on its 8 GPUs (8 alerts, notified) is offline for 40 s: NodeOffline fires and
    mutes them (``collector alerts`` marks them inhibited); back online, at the first
    evaluation they are notified again and no longer marked, while NodeOffline resolves
    only 5 min (``offline_keep_firing_for_s``) after that evaluation."""
    node = _Node(FakeClock(start_wall=T0))

    def marked() -> Counter[tuple[str, bool]]:
        code, out, err = collector_cli("alerts", "--db", str(store_url), "--json")
        assert code == 0, err
        return Counter((a["rule"], a["inhibited"]) for a in json.loads(out)["alerts"])

    def notified() -> Counter[tuple[str, str]]:
        return Counter(db_rows(store_url, "SELECT rule, status FROM outbox"))

    async with _collector(store_url, node) as c:
        await _offline_with_ecc(c)
        assert marked() == {("GpuEccUncorrectable", True): 8, ("NodeOffline", False): 1}
        node.status("online")
        node.send(_ecc)
        back_at = node.clock.time() + 0.01
        await c.evaluate()
        assert notified() == {("GpuEccUncorrectable", "firing"): 16, ("NodeOffline", "firing"): 1}
        assert marked() == {("GpuEccUncorrectable", False): 8, ("NodeOffline", False): 1}
        await wait_until(lambda: len(c.rx.received()) == 17, what="17 notifications")
        for _ in range(300):
            node.send(_ecc)
            await c.evaluate()
        resolved = db_rows(store_url, "SELECT rule, at FROM alert_history WHERE state = 'resolved'")
        assert resolved == [("NodeOffline", pytest.approx(back_at + 300))]
        assert marked() == {("GpuEccUncorrectable", False): 8}


async def test_a_restarted_collector_keeps_muting_the_alerts_of_a_node_still_offline(
    store_url: StoreTarget,
) -> None:
    """Restarted while a node with 8 ECC alerts is offline (NodeOffline firing, the ECC
    alerts muted): the restored NodeOffline mutes them through the restore's hold, before the
    node's retained status is heard again, and after; nothing is notified again."""
    clock = FakeClock(start_wall=T0)
    async with _collector(store_url, _Node(clock)) as c:
        await _offline_with_ecc(c)
    before = Counter(db_rows(store_url, "SELECT rule, status FROM outbox"))
    again = _Node(clock, online=False)  # the restart: a live view with nothing heard yet
    async with _collector(store_url, again) as c:
        assert await c.job.restore(c.store, hold_s=20.0) == 9
        await c.evaluate()  # the live view empty: NodeOffline's condition not met yet
        again.status("offline")  # the broker's retained status
        again.send(_ecc)  # a late sample of the spool
        for _ in range(30):
            await c.evaluate()
        assert Counter(db_rows(store_url, "SELECT rule, status FROM outbox")) == before
