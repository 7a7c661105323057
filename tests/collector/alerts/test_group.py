"""Grouping, routing, silences, inhibition and the notification log across a restart.

The collector's own path (rule -> AlertJob in the real Writer -> outbox -> Delivery) on a
fake clock, against a real HTTP receiver on loopback (see ``test_delivery``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.alerts.group import Dispatcher, GroupAlert
from collector.alerts.route import ALL_LABELS, Route, parse_matcher
from collector.alerts.silence import InhibitRule
from collector.store.silences import add_silence, expire_silence
from shared.clock import FakeClock
from tests.collector.alerts.receiver import Receiver
from tests.collector.alerts.test_delivery import receiver_settings, running
from tests.helpers import db_rows, wait_until


def _route(*names: str, group_by: tuple[str, ...] = ("alertname",), **kw: Any) -> Route:
    matchers = tuple(parse_matcher(m) for m in kw.pop("match", ()))
    timing = {"group_wait_s": 5.0, "group_interval_s": 60.0, "repeat_interval_s": 600.0} | kw
    return Route(matchers, names, group_by, **timing)


def _bodies(rx: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in rx.received()]


def _received(rx: Receiver, n: int) -> Callable[[], bool]:
    return lambda: len(rx.received()) == n


def _nodes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((a["labels"]["node"], a["status"]) for a in body["alerts"])


async def test_three_alerts_within_group_wait_are_one_message(tmp_path: Path) -> None:
    """Three alerts firing within group_wait: one notification carrying all three."""
    with Receiver().serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)], routes=[_route("hook")]) as rig:
            for node in ("n1", "n2", "n3"):
                rig.switch.active.add(node)
                await rig.tick(1.0)
            assert rx.received() == []
            await rig.tick(3.0)
            await wait_until(lambda: len(rx.received()) == 1, what="the group's notification")
            for _ in range(5):
                await rig.tick(5.0)
            await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="delivered")
    (body,) = _bodies(rx)
    assert _nodes(body) == [("n1", "firing"), ("n2", "firing"), ("n3", "firing")]
    assert body["groupKey"] == '{}:{alertname="TestAlert"}'
    assert body["groupLabels"] == {"alertname": "TestAlert"}
    assert body["commonLabels"] == {"alertname": "TestAlert", "severity": "warning"}
    assert body["commonAnnotations"] == {"description": "value 1"}
    assert body["truncatedAlerts"] == 0


async def test_group_interval_then_repeat_interval(tmp_path: Path) -> None:
    """A new alert waits for group_interval; a resolution too; unchanged, the group is sent
    again after repeat_interval, and never twice for one change."""
    with Receiver().serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)], routes=[_route("hook")]) as rig:
            rig.switch.active.add("n1")
            await rig.tick(1.0)
            await rig.tick(5.0)
            await wait_until(lambda: len(rx.received()) == 1, what="first")
            rig.switch.active.add("n2")
            for _ in range(11):
                await rig.tick(5.0)  # 55 s after the first flush: not yet
            assert len(rx.received()) == 1
            await rig.tick(5.0)
            await wait_until(lambda: len(rx.received()) == 2, what="the changed group")
            rig.switch.active.discard("n1")
            for _ in range(12):
                await rig.tick(5.0)
            await wait_until(lambda: len(rx.received()) == 3, what="the resolution")
            for _ in range(9):
                await rig.tick(60.0)  # 540 s unchanged: no repeat yet
            assert len(rx.received()) == 3
            await rig.tick(60.0)
            await wait_until(lambda: len(rx.received()) == 4, what="the repeat")
    bodies = _bodies(rx)
    assert [_nodes(b) for b in bodies] == [
        [("n1", "firing")],
        [("n1", "firing"), ("n2", "firing")],
        [("n1", "resolved"), ("n2", "firing")],
        [("n2", "firing")],
    ]


async def test_a_route_with_matchers_picks_the_receiver(tmp_path: Path) -> None:
    """node=~gpu-.* goes to "gpu" only; the rest falls through to "rest"."""
    with Receiver().serve() as gpu, Receiver().serve() as rest:
        receivers = [
            receiver_settings(gpu.url, name="gpu"),
            receiver_settings(rest.url, name="rest"),
        ]
        routes = [
            _route("gpu", match=["node=~gpu-.*"], group_wait_s=0.0),
            _route("rest", group_wait_s=0.0),
        ]
        async with running(tmp_path, receivers, routes=routes) as rig:
            rig.switch.active |= {"gpu-1", "xgpu-2"}
            await rig.tick(1.0)
            await wait_until(lambda: len(gpu.received()) == len(rest.received()) == 1, what="both")
    (to_gpu,) = _bodies(gpu)
    (to_rest,) = _bodies(rest)
    assert _nodes(to_gpu) == [("gpu-1", "firing")]
    assert to_gpu["groupKey"] == '{}/{node=~"gpu-.*"}:{alertname="TestAlert"}'
    assert _nodes(to_rest) == [("xgpu-2", "firing")]  # anchored: xgpu-2 is not gpu-.*


async def test_a_silence_mutes_and_its_expiry_unmutes(tmp_path: Path) -> None:
    """A silenced alert notifies nobody; expired, it is notified as new."""
    with Receiver().serve() as rx:
        route = _route("hook", group_wait_s=0.0, group_interval_s=5.0)
        async with running(tmp_path, [receiver_settings(rx.url)], routes=[route]) as rig:
            now = rig.clock.time()
            # In a thread, as a command would run beside the collector: called on this loop,
            # its write waited on the collector's writer, which waits on this loop.
            sid = await asyncio.to_thread(
                add_silence,
                rig.db,
                ["node=~n1|n3"],
                now,
                now + 3600,
                comment="maintenance",
                author="ops",
            )
            rig.switch.active |= {"n1", "n2"}
            await rig.tick(1.0)
            await wait_until(lambda: len(rx.received()) == 1, what="n2 only")
            for _ in range(4):
                await rig.tick(5.0)
            assert len(rx.received()) == 1
            await asyncio.to_thread(expire_silence, rig.db, sid, rig.clock.time())
            await rig.tick(5.0)
            await wait_until(lambda: len(rx.received()) == 2, what="n1 unmuted")
    assert [_nodes(b) for b in _bodies(rx)] == [
        [("n2", "firing")],
        [("n1", "firing"), ("n2", "firing")],
    ]


async def test_node_offline_inhibits_that_nodes_other_alerts(tmp_path: Path) -> None:
    """NodeOffline on n1 mutes n1's TestAlert, not n2's."""
    with Receiver().serve() as rx:
        async with running(tmp_path, [receiver_settings(rx.url)]) as rig:
            rig.offline.active.add("n1")
            rig.switch.active |= {"n1", "n2"}
            await rig.tick(1.0)
            await wait_until(lambda: len(rx.received()) == 2, what="two notifications")
            for _ in range(3):
                await rig.tick(5.0)
    got = sorted(
        (a["labels"]["alertname"], a["labels"]["node"]) for b in _bodies(rx) for a in b["alerts"]
    )
    assert got == [("NodeOffline", "n1"), ("TestAlert", "n2")]


async def test_configured_inhibit_rules_replace_the_default(tmp_path: Path) -> None:
    """``inhibit_rules = []`` turns inhibition off (n1's TestAlert is notified despite
    NodeOffline); a rule with no ``equal`` label mutes the target on every node."""
    for rules, expected in (
        ((), [("NodeOffline", "n1"), ("TestAlert", "n1"), ("TestAlert", "n2")]),
        (
            (
                InhibitRule(
                    (parse_matcher("alertname=NodeOffline"),),
                    (parse_matcher("alertname=TestAlert"),),
                ),
            ),
            [("NodeOffline", "n1")],
        ),
    ):
        with Receiver().serve() as rx:
            async with running(
                tmp_path / str(len(expected)), [receiver_settings(rx.url)], inhibit_rules=rules
            ) as rig:
                rig.offline.active.add("n1")
                rig.switch.active |= {"n1", "n2"}
                await rig.tick(1.0)
                await wait_until(_received(rx, len(expected)), what="the notifications")
                for _ in range(3):
                    await rig.tick(5.0)
        got = sorted(
            (a["labels"]["alertname"], a["labels"]["node"])
            for b in _bodies(rx)
            for a in b["alerts"]
        )
        assert got == expected


async def test_a_restart_does_not_notify_a_notified_group_again(tmp_path: Path) -> None:
    """The notification log is in the store: a new collector on it stays quiet."""
    clock = FakeClock()
    routes = [_route("hook")]
    with Receiver().serve() as rx:
        settings = [receiver_settings(rx.url)]
        async with running(tmp_path, settings, clock=clock, routes=routes) as rig:
            rig.switch.active |= {"n1", "n2"}
            await rig.tick(1.0)
            await rig.tick(5.0)
            await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="delivered")
        logged = db_rows(rig.db, "SELECT group_key, notified_at FROM alert_groups")
        assert len(logged) == 1
        async with running(tmp_path, settings, clock=clock, routes=routes) as again:
            again.switch.active |= {"n1", "n2"}
            for _ in range(5):
                await again.tick(5.0)
            assert db_rows(again.db, "SELECT group_key, notified_at FROM alert_groups") == logged
    assert len(rx.received()) == 1
    assert ALL_LABELS not in routes[0].group_by


async def test_a_restart_forgets_groups_no_alert_can_reach(tmp_path: Path) -> None:
    """The log entry of a group that no restored alert belongs to (here: its route is gone
    from the configuration) is deleted at start instead of staying in the store for ever;
    the entries of groups still reachable are kept."""
    clock = FakeClock()
    old_routes = [_route("hook", match=["node=n1"]), _route("hook")]
    with Receiver().serve() as rx:
        settings = [receiver_settings(rx.url)]
        async with running(tmp_path, settings, clock=clock, routes=old_routes) as rig:
            rig.switch.active |= {"n1", "n2"}
            await rig.tick(1.0)
            await rig.tick(5.0)
            await wait_until(_received(rx, 2), what="one message per route")
        logged = dict(db_rows(rig.db, "SELECT group_key, notified_at FROM alert_groups"))
        assert len(logged) == 2
        async with running(tmp_path, settings, clock=clock, routes=old_routes[1:]) as again:
            kept = dict(db_rows(again.db, "SELECT group_key, notified_at FROM alert_groups"))
    (key,) = kept
    assert "node=" not in key
    assert kept[key] == logged[key]


def test_a_notification_lists_what_changed_first_then_the_rest_each_oldest_first() -> None:
    """A group's message: new firing and newly resolved alerts, then the unchanged ones;
    within each, oldest first, ties by fingerprint (a first message: all of them new)."""
    dispatcher = Dispatcher([_route("hook", group_wait_s=0.0)])

    def alert(fp: str, starts_at: float, ends_at: float | None = None) -> GroupAlert:
        return GroupAlert(fp, {"alertname": "A", "node": fp}, {}, starts_at, ends_at)

    def sent(now: float) -> list[str]:
        (flush,) = dispatcher.flush(now, lambda a: False)[0]
        return [a.fingerprint for a in flush.alerts]

    dispatcher.observe([alert("fa", 20.0), alert("fb", 10.0), alert("fc", 20.0)], [], 100.0)
    assert sent(100.0) == ["fb", "fa", "fc"]
    firing = [alert("fb", 10.0), alert("fc", 20.0), alert("fe", 5.0), alert("fd", 5.0)]
    dispatcher.observe(firing, [alert("fa", 20.0, 150.0)], 150.0)
    assert sent(160.0) == ["fd", "fe", "fa", "fb", "fc"]
