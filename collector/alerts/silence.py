"""Silences and inhibition: which alerts notify nobody.

A :class:`Silence` mutes every alert whose labels match all its matchers between
``starts_at`` and ``ends_at`` (``collector silence add|list|expire``; stored by
:mod:`collector.store.silences`). Inhibition, fixed: a firing ``NodeOffline`` alert mutes
every other alert of the same ``node`` (a dead node's GPUs say nothing new).

Muted alerts still show in ``collector alerts`` (``silenced``), but are left out of
notifications; when the silence ends they count as new and are notified.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from collector.alerts.route import Matcher, parse_matcher

__all__ = ["INHIBITING_RULE", "Silence", "inhibiting_nodes", "muted", "silence_from_row"]

INHIBITING_RULE: Final = "NodeOffline"


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


def inhibiting_nodes(firing: Iterable[Mapping[str, str]]) -> frozenset[str]:
    """Nodes with a firing ``NodeOffline`` alert (their other alerts are inhibited)."""
    return frozenset(
        labels["node"]
        for labels in firing
        if labels.get("alertname") == INHIBITING_RULE and "node" in labels
    )


def muted(
    labels: Mapping[str, str], silences: Sequence[Silence], offline: frozenset[str], now: float
) -> bool:
    """Whether an alert notifies nobody: silenced, or inhibited by its node being offline."""
    if labels.get("alertname") != INHIBITING_RULE and labels.get("node") in offline:
        return True
    return any(s.mutes(labels, now) for s in silences)
