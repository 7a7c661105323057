"""Routes: which receivers hear of an alert, and how its notifications are grouped.

A :class:`Matcher` is Alertmanager's label matcher (``name=value``, ``!=``, ``=~``, ``!~``);
regular expressions are anchored at both ends, as Alertmanager anchors them
(``^(?:regex)$``), and a missing label matches as the empty string.

Routes are tried in order: an alert goes to the first route whose matchers all match, and
on to the next ones only while the matched route has ``continue``. With no ``[[routes]]``
the default route applies: every receiver, ``group_by = ["alertname"]``. Each route's key
is Alertmanager's: ``{}`` for the root, ``{}/{matchers}`` for a route below it, which is
what ``groupKey`` starts with (``dispatch/route.go``): the matchers sorted by name, value and
operator, each written as ``pkg/labels/matcher.go`` writes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from collector.alerts.names import LABEL_NAME, LABEL_NAME_RE

__all__ = [
    "ALL_LABELS",
    "Matcher",
    "Route",
    "default_route",
    "make_matcher",
    "parse_matcher",
    "routes_for",
]

ALL_LABELS: Final = "..."
"""``group_by = ["..."]``: group by every label, i.e. one alert per group."""

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER: Final = re.compile(rf"({LABEL_NAME})\s*(=~|!~|!=|=)(.*)\Z", re.DOTALL)
_OPS: Final[tuple[Op, ...]] = ("=", "!=", "=~", "!~")
"""In the order of Alertmanager's ``MatchType`` values (the last sort key of a route's matchers)."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher; :meth:`matches` a label set."""

    name: str
    op: Op
    value: str
    _regex: Any = None
    """The compiled RE2 pattern of ``=~`` and ``!~``."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy the matcher (a missing label is the empty string)."""
        got = labels.get(self.name, "")
        if self._regex is not None:
            hit = self._regex.fullmatch(got) is not None
            return hit if self.op == "=~" else not hit
        return (got == self.value) if self.op == "=" else (got != self.value)

    def __str__(self) -> str:
        """Alertmanager's ``Matcher.String()`` for a name without reserved characters (which
        :data:`~collector.alerts.names.LABEL_NAME_RE` guarantees): ``name``, the operator,
        the value in double quotes with only ``\\``, newline and ``"`` escaped
        (OpenMetrics' escaping, not Go's ``strconv.Quote``)."""
        value = self.value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        return f'{self.name}{self.op}"{value}"'

    @property
    def sort_key(self) -> tuple[str, str, int]:
        """Alertmanager's order of a route's matchers (``Matchers.Less``)."""
        return (self.name, self.value, _OPS.index(self.op))


def parse_matcher(text: str) -> Matcher:
    """``"node=~x1000.*"`` -> a :class:`Matcher`; :class:`ValueError` says what is wrong."""
    m = _MATCHER.match(text.strip())
    if m is None:
        raise ValueError(
            f"{text!r} is not a matcher: use name=value, name!=value, name=~regex or name!~regex"
        )
    name, op, value = m.group(1), m.group(2), m.group(3).strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return make_matcher(name, op, value, text=text)


def make_matcher(name: str, op: str, value: str, *, text: str | None = None) -> Matcher:
    """A matcher from its parts (``op``: ``=``, ``!=``, ``=~``, ``!~``); :class:`ValueError`
    says what is wrong (about ``text``, the matcher as written, when given)."""
    shown = text if text is not None else f"{name}{op}{value}"
    if op not in _OPS or not LABEL_NAME_RE.match(name):
        raise ValueError(f"{shown!r} is not a matcher: use name=value, name!=value, ...")
    regex = None
    if op in ("=~", "!~"):
        regex = _compile_re2(value, shown)
    return Matcher(name, op, value, regex)


def _compile_re2(value: str, shown: str) -> Any:
    """``value`` compiled by RE2, as Alertmanager (Go's regexp) compiles it: linear time in
    the label's length. Python's backtracking ``re`` took minutes on ``(x.*)*n0`` against a
    36-character node name a node chose, hanging ``collector alerts`` and the evaluation."""
    import re2  # type: ignore[import-untyped]  # noqa: PLC0415

    options = re2.Options()
    options.log_errors = False  # the error is our one line, not RE2's log on stderr
    options.dot_nl = True  # `.` matches a newline, as the DOTALL flag did
    try:
        re2.compile(value, options)  # its error names the text as written
        return re2.compile(f"(?:{value})", options)  # fullmatch: anchored at both ends
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"{shown!r}: bad regular expression: {reason}") from None


@dataclass(frozen=True, slots=True)
class Route:
    """A route: its matchers, receivers, grouping and timing (seconds)."""

    matchers: tuple[Matcher, ...]
    receivers: tuple[str, ...]
    group_by: tuple[str, ...] = ("alertname",)
    group_wait_s: float = 5.0
    group_interval_s: float = 60.0
    repeat_interval_s: float = 4 * 3600.0
    continue_: bool = False
    key: str = field(init=False, repr=False, compare=False)
    """Alertmanager's route key: ``{}`` (root) or ``{}/{matchers}``, sorted (written once:
    every alert's group key starts with it, at every evaluation)."""

    def __post_init__(self) -> None:
        ordered = sorted(self.matchers, key=lambda m: m.sort_key)
        key = "{}/{" + ",".join(str(m) for m in ordered) + "}" if ordered else "{}"
        object.__setattr__(self, "key", key)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every matcher matches ``labels``."""
        # A loop, not all() of a generator (~0.2 µs more): once per new alert and route, so
        # ~3 ms of a mass event's first grouping (bench/bench_alerts.py).
        for m in self.matchers:  # noqa: SIM110
            if not m.matches(labels):
                return False
        return True

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """The labels the alert is grouped by on this route."""
        if ALL_LABELS in self.group_by:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}


def default_route(receivers: Sequence[str]) -> Route:
    """The route used when none is configured: every receiver, grouped by alertname."""
    return Route((), tuple(receivers))


def routes_for(routes: Sequence[Route], labels: Mapping[str, str]) -> list[Route]:
    """The routes an alert takes: the first match, and the next ones while ``continue``."""
    out = []
    for route in routes:
        if route.matches(labels):
            out.append(route)
            if not route.continue_:
                break
    return out
