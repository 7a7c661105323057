"""The evaluator beside the writer: cycles on snapshots, their records stored by the writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.simulate import FleetSimulator
from collector.alerts.evaluator import Evaluator
from collector.alerts.job import AlertJob
from collector.alerts.rule import Instance, Rule
from collector.capacity.job import CapacityJob
from collector.counters import labelled_values, value
from collector.evaluate import Cycle, PeriodicEvaluator
from collector.governance.job import GovernanceJob
from collector.ingest.metrics import WriterMetrics
from collector.ingest.reader import StopUnit
from collector.ingest.validate import Ingestor
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.store.db import Store
from shared.clock import FakeClock, SystemClock
from tests.collector.capacity.helpers import filled_view, site_plan
from tests.helpers import db_rows, wait_until


def _broken(view: LiveView, now: float) -> Iterable[Instance]:
    raise RuntimeError("a bug in a rule")


async def test_a_failing_cycle_is_counted_and_the_others_still_reach_the_store(
    tmp_path: Path,
) -> None:
    """A rule that raises costs its own cycle only: the capacity cycle beside it goes on
    handing the writer its snapshots, and the writer stores them."""
    db = tmp_path / "c.db"
    clock = SystemClock()
    view, _ = filled_view(FleetSimulator(10, seed=3), time.time())
    broken = Rule("Broken", "warning", "broken", "", _broken)
    cycles: list[Cycle] = [
        AlertJob(Evaluator([broken]), clock, interval_s=0.02),
        CapacityJob(site_plan(), clock, interval_s=0.02),
    ]
    metrics = WriterMetrics(CollectorRegistry())
    failures = metrics.job_failures

    def snapshots() -> int:
        return int(db_rows(db, "SELECT count(*) FROM capacity_snapshots")[0][0])

    async with Store(db) as store:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
        writer = Writer(store, queue, Ingestor(clock, live=view), clock)
        async with Store.open_readonly(db) as reads, asyncio.TaskGroup() as tg:
            evaluator = PeriodicEvaluator(cycles, view, reads, queue, clock, metrics=metrics)
            tg.create_task(writer.run(), name="writer")
            evaluating = tg.create_task(evaluator.run(), name="evaluator")
            await wait_until(
                lambda: value(failures.labels("alerts")) >= 2 and snapshots() >= 2,
                what="two failed alert cycles and two stored capacity snapshots",
            )
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await queue.put(StopUnit(done))
            await done
            evaluating.cancel()
    assert db_rows(db, "SELECT DISTINCT nodes FROM capacity_snapshots") == [(10,)]
    assert labelled_values(failures) == {"alerts": value(failures.labels("alerts"))}
    timed = {
        s.labels["cycle"]: s.value
        for m in metrics.cycle_seconds.collect()
        for s in m.samples
        if s.name.endswith("_count")
    }
    assert timed["capacity"] >= 2
    assert "alerts" not in timed  # its cycles failed: counted in job_failures, not timed


class _Cycle:
    """A cycle that counts its runs; ``hold`` (when given) keeps its run from ending."""

    def __init__(self, name: str, interval_s: float, hold: asyncio.Event | None = None) -> None:
        self.name, self.interval_s, self.runs, self._hold = name, interval_s, 0, hold

    async def __call__(self, store: Store, view: LiveView) -> None:
        self.runs += 1
        if self._hold is not None:
            await self._hold.wait()


async def test_a_long_cycle_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """A governance evaluation of many tenants, or the ledger catching up on an outage's
    hours, takes seconds: the alert rules beside it still run every their interval, and the
    evaluator is late by the long cycle's lane alone."""
    clock = SystemClock()
    held = asyncio.Event()
    slow, fast = _Cycle("ledger", 0.01, hold=held), _Cycle("alerts", 0.01)
    async with Store(tmp_path / "c.db") as store, asyncio.TaskGroup() as tg:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
        # The collector's order: governance first (the others' first cycles wait for its).
        lanes = [_Cycle("governance", 0.01), slow, fast]
        evaluator = PeriodicEvaluator(lanes, LiveView(), store, queue, clock)
        evaluating = tg.create_task(evaluator.run())
        await wait_until(lambda: slow.runs == 1 and fast.runs >= 5, what="5 alert cycles")
        await asyncio.sleep(0.2)
        assert evaluator.overdue_s(clock.monotonic()) > 0.1  # the held lane's 0.2 s, less 0.01
        held.set()
        await wait_until(lambda: slow.runs >= 2, what="the ledger's next cycle")
        assert evaluator.overdue_s(clock.monotonic()) < 0.1
        evaluating.cancel()


class _ViewReader:
    """A cycle beside the governance job that reads its view as the governance rules (and
    the ledger) do: when each of its cycles starts."""

    def __init__(self, governance: GovernanceJob, interval_s: float) -> None:
        self.name, self.interval_s = "alerts", interval_s
        self._governance = governance
        self.seen: list[float] = []

    async def __call__(self, store: Store, view: LiveView) -> None:
        self.seen.append(self._governance.view.at)


async def test_the_first_cycles_wait_for_the_governance_jobs_first_view(tmp_path: Path) -> None:
    """After a start (or a leader's take-over) the alert rules' first evaluation comes after
    the governance job's first view, as when the cycles ran in order: one on the empty view
    would clear every pending governance alert, and a ledger run charge no lease."""
    clock = SystemClock()
    governance = GovernanceJob(clock, interval_s=60.0, first_interval_s=0.05)
    reader = _ViewReader(governance, 0.05)
    async with Store(tmp_path / "c.db") as store, asyncio.TaskGroup() as tg:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
        evaluator = PeriodicEvaluator([governance, reader], LiveView(), store, queue, clock)
        evaluating = tg.create_task(evaluator.run())
        await wait_until(lambda: len(reader.seen) >= 3, what="three cycles beside governance")
        evaluating.cancel()
    assert governance.loads == 1
    assert reader.seen[0] > float("-inf")  # the governance job's first view, not the empty one


async def test_at_a_later_term_the_governance_job_comes_first_at_the_alert_rules_pace(
    tmp_path: Path,
) -> None:
    """A leader's later term: the governance job is at its own interval (15 s), past its
    first; its first cycle of the term comes at the alert rules' interval, not its own, so
    the alert rules (which wait for it) are not held back by the difference."""
    clock = SystemClock()
    governance, alerts = _Cycle("governance", 30.0), _Cycle("alerts", 0.01)
    async with Store(tmp_path / "c.db") as store, asyncio.TaskGroup() as tg:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
        evaluator = PeriodicEvaluator([governance, alerts], LiveView(), store, queue, clock)
        evaluating = tg.create_task(evaluator.run())
        await wait_until(lambda: alerts.runs >= 3, timeout_s=10.0, what="three alert cycles")
        evaluating.cancel()
    assert governance.runs == 1


class _Catching:
    """A ledger catching up: its first run takes ``first_s`` (a fake clock), the next none."""

    def __init__(self, clock: FakeClock, first_s: float) -> None:
        self.name, self.interval_s, self.runs = "ledger", 0.0, 0
        self._clock, self._first_s = clock, first_s

    async def __call__(self, store: Store, view: LiveView) -> None:
        self.runs += 1
        if self.runs == 1:
            self._clock.advance(self._first_s)
        await asyncio.sleep(0.001)


async def test_a_cycle_of_many_seconds_is_timed_in_a_bucket_of_its_own(tmp_path: Path) -> None:
    """The cycle-duration histogram shows the long cycles it is for (a ledger run catching
    up on 48 hours took 11.8-13.5 s in bench_ledger) up to past the health limit (30 s):
    with buckets ending at 5 s their quantiles all read 5 s."""
    clock = FakeClock()
    ledger = _Catching(clock, 13.0)
    metrics = WriterMetrics(CollectorRegistry())
    async with Store(tmp_path / "c.db") as store, asyncio.TaskGroup() as tg:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
        evaluator = PeriodicEvaluator([ledger], LiveView(), store, queue, clock, metrics=metrics)
        evaluating = tg.create_task(evaluator.run())
        await wait_until(lambda: ledger.runs >= 3, what="three ledger runs")
        evaluating.cancel()
    buckets = {
        float(s.labels["le"]): s.value
        for m in metrics.cycle_seconds.collect()
        for s in m.samples
        if s.name.endswith("_bucket") and s.labels["cycle"] == "ledger"
    }
    finite = sorted(le for le in buckets if le != float("inf"))
    assert finite[-1] >= 30.0  # past metrics_ready_commit_s's default
    assert buckets[10.0] == buckets[float("inf")] - 1  # the 13 s run: above 10 s ...
    assert buckets[finite[-1]] == buckets[float("inf")]  # ... and in a finite bucket
