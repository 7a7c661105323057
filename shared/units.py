"""Parsing and formatting of human units on the command line (durations, bytes, watts)."""

from __future__ import annotations

import re
from typing import Final

from shared.errors import ConfigError

__all__ = ["format_bytes", "format_duration", "format_watts", "parse_duration"]

_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_MAX_DURATION_S: Final = 100 * 365.25 * 86400.0
"""A century: longer is a typo, and would overflow SQLite's integers as milliseconds."""


def parse_duration(text: str, *, field: str = "duration") -> float:
    """``"15m"`` -> 900.0. Units: ms, s, m, h, d, w; a bare number is seconds."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ConfigError(
            f"{field} {text!r} is not a duration: use a number with a unit, e.g. 30s, 15m, 2h, 1d",
            field=field,
        )
    seconds = float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if seconds > _MAX_DURATION_S:
        raise ConfigError(
            f"{field} {text!r} is longer than 100 years: give a shorter duration", field=field
        )
    return seconds


def format_duration(seconds: float | None) -> str:
    """``754.2`` -> ``"12m34s"``; ``None`` -> ``"-"``."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float | None) -> str:
    """Binary units: ``1536`` -> ``"1.5 KiB"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover (loop returns at TiB)


def format_watts(w: float | None) -> str:
    """``12345.0`` -> ``"12.3 kW"``; ``None`` -> ``"-"``."""
    if w is None:
        return "-"
    if abs(w) >= 1e6:
        return f"{w / 1e6:.2f} MW"
    if abs(w) >= 1e3:
        return f"{w / 1e3:.1f} kW"
    return f"{w:.0f} W"
