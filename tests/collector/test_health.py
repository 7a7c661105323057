"""One health object answers both the systemd watchdog and /readyz: a collector whose writer
is stuck stops pinging the watchdog and answers 503 on /readyz, for the same reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from agent.simulate import FleetSimulator
from collector.evaluate import Cycle, PeriodicEvaluator
from collector.health import Health
from collector.ingest.validate import Ingestor
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.metrics import CollectorMetrics
from collector.service import Collector
from collector.settings import CollectorSettings
from collector.store.db import Store
from shared.clock import FakeClock
from shared.schema import encode
from shared.sdnotify import SdNotifier
from shared.topics import sample_topic
from tests.collector.ingest.scripted import ScriptedBroker
from tests.helpers import wait_until, write_locked
from tests.shared.test_sdnotify import FakeSystemd

T0 = 1_800_000_000.0
LIMIT_S = 5.0


async def _readyz(port: int) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}/readyz")


async def test_a_stalled_writer_stops_the_watchdog_and_fails_readyz(tmp_path: Path) -> None:
    """Writer stuck on a locked database past metrics_ready_commit_s (fake clock): no
    WATCHDOG=1 while it is stuck, /readyz 503 naming the writer; both recover after."""
    sd = FakeSystemd(tmp_path / "notify")
    broker = ScriptedBroker()
    clock = FakeClock(start_wall=T0)
    settings = CollectorSettings(
        db_path=tmp_path / "c.db",
        metrics_listen="127.0.0.1:0",
        metrics_ready_commit_s=LIMIT_S,
    )
    collector = Collector(
        settings,
        clock=clock,
        connect=broker.connect,
        notifier=SdNotifier(str(sd.path), watchdog_s=0.3),
    )
    sim = FleetSimulator(1, gpus_per_node=2, seed=5, interval_s=5)

    def deliver(k: int) -> None:
        s = sim.sample(0, T0 - 10 + k, k)
        broker.deliver([broker.message(sample_topic(s.node), encode(s))])

    task = asyncio.create_task(collector.run(), name="collector-under-test")
    try:
        await wait_until(collector.connected.is_set, what="subscribed")
        assert collector.metrics is not None
        assert collector.metrics.port is not None
        port = collector.metrics.port
        deliver(0)
        await wait_until(lambda: collector.stored_total == 1, what="one commit")
        await wait_until(lambda: sd.drain().count("WATCHDOG=1") >= 2, what="pings")
        assert (await _readyz(port)).status_code == 200

        async with write_locked(settings.db_path):
            deliver(1)  # the writer is now waiting for the lock
            clock.advance(LIMIT_S + 1)
            await wait_until(
                lambda: any("writer has not committed" in m for m in sd.drain()),
                what="the watchdog withheld",
            )
            stuck = await _readyz(port)
            withheld_at = max(i for i, m in enumerate(sd.got) if m.startswith("STATUS="))
        assert stuck.status_code == 503
        assert "the writer has not committed for 6 s" in stuck.text
        assert "ready" not in stuck.text.split("; ")

        await wait_until(lambda: collector.stored_total == 2, what="the commit after release")
        await wait_until(lambda: "WATCHDOG=1" in sd.drain()[withheld_at + 1 :], what="pings")
        withheld, after = sd.got[withheld_at], sd.got[withheld_at + 1 :]
        assert "the writer has not committed for 6 s" in withheld
        # Not one ping from the withholding until the STATUS that says it resumed.
        assert after[0].startswith("STATUS=ready"), after[:3]
        assert (await _readyz(port)).status_code == 200
    finally:
        collector.stop()
        async with asyncio.timeout(20):
            await task
        sd.sock.close()


def _watched(
    clock: FakeClock, store: Store, view: LiveView, cycle: Cycle
) -> tuple[Writer, PeriodicEvaluator, Health]:
    """A writer, an evaluator of ``cycle`` and the health object watching both, connected."""
    queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
    writer = Writer(store, queue, Ingestor(clock), clock)
    evaluator = PeriodicEvaluator([cycle], view, store, queue, clock)
    connected = asyncio.Event()
    connected.set()
    health = Health(
        clock, limit_s=LIMIT_S, connected=connected, writer=writer, queue=queue, evaluator=evaluator
    )
    return writer, evaluator, health


async def test_a_late_evaluator_makes_the_collector_not_alive(tmp_path: Path) -> None:
    """An evaluator that has not turned for its longest interval + the limit is reported,
    and the collector is neither alive nor ready; the writer alone is not enough."""
    clock = FakeClock(start_wall=T0)
    view = LiveView()
    async with Store(tmp_path / "c.db") as store:
        metrics = CollectorMetrics(
            CollectorRegistry(),
            store,
            CollectorSettings(db_path=tmp_path / "c.db"),
            clock=clock,
            live=view,
            alert_states=list,
        )  # a cycle of interval 10 s
        writer, _, health = _watched(clock, store, view, metrics)
        await writer.flush_counters()  # one commit, now
        assert health.check().ready
        clock.advance(10 + LIMIT_S - 1)
        await writer.flush_counters()
        assert health.check().alive
        clock.advance(2)
        await writer.flush_counters()  # the writer is fine; the evaluator is 1 s past
        report = health.check()
        assert (report.alive, report.ready) == (False, False)
        assert "the evaluator is 6 s late (limit 5 s)" in report.reasons
        assert health.alive()[0] is False


class _CatchUp:
    """A ledger-like cycle: each run sets its interval to the catch-up pace (5 s) and holds
    until ``done`` is set; ``progressed_at`` is stamped by the test, as the ledger stamps
    it per hour computed."""

    name = "ledger"

    def __init__(self, clock: FakeClock) -> None:
        self.interval_s = 0.01  # the first run at once
        self.progressed_at: float | None = None
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        self._clock = clock

    def progress(self) -> None:
        self.progressed_at = self._clock.monotonic()

    async def __call__(self, store: Store, view: LiveView) -> None:
        self.interval_s = 5.0
        self.started.set()
        await self.done.wait()


async def test_a_long_run_that_progresses_is_not_late_and_a_stuck_one_is(
    tmp_path: Path,
) -> None:
    """A ledger run catching up on a long outage's hours lasts minutes: while it makes
    progress (an hour computed every few seconds) the evaluator is not late, though its
    lane has not turned for more than its 5 s interval + the limit; once it stops making
    progress for that long, it is late as a stuck lane is, and the collector not alive."""
    clock = FakeClock(start_wall=T0)
    view = LiveView()
    async with Store(tmp_path / "c.db") as store, asyncio.TaskGroup() as tg:
        cycle = _CatchUp(clock)
        writer, evaluator, health = _watched(clock, store, view, cycle)
        evaluating = tg.create_task(evaluator.run())
        while not cycle.started.is_set():  # the fake clock moves only when told
            await asyncio.sleep(0.01)
            clock.advance(0.01)
        for _ in range(10):  # 40 s of progress, an hour every 4 s
            clock.advance(4)
            cycle.progress()
            await writer.flush_counters()
            assert health.check().alive, health.check().reasons
        assert evaluator.overdue_s(clock.monotonic()) == 0
        clock.advance(5 + LIMIT_S + 1)  # no progress for its interval + the limit + 1 s
        await writer.flush_counters()
        report = health.check()
        assert (report.alive, report.ready) == (False, False)
        assert "the evaluator is 6 s late (limit 5 s)" in report.reasons
        cycle.done.set()
        evaluating.cancel()
