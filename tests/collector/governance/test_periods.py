"""The calendar periods (UTC day, ISO week, month): a quota's period starts where the
bill's period of the same name starts, so the hours a quota counted are those billed."""

from __future__ import annotations

import pytest

from collector.governance.periods import PERIODS, Period, period_label, period_start

_DAY_S = 86_400


@pytest.mark.parametrize("period", PERIODS)
def test_a_period_starts_on_the_day_its_label_changes(period: Period) -> None:
    """Over 2026-2028 (a leap year, a 53-week ISO year: 2026), each day's label is that of
    the first day of its period, and the label changes on exactly the days a period starts."""
    first = 20_454  # 2026-01-01
    for day in range(first, first + 3 * 366):
        start = period_start(period, day * _DAY_S + 43_200.0)  # noon
        assert start % _DAY_S == 0
        assert period_label(day, period) == period_label(int(start) // _DAY_S, period)
        begins = start == day * _DAY_S
        assert begins == (period_label(day, period) != period_label(day - 1, period))


def test_labels_name_the_iso_week_and_the_month() -> None:
    """2026-12-31 is a Thursday of ISO week 53 of 2026; 2027-01-01 still is."""
    assert [period_label(20_818, p) for p in PERIODS] == ["2026-12-31", "2026-W53", "2026-12"]
    assert period_label(20_819, "week") == "2026-W53"
    assert period_start("week", 20_819 * _DAY_S) == 20_815 * _DAY_S  # Monday 2026-12-28
