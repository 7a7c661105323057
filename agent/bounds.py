"""Keeping the agent's readings inside the wire schema's ranges (shared/schema.md).

The collector rejects a whole sample when one field is out of range, and building a struct
in Python checks nothing (only decoding does), so every reading passes through a
:class:`Bounds` on its way into a struct. A broken sensor then costs that one reading, not
the node's sample:

- an optional number out of range, NaN or infinite becomes ``None`` ("unknown");
- a required number is clamped into its range (a percent of 100.0000001, a counter past
  2**53 - 1, a memory size past 2**48); NaN becomes the lower bound;
- a list longer than the schema allows keeps its first entries;
- a descriptive string (model name, version, fstype, hostname) is cut to its limit; an
  identifier (path, interface name, serial, PCI bus id, MAC, UUID) that does not fit is
  dropped instead, since a cut one would name something else.

Each correction is logged as one ``reading_out_of_range`` or ``list_truncated`` event per
field, then at most once every ``log_every_s`` with the count suppressed meanwhile, so a
sensor stuck on garbage cannot flood the journal. The checks themselves are one comparison
on the hot path; only a correction costs more.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

from structlog.typing import FilteringBoundLogger

from shared.clock import Clock
from shared.logging import get_logger

__all__ = ["Bounds"]

_F = TypeVar("_F", int, float)
_T = TypeVar("_T")

_LOG_EVERY_S: Final = 600.0
_SHOWN_CHARS: Final = 80
"""A value is logged as its repr, cut to this: a 100,000-character mount path is not."""


class Bounds:
    """Range checks with a rate-limited log of what they corrected.

    ``field`` arguments name the wire field as shared/schema.md does (``gpus[].power_w``);
    they are also the key of the log's rate limit. One instance per component (the GPU
    backend gives each GPU its own, with ``gpu=<index>`` bound to the logger). Safe to share
    between threads: the worst a race can do is log a correction twice.
    """

    __slots__ = ("_clock", "_log", "_log_every_s", "_next_log", "_suppressed")

    def __init__(
        self,
        clock: Clock,
        log: FilteringBoundLogger | None = None,
        *,
        log_every_s: float = _LOG_EVERY_S,
    ) -> None:
        self._clock = clock
        self._log = log if log is not None else get_logger("agent.bounds")
        self._log_every_s = log_every_s
        self._next_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def optional(
        self, value: float | None, field: str, high: float, low: float = 0.0
    ) -> float | None:
        """``value`` if within ``[low, high]`` (a float field), else ``None``, logged."""
        if value is None or low <= value <= high:  # NaN fails both comparisons
            return value
        self._report("reading_out_of_range", field, action="dropped", value=value)
        return None

    def optional_int(self, value: Any, field: str, high: int, low: int = 0) -> int | None:
        """``value`` if an ``int`` within ``[low, high]`` (an integer field), else ``None``.

        A float where the schema wants an integer would fail the collector's decode too.
        """
        if value is None:
            return None
        if type(value) is int and low <= value <= high:
            return value
        self._report("reading_out_of_range", field, action="dropped", value=value)
        return None

    def clamped(self, value: _F, field: str, high: _F, low: _F) -> _F:
        """``value`` moved into ``[low, high]`` (a required field), logged if it moved."""
        if low <= value <= high:
            return value
        self._report("reading_out_of_range", field, action="clamped", value=value)
        return high if value > high else low  # NaN: low

    def first(self, items: list[_T], field: str, limit: int) -> list[_T]:
        """The first ``limit`` of ``items``; how many went is logged."""
        if len(items) <= limit:
            return items
        self.truncated(field, kept=limit, dropped=len(items) - limit)
        return items[:limit]

    def truncated(self, field: str, *, kept: int, dropped: int) -> None:
        """Log that a list kept ``kept`` entries and left ``dropped`` out."""
        self._report("list_truncated", field, kept=kept, dropped=dropped)

    def text(self, value: str, field: str, max_len: int, *, empty: str | None = None) -> str:
        """A descriptive string cut to ``max_len``; ``empty`` stands in for ``""`` if given."""
        if len(value) > max_len:
            self._report("reading_out_of_range", field, action="cut", value=value, limit=max_len)
            return value[:max_len]
        if not value and empty is not None:
            return empty
        return value

    def name(self, value: str | None, field: str, max_len: int) -> str | None:
        """An identifier of 1 to ``max_len`` characters, or ``None`` (logged)."""
        if value is None or 0 < len(value) <= max_len:
            return value
        self._report("reading_out_of_range", field, action="dropped", value=value, limit=max_len)
        return None

    def matching(self, value: str | None, field: str, pattern: re.Pattern[str]) -> str | None:
        """An identifier that matches ``pattern``, or ``None`` (logged)."""
        if value is None or pattern.match(value):
            return value
        self._report("reading_out_of_range", field, action="dropped", value=value)
        return None

    def rejected(self, field: str, value: object) -> None:
        """Log that the caller dropped an entry (a disk, a process) because of ``value``."""
        self._report("reading_out_of_range", field, action="dropped", value=value)

    def _report(self, event: str, field: str, *, value: object = None, **extra: Any) -> None:
        now = self._clock.monotonic()
        due = self._next_log.get(field)
        if due is not None and now < due:
            self._suppressed[field] = self._suppressed.get(field, 0) + 1
            return
        self._next_log[field] = now + self._log_every_s
        suppressed = self._suppressed.pop(field, 0)
        if value is not None:
            extra["value"] = repr(value)[:_SHOWN_CHARS]
        self._log.warning(event, field=field, suppressed=suppressed, **extra)
