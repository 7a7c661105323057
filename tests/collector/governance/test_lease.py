"""Lease dates: notice deadlines, month ends, leap days, time zones, overlaps."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.governance.lease import (
    LeaseError,
    LeaseTerms,
    add_months,
    cancel,
    effective_end,
    extend,
    instant,
    notice_deadline,
    notice_effect,
    overlaps,
    parse_days,
    parse_notice,
    renew,
    status,
    today_in,
)

D = dt.date


def test_180_day_lease_covers_180_calendar_days() -> None:
    """Start Jan 1, 180 days: the last day is Jun 29 and Jun 30 is expired."""
    t = LeaseTerms(D(2026, 1, 1), 180)
    assert t.scheduled_end == D(2026, 6, 30)
    assert status(t, D(2026, 6, 29)) == "active"
    assert status(t, D(2026, 6, 30)) == "expired"
    assert status(t, D(2025, 12, 31)) == "pending"
    assert status(t, D(2026, 1, 1)) == "active"


def test_leap_day_counts_as_a_day() -> None:
    """365 days from 2028-01-01 ends 2028-12-31 (2028 has 366 days); from 2027 it is Jan 1."""
    assert LeaseTerms(D(2028, 1, 1), 365).scheduled_end == D(2028, 12, 31)
    assert LeaseTerms(D(2027, 1, 1), 365).scheduled_end == D(2028, 1, 1)
    assert LeaseTerms(D(2028, 2, 28), 2).scheduled_end == D(2028, 3, 1)
    assert LeaseTerms(D(2027, 2, 28), 2).scheduled_end == D(2027, 3, 2)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (D(2026, 1, 31), 1, D(2026, 2, 28)),
        (D(2028, 1, 31), 1, D(2028, 2, 29)),
        (D(2028, 2, 29), 12, D(2029, 2, 28)),
        (D(2026, 8, 31), 6, D(2027, 2, 28)),
        (D(2026, 3, 31), -1, D(2026, 2, 28)),
        (D(2026, 12, 15), 1, D(2027, 1, 15)),
    ],
)
def test_add_months_clamps_to_the_month_end(start: D, months: int, expected: D) -> None:
    """A month from Jan 31 is the last day of February, never early March."""
    assert add_months(start, months) == expected


def test_parse_days_converts_months_from_the_start() -> None:
    """6m from Jan 31 lasts to Jul 30 inclusive; 1m from Jan 31 and 1y from a leap day to the
    last day of February inclusive (it used to stop a day short, on Feb 27); weeks, days."""
    assert parse_days("6m", D(2026, 1, 31)) == (D(2026, 7, 31) - D(2026, 1, 31)).days
    assert parse_days("1y", D(2028, 2, 29)) == (D(2029, 3, 1) - D(2028, 2, 29)).days
    assert parse_days("1m", D(2026, 1, 31)) == (D(2026, 3, 1) - D(2026, 1, 31)).days
    assert parse_days("1m", D(2028, 1, 30)) == (D(2028, 3, 1) - D(2028, 1, 30)).days
    assert parse_days("1m", D(2026, 3, 31)) == (D(2026, 5, 1) - D(2026, 3, 31)).days
    assert parse_days("1m", D(2026, 2, 28)) == 28
    assert parse_days("1y", D(2028, 1, 1)) == 366
    assert parse_days("26w", D(2026, 1, 1)) == 182
    assert parse_days("180", D(2026, 1, 1)) == 180
    assert parse_days("90d", D(2026, 1, 1)) == 90
    with pytest.raises(LeaseError, match="runs past the calendar"):
        parse_days("999999y", D(2026, 1, 1))
    with pytest.raises(LeaseError, match="duration 'six months'"):
        parse_days("six months", D(2026, 1, 1))


def test_cancel_ends_at_notice_plus_period() -> None:
    """Notice on Feb 1 with 90 days: the lease ends May 2 (Feb has 28 days in 2026)."""
    t = cancel(LeaseTerms(D(2026, 1, 1), 180, notice_days=90), D(2026, 2, 1))
    assert effective_end(t) == D(2026, 5, 2)
    assert status(t, D(2026, 5, 1)) == "notice_given"
    assert status(t, D(2026, 5, 2)) == "expired"


def test_a_lease_cancelled_so_early_that_it_never_runs_is_expired() -> None:
    """Notice 60 days before a start, 30 days' notice: it ends before it starts, so it is
    expired at once, not pending until a start it will never have."""
    t = cancel(LeaseTerms(D(2026, 6, 1), 180, notice_days=30), D(2026, 4, 1))
    assert effective_end(t) == D(2026, 6, 1)  # notice + period is May 1: it ends at its start
    assert status(t, D(2026, 4, 1)) == "expired"
    kept = cancel(LeaseTerms(D(2026, 6, 1), 180, notice_days=90), D(2026, 4, 1))
    assert status(kept, D(2026, 4, 1)) == "pending"  # ends Jun 30: runs a month


def test_cancel_respects_the_contractual_minimum() -> None:
    """With a 120-day minimum, notice on day 1 still runs to day 120."""
    t = cancel(LeaseTerms(D(2026, 1, 1), 180, notice_days=30, min_days=120), D(2026, 1, 1))
    assert effective_end(t) == D(2026, 5, 1)  # Jan 1 + 120 days


def test_late_notice_does_not_lengthen_a_fixed_lease() -> None:
    """Notice 10 days before the end with 90 days' notice: still ends on schedule."""
    t = cancel(LeaseTerms(D(2026, 1, 1), 180, notice_days=90), D(2026, 6, 20))
    assert effective_end(t) == D(2026, 6, 30)


def test_notice_deadline_is_term_end_minus_notice() -> None:
    """180 days from Jan 1 with 90 days' notice: notice by Apr 1, ending Jun 30."""
    t = LeaseTerms(D(2026, 1, 1), 180, notice_days=90)
    assert notice_deadline(t, D(2026, 1, 10)) == D(2026, 4, 1)
    on_deadline = cancel(t, D(2026, 4, 1))
    assert effective_end(on_deadline) == t.scheduled_end
    assert notice_deadline(on_deadline, D(2026, 4, 1)) is None


def test_renewing_lease_rolls_over_and_its_deadline_moves() -> None:
    """A renewing 90-day lease with 30 days' notice: a missed deadline runs into the next term."""
    t = LeaseTerms(D(2026, 1, 1), 90, notice_days=30, auto_renew=True)
    assert effective_end(t) is None
    assert status(t, D(2027, 1, 1)) == "active"
    assert notice_deadline(t, D(2026, 1, 5)) == D(2026, 3, 2)  # Apr 1 - 30 days
    # Missed: the next term ends Jun 30, so notice is due by May 31.
    assert notice_deadline(t, D(2026, 3, 3)) == D(2026, 5, 31)
    late = cancel(t, D(2026, 3, 3))
    assert effective_end(late) == D(2026, 4, 2)


def test_cancel_twice_or_after_expiry_is_refused() -> None:
    """Notice can be given once, and not on an expired lease."""
    t = LeaseTerms(D(2026, 1, 1), 10)
    with pytest.raises(LeaseError, match="ended by 2026-02-01 \\(its last day is 2026-01-10\\)"):
        cancel(t, D(2026, 2, 1))
    c = cancel(t, D(2026, 1, 2))
    with pytest.raises(LeaseError, match="already given on 2026-01-02"):
        cancel(c, D(2026, 1, 3))


def test_extend_and_renew_move_the_end() -> None:
    """extend adds days; renew adds one original term; neither works once cancelled."""
    t = LeaseTerms(D(2026, 1, 1), 180)
    assert extend(t, 30, D(2026, 2, 1)).scheduled_end == D(2026, 7, 30)
    r = renew(renew(t, D(2026, 2, 1)), D(2026, 2, 1))
    assert r.duration_days == 540
    assert r.term == 180
    with pytest.raises(LeaseError, match="cannot extend"):
        extend(cancel(t, D(2026, 2, 1)), 10, D(2026, 2, 2))
    with pytest.raises(LeaseError, match="expired"):
        renew(t, D(2026, 7, 1))


def test_tokyo_lease_starts_nine_hours_before_utc() -> None:
    """On the boundary instant a Tokyo lease is active and the same dates in UTC pending."""
    tokyo = LeaseTerms(D(2026, 4, 1), 30, tz="Asia/Tokyo")
    utc = LeaseTerms(D(2026, 4, 1), 30)
    boundary = dt.datetime(2026, 3, 31, 15, 0, tzinfo=dt.UTC).timestamp()  # 00:00 in Tokyo
    assert instant(tokyo.start, tokyo.tz) == boundary
    assert status(tokyo, today_in("Asia/Tokyo", boundary)) == "active"
    assert status(utc, today_in("UTC", boundary)) == "pending"
    assert status(tokyo, today_in("Asia/Tokyo", boundary - 1)) == "pending"


def test_dst_day_is_one_calendar_day() -> None:
    """A lease over the DST switch in Zurich still ends at local midnight of its end date."""
    t = LeaseTerms(D(2026, 3, 28), 2, tz="Europe/Zurich")
    end = dt.datetime(2026, 3, 30, tzinfo=dt.UTC).timestamp() - 2 * 3600  # CEST = UTC+2
    assert instant(t.scheduled_end, t.tz) == end


def test_overlap_uses_instants_across_zones() -> None:
    """Back to back in one zone is no overlap; the same dates in Tokyo then UTC overlap."""
    a = LeaseTerms(D(2026, 1, 1), 31)
    b = LeaseTerms(D(2026, 2, 1), 28)
    assert not overlaps(a, b)
    assert overlaps(a, LeaseTerms(D(2026, 1, 31), 5))
    # UTC lease ends Feb 1 00:00 UTC; Tokyo lease starting Feb 1 begins Jan 31 15:00 UTC.
    assert overlaps(a, LeaseTerms(D(2026, 2, 1), 5, tz="Asia/Tokyo"))
    # A cancelled lease frees its nodes from its effective end.
    cancelled = cancel(LeaseTerms(D(2026, 1, 1), 180, notice_days=10), D(2026, 1, 5))
    assert not overlaps(cancelled, LeaseTerms(D(2026, 1, 15), 30))
    # A renewing lease without notice is open-ended.
    assert overlaps(LeaseTerms(D(2026, 1, 1), 10, auto_renew=True), LeaseTerms(D(2030, 1, 1), 1))


def test_bad_terms_name_the_field() -> None:
    """Zero duration, negative notice and unknown zones are refused with the reason."""
    with pytest.raises(LeaseError, match="at least 1 day"):
        LeaseTerms(D(2026, 1, 1), 0)
    with pytest.raises(LeaseError, match="cannot be negative"):
        LeaseTerms(D(2026, 1, 1), notice_days=-1)
    with pytest.raises(LeaseError, match="unknown time zone 'Mars/Olympus'"):
        LeaseTerms(D(2026, 1, 1), tz="Mars/Olympus")


def test_dates_and_lengths_stay_inside_the_calendar() -> None:
    """A start near year 9999 or a length past 100 years is refused, not an overflow."""
    with pytest.raises(LeaseError, match="out of range"):
        LeaseTerms(D(9999, 12, 1), 180)
    with pytest.raises(LeaseError, match="longer than 36600 days"):
        LeaseTerms(D(2026, 1, 1), 10**9)
    t = LeaseTerms(D(8000, 1, 1), 36_000, notice_days=36_000)
    assert status(cancel(t, D(8090, 1, 1)), D(8090, 1, 2)) == "notice_given"
    with pytest.raises(LeaseError, match="duration_days 36720 is longer"):
        renew(LeaseTerms(D(2026, 1, 1), 18_360), D(2026, 1, 2))


def test_month_notice_counts_back_from_the_term_end() -> None:
    """The issue's case: a year from 2038-02-28 with 3 months' notice ends 2039-02-28
    (exclusive); three calendar months before that is 2038-11-28, and notice on that day
    ends the lease with its term while a day later does not."""
    start = D(2038, 2, 28)
    days, months = parse_notice("3m", start)
    assert (days, months) == (0, 3)
    t = LeaseTerms(start, parse_days("1y", start), notice_months=months)
    assert t.scheduled_end == D(2039, 2, 28)
    assert notice_deadline(t, start) == D(2038, 11, 28)
    assert notice_effect(t, D(2038, 11, 28)) == D(2039, 2, 28)
    assert notice_effect(t, D(2038, 11, 29)) == D(2039, 3, 1)  # too late for that end
    renewing = LeaseTerms(start, 365, notice_months=3, auto_renew=True)
    assert effective_end(cancel(renewing, D(2038, 11, 28))) == D(2039, 2, 28)
    assert effective_end(cancel(renewing, D(2038, 11, 29))) == D(2039, 3, 1)


def test_month_notice_clamps_to_the_month_end_and_years_are_twelve_months() -> None:
    """A term ending May 31 with 3 months' notice: due by Feb 28 (no Feb 31); 1y = 12m."""
    t = LeaseTerms(D(2039, 1, 1), (D(2039, 5, 31) - D(2039, 1, 1)).days, notice_months=3)
    assert notice_deadline(t, D(2039, 1, 1)) == D(2039, 2, 28)
    assert parse_notice("1y", D(2039, 1, 1)) == (0, 12)
    assert parse_notice("90d", D(2039, 1, 1)) == (90, 0)
    assert parse_notice("2w", D(2039, 1, 1)) == (14, 0)
    with pytest.raises(LeaseError, match="in days or in months, not both"):
        LeaseTerms(D(2039, 1, 1), 30, notice_days=5, notice_months=1)


def test_without_notice_the_deadline_is_the_last_day_and_cancel_accepts_it() -> None:
    """No notice period: the deadline is the lease's last day, cancel on it ends the lease
    with its term (it holds that day), and the day after is refused as ended."""
    t = LeaseTerms(D(2041, 1, 1), 31)
    deadline = notice_deadline(t, D(2041, 1, 1))
    assert deadline == D(2041, 1, 31)
    assert effective_end(cancel(t, D(2041, 1, 31))) == t.scheduled_end
    assert effective_end(cancel(t, D(2041, 1, 10))) == D(2041, 1, 11)  # holds Jan 10
    with pytest.raises(LeaseError, match="has ended"):
        cancel(t, D(2041, 2, 1))
