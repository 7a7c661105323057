"""The one duration grammar of capwatch: Prometheus' and Alertmanager's.

Every duration written as text, in a settings file (``group_wait = "30s"``) or on a command
line (``--since 1h30m``), goes through :func:`parse_duration`. The grammar is Prometheus'
``model.ParseDuration`` (github.com/prometheus/common, ``model/time.go``), which Alertmanager
uses for its own configuration:

* whole numbers, each followed by a unit: ``y`` (365 days), ``w``, ``d``, ``h``, ``m``
  (minutes), ``s``, ``ms``;
* units from the largest to the smallest, each at most once: ``1h30m``, ``2d12h``, ``1m500ms``;
* ``0`` alone is zero; nothing else goes without a unit; no signs, no spaces, no fractions.

A negative duration is refused everywhere (``--since -5m``: "durations cannot be negative";
:func:`shared.cli.run_command` hands argparse's ``--since -5m`` to the flag as
``--since=-5m``, which argparse took for an option). Zero is refused where a duration is a
span that must hold something (``positive=True``: how far back a query looks, how long a
silence lasts); a setting bounds its own (``retention_s``, ``buffer_s``).

Settings whose key ends in ``_s`` (``retention_s = 86400.5``) are plain seconds, a number,
never parsed here.

Not this grammar: the calendar lengths of leases (``collector lease add --duration 6m``), where
``m`` is a **month** and lengths are whole days counted on the calendar from a start date;
:func:`collector.governance.lease.parse_days` reads those. Here ``m`` is always a minute.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

from shared.errors import ConfigError

__all__ = ["MAX_DURATION_S", "DurationError", "format_exact", "parse_duration"]

_UNIT_MS: Final = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1_000,
    "ms": 1,
}
"""Milliseconds per unit, largest first: the order the grammar asks for."""
_ORDER: Final = {unit: rank for rank, unit in enumerate(_UNIT_MS)}
_TERM: Final = re.compile(r"([0-9]+)(ms|[ywdhms])")
MAX_DURATION_S: Final = 100 * 365.25 * 86_400.0
"""A century: longer is a typo, and would overflow SQLite's integers as milliseconds
(Prometheus' own bound, int64 milliseconds, is far beyond it)."""
_MAX_DIGITS: Final = 15
"""Significant digits of one number past which it is out of range whatever its unit (and
``int()`` of a very long string is refused by Python itself)."""
_OUT_OF_RANGE_MS: Final = 10**20
_MAX_TEXT: Final = 100
"""Longer text is not read for a suggestion (``Fraction`` of 5,000 digits is refused)."""
_HOW: Final = (
    "whole numbers with units y, w, d, h, m, s, ms, largest first, each once, "
    "e.g. 90s, 15m, 1h30m, 2d"
)
# What the old grammar (one decimal number, an optional unit, spaces allowed) and a few slips
# read as, to tell the operator the exact text to write instead.
_LENIENT_TERM: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|[ywdhms])?\s*")


class DurationError(ConfigError):
    """A duration that is not in the grammar; ``reason`` says why and ``fix`` what to write
    (``str()`` is the whole line, naming the field)."""

    def __init__(self, field: str, text: str, reason: str, fix: str) -> None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        super().__init__(f"{field} {shown!r} is not a duration: {reason}; {fix}", field=field)
        self.text = text
        self.reason = reason
        self.fix = fix


def parse_duration(text: str, *, field: str = "duration", positive: bool = False) -> float:
    """``"1h30m"`` -> ``5400.0`` seconds, in the grammar of this module's docstring.

    Raises :class:`DurationError` (a :class:`ConfigError` naming ``field``) with the reason and,
    where the text has one meaning (``"1.5h"``, ``"90"``, ``"30m1h"``), the exact text to write
    instead; with ``positive``, a :class:`ConfigError` for zero (``0``, ``0s``).
    """
    ms = 0 if text == "0" else _strict_ms(text)
    if ms is None:
        raise _refusal(text, field)
    if ms / 1000 > MAX_DURATION_S:
        raise DurationError(field, text, "longer than 100 years", "give a shorter duration")
    if positive and ms == 0:
        raise ConfigError(f"{field} {text!r} must be longer than 0, e.g. 1h", field=field)
    return ms / 1000


def format_exact(ms: int) -> str:
    """``5_400_000`` -> ``"1h30m"``: milliseconds as the grammar writes them, as Prometheus'
    ``Duration.String`` does (years and weeks only when they divide the rest exactly: ``90d``,
    not ``12w6d``)."""
    if ms == 0:
        return "0s"
    out = []
    for unit, per in _UNIT_MS.items():
        if unit in ("y", "w") and ms % per:
            continue
        if ms >= per:
            out.append(f"{ms // per}{unit}")
            ms %= per
    return "".join(out)


def _strict_ms(text: str) -> int | None:
    """The duration in milliseconds, or ``None`` when ``text`` is not in the grammar."""
    pos, total, last = 0, 0, -1
    while pos < len(text):
        term = _TERM.match(text, pos)
        if term is None:
            return None
        digits, unit = term.groups()
        rank = _ORDER[unit]
        if rank <= last:
            return None
        if len(digits.lstrip("0")) > _MAX_DIGITS:
            total += _OUT_OF_RANGE_MS
        else:
            total += int(digits) * _UNIT_MS[unit]
        last, pos = rank, term.end()
    return total if last >= 0 else None


def _refusal(text: str, field: str) -> DurationError:
    """Why ``text`` is refused, with the text to write where there is exactly one."""
    if not text.strip():
        return DurationError(field, text, "it is empty", f"write {_HOW}")
    if text.lstrip().startswith("-"):
        return DurationError(field, text, "durations cannot be negative", f"write {_HOW}")
    if len(text) > _MAX_TEXT:
        return DurationError(field, text, "too long", f"write {_HOW}")
    terms = _lenient_terms(text)
    if terms is None:
        return DurationError(field, text, "expected numbers with units", f"write {_HOW}")
    units = [unit for _, unit in terms]
    if any(len(number.partition(".")[0].lstrip("0")) > _MAX_DIGITS for number, _ in terms):
        return DurationError(field, text, "longer than 100 years", "give a shorter duration")
    ms = sum((Fraction(number) * _UNIT_MS[unit or "s"] for number, unit in terms), Fraction(0))
    if ms / 1000 > MAX_DURATION_S:
        return DurationError(field, text, "longer than 100 years", "give a shorter duration")
    if any(unit is None for unit in units):
        reason = "a number needs a unit (a bare number is 0 only)"
    elif text != text.strip() or any(c.isspace() for c in text):
        reason = "no spaces"
    elif any("." in number for number, _ in terms):
        reason = "whole numbers only"
    elif len(set(units)) < len(units):
        reason = "each unit at most once"
    else:
        reason = "units go from the largest to the smallest"
    seconds = ms / 1000
    if len(terms) == 1 and terms[0][1] is None and seconds.denominator == 1:
        return DurationError(field, text, reason, f"write '{seconds}s' instead")  # not 1m30s
    if ms.denominator != 1:
        nearest = format_exact(round(ms))
        return DurationError(field, text, reason, f"round it to whole milliseconds: {nearest!r}")
    return DurationError(field, text, reason, f"write {format_exact(int(ms))!r} instead")


def _lenient_terms(text: str) -> list[tuple[str, str | None]] | None:
    """``text`` cut into (number, unit) terms as the old grammar and a few slips read it."""
    terms: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(text):
        term = _LENIENT_TERM.match(text, pos)
        if term is None or term.end() == pos:
            return None
        terms.append((term.group(1), term.group(2)))
        pos = term.end()
    if any(unit is None for _, unit in terms) and len(terms) > 1:
        return None  # "1h 30": which unit was meant for 30 is a guess
    return terms or None
