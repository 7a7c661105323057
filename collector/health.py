"""Is the collector working, and is it ready: one answer for the watchdog and ``/readyz``.

Two questions, from the same facts, read by one object:

*alive* (the systemd watchdog, :class:`~shared.sdnotify.SdNotifier`)
    the writer committed within ``limit_s`` (it commits its counters every ~2 s even when
    idle; before its first commit, the time since start counts) and the evaluator is not
    more than ``limit_s`` late. A restart would cure a stuck writer or evaluator. The broker
    being away does not count against it: a restart would not bring the broker back, and the
    reader already reconnects.
*ready* (``/readyz``)
    alive, subscribed to the broker, and the writer has committed at least once.

The writer's queue is reported with the reasons but decides nothing: a full queue while the
writer commits is a backlog draining at full speed, which is the collector working; a writer
that stopped committing is caught by the commit age.

Both are read from the HTTP thread (``/readyz``) as well as the loop: they only read a few
attributes, never wait on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.evaluate import PeriodicEvaluator
from collector.ingest.writer import Writer, WriterItem
from shared.clock import Clock

__all__ = ["Health", "HealthReport"]


class HealthReport(NamedTuple):
    """The answers, and why (one short phrase per fact, problems first)."""

    alive: bool
    ready: bool
    reasons: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reasons as one line (``/readyz``'s body, the watchdog's ``STATUS=``)."""
        return "; ".join(self.reasons)


class Health:
    """Reads the collector's liveness and readiness; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        limit_s: float,
        connected: asyncio.Event,
        writer: Writer,
        queue: asyncio.Queue[WriterItem],
        evaluator: PeriodicEvaluator | None = None,
        role: Callable[[], str] | None = None,
    ) -> None:
        self._role = role
        self._watched: list[PeriodicEvaluator] = []
        self._clock = clock
        self.limit_s = limit_s
        self._connected = connected
        self._writer = writer
        self._queue = queue
        self._evaluator = evaluator
        self._started = clock.monotonic()

    @contextlib.contextmanager
    def watching(self, evaluator: PeriodicEvaluator) -> Iterator[None]:
        """Judge ``evaluator``'s lateness too while the block runs (a leader's term)."""
        self._watched.append(evaluator)
        try:
            yield
        finally:
            self._watched.remove(evaluator)

    def commit_age_s(self) -> float | None:
        """Seconds since the writer's last commit; ``None`` before its first."""
        last = self._writer.last_commit
        return None if last is None else max(0.0, self._clock.monotonic() - last)

    def check(self) -> HealthReport:
        """Both answers, now."""
        now = self._clock.monotonic()
        limit = self.limit_s
        problems: list[str] = []
        notes: list[str] = []
        last = self._writer.last_commit
        age = now - (self._started if last is None else last)
        if age > limit:
            problems.append(f"the writer has not committed for {age:.0f} s (limit {limit:g} s)")
        elif last is None:
            notes.append("the writer has not committed yet")
        else:
            notes.append(f"last commit {age:.1f} s ago")
        evaluators = [*([] if self._evaluator is None else [self._evaluator]), *self._watched]
        late = max((e.overdue_s(now) for e in evaluators), default=0.0)
        if late > limit:
            problems.append(f"the evaluator is {late:.0f} s late (limit {limit:g} s)")
        alive = not problems
        connected = self._connected.is_set()
        if connected:
            notes.insert(0, "connected")
        else:
            problems.append("not connected to the broker")
        notes.append(f"queue {self._queue.qsize()}/{self._queue.maxsize}")
        if self._role is not None:
            notes.append(self._role())
        ready = alive and connected and last is not None
        return HealthReport(alive, ready, (("ready",) if ready else ()) + (*problems, *notes))

    def alive(self) -> tuple[bool, str]:
        """The watchdog's question (:meth:`SdNotifier.run`'s ``healthy``)."""
        report = self.check()
        return report.alive, report.text

    def ready(self) -> tuple[bool, str]:
        """``/readyz``'s question (the metrics server's ``ready``)."""
        report = self.check()
        return report.ready, report.text

    def families(self) -> list[Metric]:
        """The facts as gauges: queue, its capacity, broker connected, last commit age."""
        age = self.commit_age_s()
        commit = GaugeMetricFamily(
            "capwatch_collector_last_commit_age_seconds",
            "Seconds since the writer last committed (a batch or its counters, every ~2 s).",
            labels=[],
        )
        if age is not None:
            commit.add_metric([], age)
        return [
            GaugeMetricFamily(
                "capwatch_collector_queue_units",
                "Validated reads waiting for the writer (each up to batch_max_rows messages).",
                self._queue.qsize(),
            ),
            GaugeMetricFamily(
                "capwatch_collector_queue_capacity_units",
                "Size of the writer's queue.",
                self._queue.maxsize,
            ),
            GaugeMetricFamily(
                "capwatch_collector_broker_connected",
                "1 while subscribed to the broker.",
                self._connected.is_set(),
            ),
            commit,
        ]
