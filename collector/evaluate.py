"""The evaluator: the periodic cycles (governance, alert rules, capacity, ledger) beside the
writer.

One task of the collector's ``TaskGroup``. It runs each cycle when due (each in a lane of its
own, below), on a fresh :meth:`~collector.live.LiveView.snapshot` of the live view
(immutable, so a cycle can read it from a worker thread while the writer goes on storing and
updating the view), and puts what each made for the store on the writer's queue as a
:class:`~collector.ingest.writer.Record`: the writer only writes it. A cycle reads the store
through its own read-only connection (WAL: readers never wait for the writer), and runs its
heavy pure work with :func:`asyncio.to_thread`, so neither storing nor acknowledging waits for
an evaluation.

What a cycle sees: the live view as of its snapshot, which holds every message validated so
far (:mod:`collector.ingest.validate` says exactly how that differs from what is committed).
What its record says reaches the store after the samples queued before it; a record still
queued when the writer stops is dropped, as if that cycle had not run (its notifications are
sent only once it is committed).

A cycle that fails is logged and counted in ``job_failures{job=<name>}`` (the writer's
counter: a job also fails when the store refuses its record); the others go on. A store that
cannot be read at all (:class:`StoreError` with ``fatal``) ends the collector.

Each cycle runs in a lane of its own (a task), on its own schedule: a long cycle (a
governance evaluation of many tenants, the ledger catching up on hours after an outage) never
holds back the alert rules, which run every second. The cycles share no state but what they
read: the governance rules (and the ledger) read the governance job's newest view, whichever
lane made it. The first of ``cycles`` makes what the others read, so their first cycles wait
for its first, which comes as soon as any of theirs would (as when the cycles ran in order,
the governance job's first at the alert rules' interval): after a start or a take-over, an
alert evaluation on the empty view (or a past term's) before the governance job's first
would clear every pending governance alert (their ``for_s`` starting again), and a ledger
run would charge its hours to no lease.

Liveness: each lane's last turn is stamped after each of its cycles and before each sleep;
:meth:`PeriodicEvaluator.overdue_s` is how far the latest lane is past its own interval, and
the collector's :class:`~collector.health.Health` reads it. A cycle whose run may take long
and says how it goes (:class:`Progressing`: the ledger catching up on an outage's hours, a
few seconds an hour at 12,500 nodes, 48 hours a run) is late from its last progress instead
of from its turn: a run that goes on making progress is not stuck, one that stopped is late
as any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry

from collector.ingest.metrics import WriterMetrics
from collector.ingest.writer import Record
from collector.live import LiveView
from collector.store.db import Store
from shared.clock import Clock
from shared.errors import StoreError
from shared.logging import get_logger

__all__ = ["Cycle", "PeriodicEvaluator", "Progressing", "RecordQueue", "run_once"]

log = get_logger("evaluate")


class Cycle(Protocol):
    """One periodic evaluation (the alert rules, governance, capacity, store statistics)."""

    @property
    def name(self) -> str:
        """For logs and the ``job_failures{job}`` label (code-defined, a handful)."""
        ...

    @property
    def interval_s(self) -> float:
        """Seconds from the end of one run to the next (read again after each run)."""
        ...

    async def __call__(self, store: Store, view: LiveView) -> Record | None:
        """Evaluate ``view`` (a snapshot), reading ``store`` (read-only); return what the
        writer must record, if anything."""
        ...


@runtime_checkable
class Progressing(Protocol):
    """A cycle that says how its run goes (besides being a :class:`Cycle`)."""

    @property
    def progressed_at(self) -> float | None:
        """Clock monotonic time its run last made progress (``None``: never); a stamp from
        an earlier run is older than the lane's turn, and so ignored."""
        ...


class RecordQueue(Protocol):
    """Where the records go: the writer's queue."""

    async def put(self, item: Record, /) -> None: ...


async def run_once(cycle: Cycle, store: Store, view: LiveView) -> None:
    """One cycle on a snapshot of ``view``, its record written to ``store`` (which must be
    writable): what the evaluator and the writer do together, in one call (tests, benches)."""
    record = await cycle(store, view.snapshot())
    if record is not None:
        while await record.write(store):  # every part, none between
            pass


class PeriodicEvaluator:
    """Runs each of ``cycles`` in its own lane, every its ``interval_s``; see the module
    docstring."""

    def __init__(
        self,
        cycles: Sequence[Cycle],
        live: LiveView,
        store: Store,
        records: RecordQueue,
        clock: Clock,
        *,
        metrics: WriterMetrics | None = None,
    ) -> None:
        self._cycles = list(cycles)
        self._live = live
        self._store = store
        self._records = records
        self._clock = clock
        if metrics is None:
            metrics = WriterMetrics(CollectorRegistry())
        self.job_failures = metrics.job_failures
        """Failed cycles by name (labels ``job``): the writer's counter, shared."""
        self._seconds = metrics.cycle_seconds
        self._turns = [clock.monotonic()] * len(self._cycles)
        """Per cycle (its lane), clock monotonic time it last finished a cycle or went to
        sleep."""

    def overdue_s(self, now: float) -> float:
        """Seconds the evaluator is late at clock monotonic ``now``: the most any lane is past
        its last turn (or its running cycle's last progress, :class:`Progressing`, if later)
        plus its own interval. 0 while every lane is on time, and with no cycles."""
        late = (
            now - max(t, _progressed_at(c)) - c.interval_s
            for c, t in zip(self._cycles, self._turns, strict=True)
        )
        return max([0.0, *late])

    async def run(self) -> None:
        """Evaluate until cancelled (the collector cancels it once the writer has stopped);
        a fatal :class:`StoreError` in one lane ends them all and is raised."""
        if not self._cycles:
            return
        first = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for i, cycle in enumerate(self._cycles):
                tg.create_task(self._lane(i, cycle, first), name=f"evaluator-{cycle.name}")

    async def _lane(self, i: int, cycle: Cycle, first: asyncio.Event) -> None:
        """``cycle`` every its ``interval_s`` (from the end of one run to the next); the
        first lane's first cycle sets ``first``, which the other lanes' first cycles await
        (failed or not: a failure is counted, and the others go on)."""
        mono = self._clock.monotonic
        # The first lane's first cycle comes as soon as any lane's would: at a later term
        # of a leader the governance job is at its own pace (15 s), the alert rules' 1 s.
        soonest = min(c.interval_s for c in self._cycles) if not i else cycle.interval_s
        due = mono() + soonest
        if i:
            await first.wait()
        while True:
            self._turns[i] = mono()
            wait_s = due - mono()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            # A snapshot per cycle (a dict copy), taken as it starts: the nodes look as old
            # to its rules as they are.
            await self._run(cycle, self._live.snapshot())
            first.set()  # the first lane's first cycle ran (for the others, already set)
            due = mono() + cycle.interval_s

    async def _run(self, cycle: Cycle, view: LiveView) -> None:
        """One cycle; a broken one is logged and counted, the others (and ingestion) go on."""
        started = self._clock.monotonic()
        try:
            record = await cycle(self._store, view)
        except StoreError as exc:
            if exc.fatal:
                raise
            log.error("job_failed", job=cycle.name, error=str(exc))
            self.job_failures.labels(cycle.name).inc()
            return
        except Exception:
            # A bug in one rule must not stop the others, nor the collector: it would fail
            # again after every restart, with the broker's backlog growing behind it.
            log.exception("job_failed", job=cycle.name)
            self.job_failures.labels(cycle.name).inc()
            return
        if record is not None:
            await self._records.put(record)
        took_s = self._clock.monotonic() - started
        self._seconds.labels(cycle.name).observe(took_s)
        log.debug("cycle_done", job=cycle.name, ms=round(took_s * 1000, 1))


def _progressed_at(cycle: Cycle) -> float:
    at = cycle.progressed_at if isinstance(cycle, Progressing) else None
    return float("-inf") if at is None else at
