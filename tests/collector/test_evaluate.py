"""The evaluator beside the writer: cycles on snapshots, their records stored by the writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.simulate import FleetSimulator
from collector.alerts.job import AlertJob
from collector.alerts.rule import Evaluator, Instance, Rule
from collector.capacity.job import CapacityJob
from collector.counters import labelled_values, value
from collector.evaluate import Cycle, PeriodicEvaluator
from collector.ingest.metrics import WriterMetrics
from collector.ingest.reader import StopUnit
from collector.ingest.validate import Ingestor
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.store.db import Store
from shared.clock import SystemClock
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
    failures = WriterMetrics(CollectorRegistry()).job_failures

    def snapshots() -> int:
        return int(db_rows(db, "SELECT count(*) FROM capacity_snapshots")[0][0])

    async with Store(db) as store:
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=4)
        writer = Writer(store, queue, Ingestor(clock, live=view), clock)
        async with Store.open_readonly(db) as reads, asyncio.TaskGroup() as tg:
            evaluator = PeriodicEvaluator(cycles, view, reads, queue, clock, job_failures=failures)
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
