"""Silences and inhibition: which alerts notify nobody.

A :class:`Silence` mutes every alert whose labels match all its matchers between
``starts_at`` and ``ends_at`` (``collector silence add|list|expire``; stored by
:mod:`collector.store.silences`).

Inhibition, as Alertmanager's ``inhibit_rules``: an :class:`InhibitRule` mutes every alert
matching its ``target`` matchers while a firing alert matching its ``source`` matchers has
the same values of the ``equal`` labels (a label missing on both counts as equal). An alert
never inhibits itself. Sources inhibit even when they are silenced themselves, as in
Alertmanager. The default (``[[inhibit_rules]]`` unset) is one rule: a firing
``NodeOffline`` mutes every other alert of the same ``node`` (a dead node's GPUs say
nothing new).

A source inhibits while its condition holds: an alert only kept firing after its condition
went (``keep_firing_for``, :mod:`collector.alerts.evaluator`) mutes nothing; a restored one holds
through its restore's hold (:meth:`~collector.alerts.evaluator.AlertState.holds`: the live view
refilling, a node's offline status may not be heard yet). Keeping it firing
damps its own notifications; the state it stands for is over. ``NodeOffline`` keeps firing
5 min after its node is back (``alerts.offline_keep_firing_for_s``): meanwhile the node's
other alerts notify. Alertmanager cannot tell a kept alert from another (Prometheus sends
both as firing): there, an inhibit rule with such a source mutes until it resolves. The
collector records the sources only kept firing (meta :data:`KEPT_SOURCES_KEY`) beside the
alerts, for ``collector alerts`` to leave them out too.

Muted alerts still show in ``collector alerts`` (``silenced`` / ``inhibited``), but are left
out of notifications; when the silence ends they count as new and are notified.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from collector.alerts.names import BUILTIN
from collector.alerts.route import Matcher, make_matcher, parse_matcher

__all__ = [
    "DEFAULT_INHIBIT_RULES",
    "INHIBITING_RULE",
    "KEPT_SOURCES_KEY",
    "InhibitRule",
    "Inhibitor",
    "Silence",
    "SourceKeys",
    "inhibit_rules_from_json",
    "inhibit_rules_to_json",
    "muted",
    "silence_from_row",
]

INHIBITING_RULE: Final = BUILTIN.NodeOffline
KEPT_SOURCES_KEY: Final = "inhibit_sources_kept"
"""Meta row: the fingerprints (a JSON list) of the firing alerts that match an inhibit rule's
source but only keep firing, so mute nothing: ``collector alerts`` marks by it as the
collector mutes."""


@dataclass(frozen=True, slots=True)
class InhibitRule:
    """Alertmanager's inhibit rule: ``source`` alerts mute ``target`` alerts that agree on
    ``equal``."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()

    def is_source(self, labels: Mapping[str, str]) -> bool:
        """Whether an alert with ``labels``, firing, may inhibit by this rule."""
        return all(m.matches(labels) for m in self.source)

    def as_json(self) -> dict[str, list[Any]]:
        """The rule as ``[name, op, value]`` triples (how the collector records it)."""
        return {
            "source": [[m.name, m.op, m.value] for m in self.source],
            "target": [[m.name, m.op, m.value] for m in self.target],
            "equal": list(self.equal),
        }


DEFAULT_INHIBIT_RULES: Final = (
    InhibitRule(
        (parse_matcher(f"alertname={INHIBITING_RULE}"),),
        (parse_matcher(f"alertname!={INHIBITING_RULE}"),),
        ("node",),
    ),
)


def inhibit_rules_to_json(rules: Sequence[InhibitRule]) -> str:
    """The rules in force as JSON (stored in ``meta`` so ``collector alerts`` agrees)."""
    return json.dumps([r.as_json() for r in rules], ensure_ascii=False)


def inhibit_rules_from_json(text: str) -> tuple[InhibitRule, ...]:
    """Rules written by :func:`inhibit_rules_to_json`; :class:`ValueError` if unreadable."""
    try:
        return tuple(
            InhibitRule(
                tuple(make_matcher(*m) for m in r["source"]),
                tuple(make_matcher(*m) for m in r["target"]),
                tuple(str(e) for e in r["equal"]),
            )
            for r in json.loads(text)
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable inhibit rules: {exc}") from None


_SourceKeys = tuple[tuple[str, ...] | None, ...] | None
"""Per inhibit rule, an alert's ``equal`` values if it is the rule's source, else ``None``;
``None`` for an alert that is a source of no rule."""


class SourceKeys:
    """What each alert is to ``rules`` as an inhibiting source, worked out once per alert.

    Keyed by fingerprint (an alert's labels, hashed: they never change). The alert job
    keeps one across evaluations: while a mass event holds every node's alert firing, each
    evaluation asks it of all of them (12,500), and matching each rule's ``source``
    matchers cost more than the rest of the inhibitions together.
    """

    def __init__(self, rules: Sequence[InhibitRule]) -> None:
        self.rules = tuple(rules)
        self._keys: dict[str, _SourceKeys] = {}

    def of(self, fingerprint: str, labels: Mapping[str, str]) -> _SourceKeys:
        """``fingerprint``'s keys (see :data:`_SourceKeys`)."""
        try:
            return self._keys[fingerprint]
        except KeyError:
            pass
        keys = tuple(
            tuple(labels.get(name, "") for name in r.equal) if r.is_source(labels) else None
            for r in self.rules
        )
        out = self._keys[fingerprint] = None if keys.count(None) == len(keys) else keys
        return out

    def __len__(self) -> int:
        """Alerts held."""
        return len(self._keys)

    def keep(self, n: int, fingerprints: Iterable[str]) -> None:
        """Forget the alerts not among ``fingerprints`` (the ``n`` firing now), once those
        forgotten would be more than the rest and 1,024 (the cost of an evaluation now and
        then, not one per alert that ended)."""
        keys = self._keys
        if len(keys) > 2 * n + 1024:
            self._keys = {fp: keys[fp] for fp in fingerprints if fp in keys}


class Inhibitor:
    """The inhibitions in force for one set of firing alerts (built once per evaluation)."""

    def __init__(
        self,
        rules: Sequence[InhibitRule],
        firing: Iterable[tuple[str, Mapping[str, str]]],
        *,
        sources: SourceKeys | None = None,
    ) -> None:
        """``sources``: what each alert is to ``rules`` (:class:`SourceKeys` of the same
        rules), kept from an evaluation to the next; by default worked out anew."""
        if sources is None:
            sources = SourceKeys(rules)
        elif sources.rules != tuple(rules):
            raise ValueError("the source keys are of other inhibit rules")
        self._rules = list(rules)
        # Per rule: the `equal` values of its firing sources -> their fingerprints.
        self._sources: list[dict[tuple[str, ...], set[str]]] = [{} for _ in self._rules]
        of = sources.of
        for fp, labels in firing:
            keys = of(fp, labels)
            if keys is None:  # a source of no rule: most alerts
                continue
            for key, index in zip(keys, self._sources, strict=True):
                if key is not None:
                    index.setdefault(key, set()).add(fp)

    def inhibits(self, labels: Mapping[str, str], fingerprint: str = "") -> bool:
        """Whether an alert with ``labels`` (and ``fingerprint``) is inhibited."""
        for rule, index in zip(self._rules, self._sources, strict=True):
            if not index or not all(m.matches(labels) for m in rule.target):
                continue
            sources = index.get(tuple(labels.get(name, "") for name in rule.equal))
            if sources and (len(sources) > 1 or fingerprint not in sources):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence: matchers and the time it is in force."""

    id: int
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str = ""
    author: str = ""

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        """Whether the silence is in force at ``now`` and matches ``labels``."""
        return self.starts_at <= now < self.ends_at and all(
            m.matches(labels) for m in self.matchers
        )


def silence_from_row(row: Sequence[Any]) -> Silence:
    """A silence as stored: id, matchers (a JSON list of ``name=~value`` strings), starts_at,
    ends_at, comment, author."""
    id_, matchers, starts_at, ends_at, comment, author = row
    parsed = tuple(parse_matcher(m) for m in json.loads(matchers))
    return Silence(int(id_), parsed, float(starts_at), float(ends_at), str(comment), str(author))


def muted(
    labels: Mapping[str, str],
    silences: Sequence[Silence],
    inhibitor: Inhibitor | None,
    now: float,
    fingerprint: str = "",
) -> bool:
    """Whether an alert notifies nobody: silenced, or inhibited."""
    if inhibitor is not None and inhibitor.inhibits(labels, fingerprint):
        return True
    return any(s.mutes(labels, now) for s in silences)
