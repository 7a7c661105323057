"""Alerting rules, as Prometheus defines them: what a rule is, not how it is evaluated.

A :class:`Rule` is a name (the ``alertname`` label), a severity, summary and description
templates, static labels, and a condition: a function of the live view and the time that
returns the active :class:`Instance` s, each a label set plus values for the templates.
:class:`collector.alerts.evaluator.Evaluator` runs the rules and keeps each alert's life
cycle (pending, firing, resolved), and bounds what one node can make it hold: at most
``Rule.max_per_node`` alerts of a rule per node (default :data:`MAX_PER_NODE`, 64).

Templates are :meth:`str.format_map` strings over the labels and the instance's values, e.g.
``"GPU {gpu} on {node} at {temp_c} °C"``; a missing key renders as ``<no value>``, as in Go
templates, instead of failing the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from string import Formatter
from typing import TYPE_CHECKING, Final

import msgspec

from collector.alerts.names import LABEL_NAME_RE, refuse_unknown
from shared.schema import MAX_GPUS

if TYPE_CHECKING:
    from collector.live import LiveView

__all__ = [
    "MAX_PER_NODE",
    "SEVERITIES",
    "Condition",
    "Instance",
    "Rule",
    "enabled_rules",
]

SEVERITIES: Final = ("critical", "warning", "info")
MAX_PER_NODE: Final = MAX_GPUS
"""Alerts of one rule one node may have at a time (the default ``Rule.max_per_node``): 64,
the most GPUs a node may report (``shared.schema.MAX_GPUS``), so a rule with an alert per GPU
never loses one on a node the wire schema accepts, while a rule with an alert per thing a node
names freely (``JobGpuIdle``: a job, up to ``MAX_JOBS`` = 256 in every sample) cannot make
more. See :mod:`collector.alerts.evaluator`."""
_RESERVED: Final = frozenset({"alertname", "severity"})


class Instance(msgspec.Struct, frozen=True, gc=False):
    """One active instance of a rule's condition: its labels and template values.

    A ``msgspec`` struct, not a frozen dataclass: a condition makes one per alert at every
    evaluation (12,500 when every node is stale), and a frozen dataclass cost ~0.7 µs more
    to build (its ``__init__`` sets each field through ``object.__setattr__``). ``gc=False``:
    it holds only mappings of strings."""

    labels: Mapping[str, str]
    values: Mapping[str, str] = msgspec.field(default_factory=dict)


Condition = Callable[["LiveView", float], Iterable[Instance]]
"""``condition(view, now)``: the instances for which the rule's condition holds now."""


@dataclass(frozen=True, slots=True)
class Rule:
    """An alerting rule: adding one is one of these and a condition function."""

    name: str
    severity: str
    summary: str
    description: str
    condition: Condition
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    """Static labels added to every alert of the rule (e.g. ``team``)."""
    max_per_node: int = MAX_PER_NODE
    """Alerts of the rule one node (label ``node``) may have at a time; see
    :mod:`collector.alerts.evaluator`."""
    own_labels: Mapping[str, str] = field(init=False, repr=False, compare=False)
    """What every alert of the rule has on top of its instance's labels: :attr:`labels`,
    ``alertname`` and ``severity`` (:meth:`alert_labels`)."""
    _summary: str | None = field(init=False, repr=False, compare=False)
    _description: str | None = field(init=False, repr=False, compare=False)
    """The templates as ``%`` formats (:func:`_percent_format`), or ``None``."""

    def __post_init__(self) -> None:
        if not LABEL_NAME_RE.match(self.name):
            raise ValueError(f"rule name {self.name!r} is not a valid alertname")
        if self.max_per_node < 1:
            raise ValueError(f"rule {self.name}: max_per_node must be >= 1")
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.name}: severity must be one of {SEVERITIES}")
        if self.for_s < 0 or self.keep_firing_for_s < 0:
            raise ValueError(f"rule {self.name}: for_s and keep_firing_for_s must be >= 0")
        for key in self.labels:
            if not LABEL_NAME_RE.match(key) or key in _RESERVED:
                raise ValueError(f"rule {self.name}: label name {key!r} is not allowed")
        own = {**self.labels, "alertname": self.name, "severity": self.severity}
        object.__setattr__(self, "own_labels", own)
        object.__setattr__(self, "_summary", _percent_format(self.summary))
        object.__setattr__(self, "_description", _percent_format(self.description))

    def alert_labels(self, instance: Instance) -> dict[str, str]:
        """The full label set of an alert: instance labels, static labels, name, severity
        (the later ones win, in that order; the instance's come first)."""
        return {**instance.labels, **self.own_labels}

    def annotations(self, labels: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
        """``summary`` and ``description`` rendered for one alert."""
        ctx = {**labels, **values}
        try:  # a plain dict renders faster (a mass event renders thousands)
            summary, description = self._summary, self._description
            return {
                "summary": self.summary.format_map(ctx) if summary is None else summary % ctx,
                "description": (
                    self.description.format_map(ctx) if description is None else description % ctx
                ),
            }
        except KeyError:  # a template names a key the alert lacks: "<no value>" for it
            missing = _Context(ctx)
            return {
                "summary": self.summary.format_map(missing),
                "description": self.description.format_map(missing),
            }


def enabled_rules(rules: list[Rule], disabled: Iterable[str], *, field: str) -> list[Rule]:
    """``rules`` less those named in ``disabled`` (the setting ``field``, e.g.
    ``alerts.disabled``); a name that is none of ``rules`` is refused in the words of
    :func:`collector.alerts.names.refuse_unknown`, which every family's settings model
    also calls when it loads, against the same names (:mod:`collector.alerts.names`)."""
    refuse_unknown(disabled, (r.name for r in rules), field=field)
    off = set(disabled)
    return [r for r in rules if r.name not in off]


class _Context(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "<no value>"


def _percent_format(template: str) -> str | None:
    """``template`` as a ``%`` format that renders a mapping as :meth:`str.format_map` does,
    when each of its fields is a plain name (``{node}``: no conversion, format spec, index
    or attribute); else ``None``.

    ``format_map`` parses the template at each call, character by character: a 200-character
    description cost ~0.5 µs to render, half of it that parsing, and a mass event renders
    two per alert (12,500 nodes: ~6 ms). ``"%(node)s" % ctx`` gives what ``"{node}"``
    does (``str(value)``, which is ``format(value, "")`` for strings and numbers) and raises
    the same :class:`KeyError` for a missing name; ``%`` in the text is doubled. The fields
    are found by the parser ``str.format`` itself uses (:meth:`string.Formatter.parse`), so
    ``{{`` and ``}}`` come out single, as ``format_map`` writes them."""
    out: list[str] = []
    try:
        parsed = list(Formatter().parse(template))
    except ValueError:  # format_map raises it at each render: leave it to format_map
        return None
    for literal, name, spec, conversion in parsed:
        out.append(literal.replace("%", "%%"))
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion is not None:
            return None
        out.append(f"%({name})s")
    return "".join(out)
