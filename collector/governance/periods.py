"""The calendar periods usage is counted and billed in: a day, an ISO week (Monday to
Sunday) or a month, all in UTC.

One rule for both of their users: a ``gpu_hours`` quota counts a tenant's hours from the
start of its period (:func:`period_start`), and ``collector usage --by`` folds the ledger's
days into periods (:func:`period_label`); so the hours a quota counted in a week are those
the week's bill shows. ISO 8601 weeks: Python's :meth:`datetime.date.isocalendar`.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

__all__ = ["PERIODS", "Period", "period_label", "period_start"]

Period = Literal["day", "week", "month"]
PERIODS: Final = ("day", "week", "month")

_EPOCH: Final = dt.date(1970, 1, 1)


def period_start(period: Period, now: float) -> float:
    """The instant the calendar ``period`` (UTC) holding ``now`` began."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "week":
        day -= dt.timedelta(days=day.weekday())  # ISO weeks start on Monday
    elif period == "month":
        day = day.replace(day=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def period_label(day: int, period: Period) -> str:
    """The name of the ``period`` (UTC) holding day number ``day`` (days since 1970-01-01):
    ``2026-11-30``, ``2026-W49`` (ISO year and week) or ``2026-11``."""
    d = _EPOCH + dt.timedelta(days=day)
    if period == "day":
        return d.isoformat()
    if period == "week":
        year, week, _ = d.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{d.year}-{d.month:02d}"
