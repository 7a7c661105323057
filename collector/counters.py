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

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import Counter

__all__ = ["CounterRows", "counter_values", "labelled_values", "value"]


class CounterRows(Protocol):
    """A component's metrics object, as the ``counters`` table sees it."""

    def counter_rows(self) -> dict[str, int]:
        """Its counters under their ``counters``-table names, zeros included."""
        ...


def _totals(metric: Counter) -> Iterator[tuple[dict[str, str], float]]:
    """The ``_total`` samples of ``metric`` (a counter or a labelled counter's parent)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def value(metric: Counter) -> int:
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
