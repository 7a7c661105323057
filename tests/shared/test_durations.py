"""The one duration grammar (Prometheus' ``model.ParseDuration``) and its refusals."""

from __future__ import annotations

import pytest

from shared.durations import MAX_DURATION_S, DurationError, format_exact, parse_duration
from shared.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("0h0m", 0.0),
        ("500ms", 0.5),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("2d", 172_800.0),
        ("1w", 604_800.0),
        ("1y", 365 * 86_400.0),
        ("1m500ms", 60.5),
        ("1y2w3d4h5m6s7ms", 31_536_000 + 1_209_600 + 259_200 + 14_400 + 300 + 6.007),
        ("100y", 100 * 365 * 86_400.0),
        ("0001s", 1.0),
    ],
)
def test_valid_durations(text: str, seconds: float) -> None:
    """Whole numbers with units y w d h m s ms, largest first, each once; ``0`` alone."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason", "fix"),
    [
        ("30m1h", "units go from the largest to the smallest", "write '1h30m' instead"),
        ("1ms1s", "units go from the largest to the smallest", "write '1s1ms' instead"),
        ("1h1h", "each unit at most once", "write '2h' instead"),
        ("1h30m1h", "each unit at most once", "write '2h30m' instead"),
        ("1.5h", "whole numbers only", "write '1h30m' instead"),
        (".5h", "whole numbers only", "write '30m' instead"),
        ("1.5ms", "whole numbers only", "round it to whole milliseconds: '2ms'"),
        ("90", "a number needs a unit", "write '90s' instead"),
        ("0.25", "a number needs a unit", "write '250ms' instead"),
        (" 15m", "no spaces", "write '15m' instead"),
        ("1h 30m", "no spaces", "write '1h30m' instead"),
        ("", "it is empty", "e.g. 90s, 15m, 1h30m, 2d"),
        ("  ", "it is empty", "e.g. 90s, 15m, 1h30m, 2d"),
        ("-1h", "durations cannot be negative", "e.g. 90s, 15m, 1h30m, 2d"),
        ("-5", "durations cannot be negative", "e.g. 90s, 15m, 1h30m, 2d"),
        ("15 minutes", "expected numbers with units", "e.g. 90s, 15m, 1h30m, 2d"),
        ("1h30", "expected numbers with units", "e.g. 90s, 15m, 1h30m, 2d"),
        ("1H", "expected numbers with units", "e.g. 90s, 15m, 1h30m, 2d"),
        ("1e3s", "expected numbers with units", "e.g. 90s, 15m, 1h30m, 2d"),
        ("inf", "expected numbers with units", "e.g. 90s, 15m, 1h30m, 2d"),
        ("101y", "longer than 100 years", "give a shorter duration"),
        ("99999999999w", "longer than 100 years", "give a shorter duration"),
        ("9" * 5000 + "s", "longer than 100 years", "give a shorter duration"),
        ("1.5" + "9" * 5000 + "h", "too long", "e.g. 90s, 15m, 1h30m, 2d"),
    ],
)
def test_invalid_durations_say_why_and_what_to_write(text: str, reason: str, fix: str) -> None:
    """Each refusal is one line naming the field, the text (cut short), the reason and the fix:
    the exact text to write wherever the text has one meaning."""
    with pytest.raises(DurationError) as caught:
        parse_duration(text, field="--since")
    err = caught.value
    assert isinstance(err, ConfigError)
    assert err.field == "--since"
    assert reason in err.reason
    assert fix in err.fix
    assert str(err).startswith(f"--since '{text[:40]}")
    assert "\n" not in str(err)
    assert len(str(err)) < 250


def test_the_suggested_text_parses_to_what_was_meant() -> None:
    """A refused form's suggestion is in the grammar and means the same length of time."""
    for text, meant in [("1.5h", 5400.0), ("30m1h", 5400.0), ("90", 90.0), ("1.1s", 1.1)]:
        with pytest.raises(DurationError) as caught:
            parse_duration(text)
        suggested = caught.value.fix.split("'")[1]
        assert parse_duration(suggested) == meant


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (5_400_000, "1h30m"),
        (90 * 86_400_000, "90d"),
        (14 * 86_400_000, "2w"),
        (365 * 86_400_000, "1y"),
        (366 * 86_400_000, "366d"),
    ],
)
def test_format_exact_writes_what_prometheus_writes(ms: int, text: str) -> None:
    """Years and weeks only when they divide exactly (``90d``, not ``12w6d``), as
    Prometheus' ``Duration.String``; the text parses back to the same length."""
    assert format_exact(ms) == text
    assert parse_duration(text) == ms / 1000


def test_the_bound_is_a_century() -> None:
    """The longest duration is 100 years (its milliseconds fit SQLite's integers)."""
    assert MAX_DURATION_S == 100 * 365.25 * 86_400
    assert parse_duration("5217w") < MAX_DURATION_S < 5218 * 7 * 86_400
    with pytest.raises(DurationError, match="longer than 100 years"):
        parse_duration("5218w")


def test_a_minute_is_not_a_lease_month() -> None:
    """``m`` is a minute here; lease lengths (``lease add --duration 1m``) are calendar months,
    read by another function on purpose."""
    import datetime as dt  # noqa: PLC0415

    from collector.governance.lease import parse_days  # noqa: PLC0415

    assert parse_duration("1m") == 60.0
    assert parse_days("1m", dt.date(2026, 1, 1)) == 31
