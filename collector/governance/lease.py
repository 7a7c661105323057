"""Lease dates: what a contract says, as calendar dates in the lease's own time zone.

Pure: no I/O, no clock; "today" is a parameter (:func:`today_in` turns an instant into the
lease's calendar date). A lease covers whole days: from ``start`` (inclusive) to ``end``
(exclusive), both dates in the lease's time zone (IANA name, ``UTC`` by default), so a
180-day lease starting 2026-01-01 covers 2026-01-01 .. 2026-06-29 and its ``end`` is
2026-06-30 (00:00 local time). Its instants (:func:`instant`) compare leases in different
zones: a lease in Asia/Tokyo starts nine hours before the same dates in UTC.

The rules, as a lawyer would read them:

* **Duration** is in days. Months and years are converted once, when the lease is written,
  from the start date, to the day before the same day of the later month (a month from
  Jan 15 runs to Feb 14 inclusive), and when that month has no such day, to its last day: a
  month from Jan 31 runs to Feb 28 inclusive (Feb 29 in a leap year), never into March; a
  year from Feb 29 runs to Feb 28 (BGB §188(3), the common-law corresponding-date rule).
  Days are calendar days, so leap days count
  (a 365-day lease from 2028-01-01 ends 2028-12-31, one day short of the calendar year).
* **Notice** is a period in days or in calendar months (``--notice 90d``, ``--notice 3m``;
  a year is 12 months), kept as written. Notice given on day ``d`` (a date in the lease's
  zone) takes effect (:func:`notice_effect`): with ``n`` days, at ``d + n``; with ``m``
  months, at the same day ``m`` months later, counted so that notice on the last day to
  give it (below) takes effect exactly at the term's end (when that month has no such day,
  the first day after it). The lease then ends at that date (exclusive) or at the
  contractual minimum end (``start + min_days``), whichever is later (:func:`effective_end`).
  Notice never makes a non-renewing lease longer: it still ends at its scheduled end.
* **Without a notice period** notice takes effect at the end of the day it is given: the
  lease holds that day and ends after it. So notice can be given on any day of the lease up
  to its last day (``cancel`` refuses only once the lease has ended), and the last day to
  give notice that ends it with its term is the term's last day.
* **Renewing** leases (``auto_renew``) roll over into a new term of ``term_days`` at each
  term end until notice is given; then they end at the later of notice + period and the
  minimum. Without notice their end is open (``None``).
* **Last day to give notice** (:func:`notice_deadline`): the last date on which notice still
  ends the lease at the end of its current term, counted back from the term's end (its
  exclusive end date) as a lawyer counts a period backwards: ``n`` days back, or ``m``
  calendar months back with the day clamped to the month's end (a term ending 2039-02-28
  with 3 months' notice: 2038-11-28; ending 2039-05-31 with 3 months: 2039-02-28), and
  the term's last day when there is no notice period. For a renewing
  lease, missing it means the lease runs into the next term (to notice + period); for a
  fixed lease it is the last day on which cancelling ends it before its scheduled end.
* **Status** (:func:`status`): ``pending`` before the start, ``expired`` from the effective
  end, ``notice_given`` while notice runs, ``active`` otherwise.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from dataclasses import dataclass, replace
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DEFAULT_DURATION_DAYS",
    "MAX_DAYS",
    "LeaseError",
    "LeaseStatus",
    "LeaseTerms",
    "add_months",
    "cancel",
    "check_zone",
    "effective_end",
    "extend",
    "instant",
    "interval",
    "notice_deadline",
    "notice_effect",
    "overlaps",
    "parse_date",
    "parse_days",
    "parse_notice",
    "renew",
    "status",
    "term_end",
    "today_in",
]

DEFAULT_DURATION_DAYS: Final = 180
MAX_DAYS: Final = 36_600
"""Any one length (duration, term, notice, minimum): 100 years. With starts up to year 8000
no date a lease computes can leave the calendar (year 9999)."""
MAX_NOTICE_MONTHS: Final = 1200
"""A notice period in months: at most 100 years, as any other length."""
_FIRST_YEAR: Final = 1970
_LAST_YEAR: Final = 8000
LeaseStatus = Literal["pending", "active", "notice_given", "expired"]
_DAYS: Final = re.compile(r"\s*(\d{1,6})\s*([dwmy]?)\s*\Z", re.IGNORECASE)


class LeaseError(ValueError):
    """A lease operation the contract does not allow (cancel twice, extend a cancelled one)."""


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """The dates of one lease. Immutable: operations return new terms."""

    start: dt.date
    duration_days: int = DEFAULT_DURATION_DAYS
    """Scheduled length from ``start``; grows with :func:`extend` and :func:`renew`."""
    notice_days: int = 0
    min_days: int = 0
    """Contractual minimum: the lease cannot end before ``start + min_days``."""
    tz: str = "UTC"
    auto_renew: bool = False
    term_days: int | None = None
    """Length of one renewal term (default: the original duration)."""
    notice_given: dt.date | None = None
    """The date (in ``tz``) on which notice was given, or ``None``."""
    notice_months: int = 0
    """A notice period in calendar months (then ``notice_days`` is 0)."""

    def __post_init__(self) -> None:
        if not 0 <= self.notice_months <= MAX_NOTICE_MONTHS:
            raise LeaseError(
                f"notice_months must be from 0 to {MAX_NOTICE_MONTHS}, got {self.notice_months}"
            )
        if self.notice_months and self.notice_days:
            raise LeaseError("a notice period is in days or in months, not both")
        if not _FIRST_YEAR <= self.start.year <= _LAST_YEAR:
            raise LeaseError(
                f"start {self.start.isoformat()} is out of range: years {_FIRST_YEAR} to "
                f"{_LAST_YEAR}"
            )
        for name in ("duration_days", "notice_days", "min_days", "term_days"):
            value = getattr(self, name)
            if value is not None and value > MAX_DAYS:
                raise LeaseError(f"{name} {value} is longer than {MAX_DAYS} days (100 years)")
        if self.notice_given is not None and not _FIRST_YEAR <= self.notice_given.year <= (
            _LAST_YEAR + 200
        ):
            raise LeaseError(f"notice date {self.notice_given.isoformat()} is out of range")
        if self.duration_days < 1:
            raise LeaseError(f"duration must be at least 1 day, got {self.duration_days}")
        if self.notice_days < 0 or self.min_days < 0:
            raise LeaseError("notice period and contractual minimum cannot be negative")
        if self.term_days is not None and self.term_days < 1:
            raise LeaseError(f"a renewal term must be at least 1 day, got {self.term_days}")
        check_zone(self.tz)

    @property
    def notice(self) -> str:
        """The notice period as written: ``90d``, ``3m`` or ``0d``."""
        return f"{self.notice_months}m" if self.notice_months else f"{self.notice_days}d"

    @property
    def term(self) -> int:
        """Length of one term in days."""
        return self.term_days if self.term_days is not None else self.duration_days

    @property
    def scheduled_end(self) -> dt.date:
        """End (exclusive) of the scheduled duration, without renewals or notice."""
        return self.start + dt.timedelta(days=self.duration_days)

    @property
    def min_end(self) -> dt.date:
        """The earliest end the contract allows."""
        return self.start + dt.timedelta(days=self.min_days)


def check_zone(tz: str) -> ZoneInfo:
    """The zone named ``tz``; :class:`LeaseError` naming it when it does not exist."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise LeaseError(
            f"unknown time zone {tz!r}: use an IANA name such as UTC or Europe/Zurich"
        ) from None


def today_in(tz: str, now: float) -> dt.date:
    """The calendar date in zone ``tz`` at the instant ``now`` (Unix seconds)."""
    return dt.datetime.fromtimestamp(now, check_zone(tz)).date()


_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()


def instant(day: dt.date, tz: str) -> float:
    """The instant (Unix seconds) at which ``day`` begins in zone ``tz``."""
    if tz == "UTC":  # most leases: no zone lookup (admission computes thousands of these)
        return float((day.toordinal() - _EPOCH_ORDINAL) * 86_400)
    return dt.datetime(day.year, day.month, day.day, tzinfo=check_zone(tz)).timestamp()


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` moved by ``months`` calendar months, clamped to the month's last day.

    Jan 31 + 1 month = Feb 28 (29 in a leap year); Feb 29 + 12 months = Feb 28.
    """
    index = day.year * 12 + day.month - 1 + months
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return dt.date(year, month0 + 1, min(day.day, last))


def parse_date(text: str, *, field: str = "date") -> dt.date:
    """A calendar date written ``YYYY-MM-DD``; :class:`LeaseError` naming ``field`` otherwise."""
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise LeaseError(f"{field} {text!r} is not a date: write YYYY-MM-DD") from None


def parse_days(text: str, start: dt.date, *, field: str = "duration") -> int:
    """A length in days: ``180``, ``180d``, ``26w``, ``6m`` or ``1y`` (months and years from
    ``start``: ``6m`` from Jan 31 runs to Jul 30 inclusive, ``1m`` from Jan 31 to Feb 28)."""
    m = _DAYS.match(text)
    if m is None:
        raise LeaseError(f"{field} {text!r} is not a length: write e.g. 180d, 26w, 6m or 1y")
    n, unit = int(m.group(1)), m.group(2).lower()
    if unit in ("", "d"):
        return n
    if unit == "w":
        return 7 * n
    months = n if unit == "m" else 12 * n
    try:
        end = add_months(start, months)
        if end.day < start.day:  # clamped: that month has no such day, so it runs to its end
            end += dt.timedelta(days=1)
        return (end - start).days
    except (ValueError, OverflowError):
        raise LeaseError(f"{field} {text!r} runs past the calendar (year 9999)") from None


def parse_notice(text: str, start: dt.date, *, field: str = "--notice") -> tuple[int, int]:
    """A notice period: (days, months). ``3m`` and ``1y`` are kept as calendar months
    (counted back from a term's end, not forward from the start); ``90d``, ``2w`` in days."""
    m = _DAYS.match(text)
    if m is not None and m.group(2).lower() in ("m", "y"):
        months = int(m.group(1)) * (12 if m.group(2).lower() == "y" else 1)
        if months > MAX_NOTICE_MONTHS:
            raise LeaseError(f"{field} {text!r} is longer than {MAX_NOTICE_MONTHS} months")
        return 0, months
    return parse_days(text, start, field=field), 0


def notice_effect(terms: LeaseTerms, on: dt.date) -> dt.date:
    """The date (exclusive end) at which notice given on ``on`` ends the lease, before the
    contractual minimum and the scheduled end are applied (see the module docstring)."""
    m = terms.notice_months
    if not m:
        return on + dt.timedelta(days=max(terms.notice_days, 1))
    end = add_months(on, m)
    if add_months(end, -m) < on:  # clamped (Nov 30 + 3 months = Feb 28): the day after
        end += dt.timedelta(days=1)
    return end


def _deadline(terms: LeaseTerms, end: dt.date) -> dt.date:
    """The last day notice ends the lease at ``end``: the period counted back from it."""
    if terms.notice_months:
        return add_months(end, -terms.notice_months)
    return end - dt.timedelta(days=max(terms.notice_days, 1))


def term_end(terms: LeaseTerms, today: dt.date) -> dt.date:
    """End (exclusive) of the term that holds ``today`` (the first one before the start).

    A fixed lease has one term, its scheduled duration; a renewing lease rolls over every
    ``term`` days after that.
    """
    end = terms.scheduled_end
    if not terms.auto_renew or today < end:
        return end
    terms_passed = (today - end).days // terms.term + 1
    return end + dt.timedelta(days=terms_passed * terms.term)


def effective_end(terms: LeaseTerms) -> dt.date | None:
    """The date (exclusive) the lease ends; ``None``: a renewing lease without notice."""
    if terms.notice_given is None:
        return None if terms.auto_renew else terms.scheduled_end
    by_notice = max(notice_effect(terms, terms.notice_given), terms.min_end)
    if terms.auto_renew:
        return by_notice
    return min(by_notice, terms.scheduled_end)


def instants(terms: LeaseTerms) -> tuple[float, float | None]:
    """The instants the lease holds its nodes between: its start and its effective end
    (exclusive; ``None``: open-ended), each at midnight in the lease's zone."""
    end = effective_end(terms)
    return instant(terms.start, terms.tz), None if end is None else instant(end, terms.tz)


def status(terms: LeaseTerms, today: dt.date) -> LeaseStatus:
    """``pending``, ``active``, ``notice_given`` or ``expired`` on ``today`` (lease's zone)."""
    end = effective_end(terms)
    if end is not None and (today >= end or end <= terms.start):
        return "expired"  # ended, or cancelled so early that it never runs
    if today < terms.start:
        return "pending"
    return "notice_given" if terms.notice_given is not None else "active"


def notice_deadline(terms: LeaseTerms, today: dt.date) -> dt.date | None:
    """The last day to give notice so that the lease ends with its current term.

    ``None`` once notice was given or the lease has expired. May be before ``today``: for a
    fixed lease that means cancelling now ends it only at its scheduled end anyway.
    """
    if terms.notice_given is not None or status(terms, today) == "expired":
        return None
    end = term_end(terms, today)
    deadline = _deadline(terms, end)
    if terms.auto_renew and deadline < today:
        # Too late for this term: the next term's deadline is the one that still counts.
        end += dt.timedelta(days=terms.term)
        deadline = _deadline(terms, end)
    return deadline


def cancel(terms: LeaseTerms, on: dt.date) -> LeaseTerms:
    """Notice given on ``on``; :class:`LeaseError` if already given or the lease has ended."""
    if terms.notice_given is not None:
        raise LeaseError(f"notice was already given on {terms.notice_given.isoformat()}")
    if status(terms, on) == "expired":
        end = effective_end(terms)
        last = (
            "" if end is None else f" (its last day is {(end - dt.timedelta(days=1)).isoformat()})"
        )
        raise LeaseError(
            f"the lease has ended by {on.isoformat()}{last}: there is nothing to cancel"
        )
    return replace(terms, notice_given=on)


def extend(terms: LeaseTerms, days: int, today: dt.date) -> LeaseTerms:
    """The scheduled duration made ``days`` longer (a fixed lease, not cancelled)."""
    if days < 1:
        raise LeaseError(f"extend by at least 1 day, got {days}")
    _check_open(terms, today, "extend")
    return replace(terms, duration_days=terms.duration_days + days)


def renew(terms: LeaseTerms, today: dt.date) -> LeaseTerms:
    """One more term (``term`` days) after the scheduled end."""
    _check_open(terms, today, "renew")
    return replace(terms, duration_days=terms.duration_days + terms.term, term_days=terms.term)


def _check_open(terms: LeaseTerms, today: dt.date, what: str) -> None:
    if terms.notice_given is not None:
        raise LeaseError(
            f"notice was given on {terms.notice_given.isoformat()}: a cancelled lease cannot "
            f"{what}; add a new lease for the same nodes from its end"
        )
    if status(terms, today) == "expired":
        raise LeaseError(f"the lease has expired: cannot {what} it; add a new lease")
    if terms.auto_renew:
        raise LeaseError(f"the lease renews by itself every {terms.term} days: nothing to {what}")


def interval(terms: LeaseTerms) -> tuple[float, float]:
    """The lease's span as instants: :func:`instants`, with ``inf`` for an open end."""
    start, end = instants(terms)
    return start, math.inf if end is None else end


def overlaps(a: LeaseTerms, b: LeaseTerms) -> bool:
    """Whether two leases share any instant (half-open spans, so back to back is fine)."""
    a0, a1 = interval(a)
    b0, b1 = interval(b)
    return a0 < b1 and b0 < a1
