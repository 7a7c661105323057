"""Units: the conversions between the units capwatch reports in (W and kW, J and kWh), and
the formatting of human units for tables (durations, bytes, watts).

Measures are held in SI base units (``power_w``, ``energy_j``); a figure given in kilowatts
(the ``power_kw`` quota) or kilowatt-hours (the usage ledger, billed at a price per kWh) is
converted here.
Durations given as text are parsed by :func:`shared.durations.parse_duration`, the one grammar.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "J_PER_KWH",
    "W_PER_KW",
    "format_bytes",
    "format_duration",
    "format_pct",
    "format_watts",
]

W_PER_KW: Final = 1_000.0
J_PER_KWH: Final = 3_600_000.0
"""1 kWh = 1,000 W x 3,600 s."""


def format_duration(seconds: float | None) -> str:
    """``754.2`` -> ``"12m34s"``; ``None`` -> ``"-"``. For reading, rounded to the second;
    :func:`shared.durations.format_exact` writes a duration back in the grammar."""
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
    w += 0.0  # -0.0 (the schema's ge=0 passes it; PostgreSQL keeps it, SQLite not) shows as 0
    if abs(w) >= 1e6:
        return f"{w / 1e6:.2f} MW"
    if abs(w) >= 1e3:
        return f"{w / 1e3:.1f} kW"
    return f"{w:.0f} W"


def format_pct(pct: float) -> str:
    """``47.04`` -> ``"47.0%"``; -0.0 (as :func:`format_watts`) -> ``"0.0%"``."""
    return f"{pct + 0.0:.1f}%"
