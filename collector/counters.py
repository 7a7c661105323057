"""The collector's counters as plain numbers: for the ``counters`` table and the
``collector_stopped`` log line.

Each component owns its prometheus_client objects, registered on the registry the collector
hands it (as Alertmanager's ``NewMetrics(registerer)`` does): ingest, the reader, the writer,
the evaluator, webhook delivery, the Alertmanager push, the alert and capacity jobs. Each
also says, in ``counter_rows()``, which names its counters carry in the ``counters`` table
(``received``, ``stored``, ``rejected_<reason>``, ...: what ``collector query`` shows).
:func:`counter_values` reads them all, once: the writer stores the result every ~2 s and the
collector logs it when it stops.

The values are per process: every counter starts at 0 when the collector starts, as any
Prometheus counter does (``rate()`` and ``increase()`` handle the reset). The ``counters``
table therefore holds what the running (or last) collector process counted, not a total
since the database was created.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

__all__ = ["CounterRows", "LoopCounter", "counter_values", "labelled_values", "value"]


class CounterRows(Protocol):
    """A component's metrics object, as the ``counters`` table sees it."""

    def counter_rows(self) -> dict[str, int]:
        """Its counters under their ``counters``-table names, zeros included."""
        ...


class LoopCounter:
    """An unlabelled counter that one thread increments on a hot path: the validator's, one
    :meth:`inc` or two a message, all on the event loop. prometheus_client's
    ``Counter.inc`` takes a mutex (~0.8 us); this adds to a plain int (~0.1 us).

    A scrape, from any thread, and :func:`value` read it exact: :meth:`collect` first adds
    what was counted since it last did to a prometheus_client :class:`~prometheus_client.
    Counter` it keeps (unregistered), then returns that counter's samples, so the exposition is
    a ``Counter``'s (``_total``, ``_created``, the same name and help). ``count`` is only ever
    added to, by one thread: whichever value a reader sees is one the counter had.
    """

    def __init__(
        self, name: str, documentation: str, *, namespace: str, registry: CollectorRegistry
    ) -> None:
        self._counter = Counter(name, documentation, namespace=namespace, registry=None)
        self.count = 0
        """Counted so far; added to by :meth:`inc` only."""
        self._added = 0
        """What :attr:`_counter` holds of ``count``."""
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        """Count ``amount`` (>= 0) more; only ever from one thread."""
        self.count += amount

    def describe(self) -> Iterable[Metric]:
        """The counter's name and type, no samples (the registry's check of duplicates)."""
        return self._counter.describe()

    def collect(self) -> Iterable[Metric]:
        """The counter's samples, exact as of this call."""
        with self._lock:  # two scrapes at once must not both add the same difference
            count = self.count
            if count > self._added:
                self._counter.inc(count - self._added)
                self._added = count
            return self._counter.collect()


def _totals(metric: Counter | LoopCounter) -> Iterator[tuple[dict[str, str], float]]:
    """The ``_total`` samples of ``metric`` (a counter or a labelled counter's parent)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def value(metric: Counter | LoopCounter) -> int:
    """The value of an unlabelled counter or of one child (``counter.labels(...)``); of a
    labelled parent, the sum over its children."""
    return sum(int(v) for _, v in _totals(metric))


def labelled_values(metric: Counter) -> dict[str, int]:
    """A counter with one label: its value per label value (the children it has)."""
    return {next(iter(labels.values())): int(v) for labels, v in _totals(metric)}


def counter_values(parts: Iterable[CounterRows]) -> dict[str, int]:
    """Every part's counters under their table names, sorted by name.

    Zeros are written too: a row a previous process left must not pass for this one's.
    """
    rows: dict[str, int] = {}
    for part in parts:
        rows.update(part.counter_rows())
    return dict(sorted(rows.items()))
