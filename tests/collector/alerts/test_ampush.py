"""Pushing alerts to Alertmanager's v2 API: against a real Alertmanager, and a loopback
receiver for the resend and retry rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pydantic import HttpUrl

from collector.alerts.ampush import AlertmanagerPush
from collector.alerts.fingerprint import fingerprint
from collector.alerts.webhook import BodyAlert
from collector.counters import value
from collector.settings import AlertmanagerSettings
from shared.clock import Clock, FakeClock, SystemClock
from tests.collector.alerts.alertmanager import am_alerts, running_alertmanager
from tests.collector.alerts.receiver import Answer, Receiver
from tests.helpers import wait_until

LABELS = {
    "alertname": "GpuTemperature",
    "severity": "warning",
    "node": "x1000c0s0b0n0",
    "gpu": "3",
    "site": "Zürich ✓",
}


def _received(rx: Receiver, n: int) -> Callable[[], bool]:
    return lambda: len(rx.received()) == n


def _alert(labels: dict[str, str], starts_at: float, ends_at: float | None = None) -> BodyAlert:
    return BodyAlert(fingerprint(labels), labels, {"summary": "GPU 3 at 95 °C"}, starts_at, ends_at)


@contextlib.asynccontextmanager
async def _pushing(
    url: str, clock: Clock, *, resend: str = "1m"
) -> AsyncIterator[AlertmanagerPush]:
    push = AlertmanagerPush(
        [AlertmanagerSettings(name="am", url=HttpUrl(url), timeout_s=5, resend_interval=resend)],
        clock,
        eval_interval_s=5.0,
        external_url="http://capwatch.example:9474",
        poll_s=0.02,
    )
    task = asyncio.create_task(push.run())
    try:
        yield push
    finally:
        push.stop()
        await task


async def test_alertmanager_holds_the_alert_with_capwatchs_fingerprint(tmp_path: Path) -> None:
    """A firing alert pushed to a real Alertmanager shows there with the same labels and the
    fingerprint capwatch computed; its resolution makes Alertmanager drop it."""
    clock = SystemClock()
    with running_alertmanager(tmp_path) as am:
        async with _pushing(am, clock) as push:
            now = clock.time()
            alert = _alert(LABELS, now - 30)
            push.update([alert], [], now)
            # "unprocessed" until Alertmanager's dispatcher has seen it, then "active".
            await wait_until(
                lambda: [a["status"]["state"] for a in am_alerts(am)] == ["active"],
                what="the alert active in Alertmanager",
            )
            (held,) = am_alerts(am)
            assert held["labels"] == LABELS
            assert held["fingerprint"] == fingerprint(LABELS) == alert.fingerprint
            assert held["annotations"] == {"summary": "GPU 3 at 95 °C"}
            assert held["generatorURL"].endswith(f"?fingerprint={alert.fingerprint}")

            push.update([], [alert._replace(ends_at=clock.time())], clock.time())
            await wait_until(lambda: am_alerts(am) == [], what="the resolution in Alertmanager")


async def test_firing_alerts_are_resent_each_interval_with_a_later_ends_at() -> None:
    """One push when the alert starts firing, none while nothing changes, then the same
    alert again once ``resend_interval`` has passed, valid 4 intervals ahead."""
    clock = FakeClock()
    with Receiver().serve() as rx:
        async with _pushing(rx.url.removesuffix("/hook"), clock, resend="60s") as push:
            push.update([_alert(LABELS, clock.time())], [], clock.time())
            await wait_until(lambda: len(rx.received()) == 1, what="the first push")
            first = json.loads(rx.received()[0].body)
            assert rx.received()[0].path == "/api/v2/alerts"
            clock.advance(30)
            push.update([_alert(LABELS, clock.time() - 30)], [], clock.time())
            await asyncio.sleep(0.2)
            assert len(rx.received()) == 1  # unchanged, not due: nothing sent
            clock.advance(31)
            await wait_until(lambda: len(rx.received()) == 2, what="the resend")
            second = json.loads(rx.received()[1].body)
    assert [a["labels"] for a in first] == [a["labels"] for a in second] == [LABELS]
    assert first[0]["endsAt"] == "2023-11-14T22:17:20.000Z"  # start + 4 x 60 s
    assert second[0]["endsAt"] == "2023-11-14T22:18:21.000Z"  # 61 s later


async def test_a_failed_push_is_retried_with_the_latest_state() -> None:
    """Alertmanager answers 503 while the alert resolves: the retry carries the resolution
    (never a stale "firing"), and a second 503 delays, not drops, it."""
    clock = FakeClock()
    with Receiver(script=[Answer(503), Answer(503)]).serve() as rx:
        async with _pushing(rx.url.removesuffix("/hook"), clock) as push:
            start = clock.time()
            alert = _alert(LABELS, start)
            push.update([alert], [], start)

            def failed(n: int) -> Callable[[], bool]:
                return lambda: value(push.metrics.push_failed) == n

            await wait_until(failed(1), what="the refused push")
            clock.advance(5)  # past the first backoff (at most 0.5 s): the retry is due
            push.update([], [alert._replace(ends_at=clock.time())], clock.time())
            await wait_until(failed(2), what="the second refusal")
            clock.advance(60)  # past any backoff
            await wait_until(_received(rx, 3), what="the accepted push")
    first, *retries = [json.loads(r.body) for r in rx.received()]
    assert first[0]["endsAt"] == "2023-11-14T22:17:20.000Z"  # firing, start + 4 x 60 s
    for body in retries:
        assert [a["labels"] for a in body] == [LABELS]
        assert body[0]["endsAt"] == "2023-11-14T22:13:25.000Z"  # the resolution, start + 5 s


async def test_a_refused_push_is_not_retried() -> None:
    """A 400 (Alertmanager refuses the alerts) is logged and dropped: sending the same
    body again would be refused again."""
    clock = FakeClock()
    with Receiver(script=[Answer(400, body=b"bad alert")]).serve() as rx:
        async with _pushing(rx.url.removesuffix("/hook"), clock) as push:
            push.update([_alert(LABELS, clock.time())], [], clock.time())
            await wait_until(lambda: len(rx.received()) == 1, what="the refused push")
            clock.advance(10)
            await asyncio.sleep(0.2)
            assert len(rx.received()) == 1
            assert value(push.metrics.push_refused) == 1


async def test_a_huge_answer_is_not_read_into_memory() -> None:
    """An Alertmanager URL that answers 200 with 200 MB (a file server, a proxy's page): the
    push counts as sent and holds none of it (the whole answer was read into memory)."""
    answer = Answer(200, body=b"x" * 200_000_000)
    clock = FakeClock()
    with Receiver(script=[answer]).serve() as rx:
        tracemalloc.start()
        try:
            async with _pushing(rx.url.removesuffix("/hook"), clock) as push:
                push.update([_alert(LABELS, clock.time())], [], clock.time())
                await wait_until(
                    lambda: value(push.metrics.alerts_sent) == 1, what="the accepted push"
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 20 * 1024**2, f"{peak / 1024**2:.0f} MiB held"


async def test_pushes_reuse_one_connection() -> None:
    """Alertmanager answers a push with a short body: read to its end, the connection
    serves the next push (an answer left unread closed it: a TCP handshake per push, and a
    TLS one with https)."""
    clock = FakeClock()
    with Receiver(keep_alive=True).serve() as rx:
        async with _pushing(rx.url.removesuffix("/hook"), clock, resend="60s") as push:
            push.update([_alert(LABELS, clock.time())], [], clock.time())
            for n in range(1, 4):
                await wait_until(_received(rx, n), what=f"push {n}")
                clock.advance(61)
    assert len({r.peer for r in rx.received()}) == 1
