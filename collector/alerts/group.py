"""Grouping: when a route's group of alerts is notified, as Alertmanager's dispatcher does.

Each firing alert joins one group per route it takes (:func:`~collector.alerts.route.routes_for`),
keyed by Alertmanager's ``groupKey`` (route key, ``:``, the ``group_by`` labels). A group
is flushed ``group_wait`` after it was created, then every ``group_interval``; at each flush
the notification log (:class:`Notified`: what was last sent for the group) decides, as
Alertmanager's ``DedupStage`` does, whether to send:

* never notified: send if anything (unmuted) fires;
* a firing alert not in the last notification, or one that was in it now resolved: send;
* everything the last notification said fired has resolved: send (the resolution);
* unchanged and still firing: send again once ``repeat_interval`` has passed.

So a change is never notified twice. A message lists what changed first (new firing alerts,
new resolutions), then the rest of the group, each oldest first; the outbox row is filed
under its first alert. Muted alerts (silenced, inhibited) are left out as if
they did not fire; once unmuted they are new. Resolved alerts leave the group after the
flush that saw them; a group with no alert left is dropped with its log entry.

The log survives restarts: :meth:`Dispatcher.flush` returns what to store (the writer
stores it with the outbox rows), and a new dispatcher starts from the stored entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final, NamedTuple

from collector.alerts.route import Route, routes_for
from collector.alerts.webhook import BodyAlert, group_key
from collector.cooperate import YIELD_EVERY, yield_gil

__all__ = ["Dispatcher", "Flush", "GroupAlert", "Notified", "log_key", "needs_update"]

_SHARED_MAX: Final = 1 << 16


GroupAlert = BodyAlert
"""An alert as a group holds it (``ends_at`` None: firing)."""


class Notified(NamedTuple):
    """The notification log entry of a group: fingerprints last sent firing / resolved."""

    firing: frozenset[str]
    resolved: frozenset[str]
    at: float


class Flush(NamedTuple):
    """One notification to send: a group's alerts, to each of the route's receivers."""

    group_key: str
    route: Route
    group_labels: dict[str, str]
    alerts: list[GroupAlert]


@dataclass(slots=True)
class _Group:
    key: str
    route: Route
    labels: dict[str, str]
    next_flush: float
    notified: Notified | None
    alerts: dict[str, GroupAlert] = field(default_factory=dict)


class _Placement(NamedTuple):
    """Where an alert goes on one route: the group's labels, ``groupKey`` and log key."""

    route: Route
    labels: dict[str, str]
    group_key: str
    key: str


def needs_update(
    last: Notified | None,
    firing: frozenset[str],
    resolved: frozenset[str],
    repeat_s: float,
    now: float,
) -> bool:
    """Alertmanager's dedup rule (module docstring): whether a flush sends."""
    if last is None:
        return bool(firing)
    if not firing <= last.firing:
        return True
    if last.firing and not firing:
        return True
    if not (resolved & last.firing) <= last.resolved:
        return True
    return bool(firing) and now - last.at >= repeat_s


def log_key(gkey: str, route: Route) -> str:
    """A group's key in the notification log: its ``groupKey`` and the route's receivers.

    Two routes with the same matchers (say, a catch-all with ``continue`` before another)
    have the same ``groupKey``; Alertmanager keeps them apart by route and its log by
    receiver, so must we, or the second route would never notify."""
    return f"{gkey} -> {','.join(route.receivers)}"


class Dispatcher:
    """The groups of the alerts in force; see the module docstring."""

    def __init__(self, routes: Sequence[Route], log: Mapping[str, Notified] | None = None) -> None:
        self._routes = list(routes)
        self._log = dict(log or {})
        self._groups: dict[str, _Group] = {}
        self._placed: dict[str, list[_Placement]] = {}
        """Each firing alert's groups by fingerprint, until it resolves: the routes' matchers
        (RE2 through its Python binding: microseconds each) and its group keys are worked
        out once per alert, not at every evaluation."""
        self._shared: dict[tuple[int, tuple[tuple[str, str], ...]], _Placement] = {}
        """One placement per route and group labels, whatever the number of its alerts."""

    def prune_log(self, firing: Iterable[Mapping[str, str]]) -> list[str]:
        """Drop the log entries no group of ``firing`` (the alerts restored at start) can
        reach again: groups whose alerts all ended while no collector ran, and groups of
        routes no longer configured. Return their keys (to delete from the store)."""
        keep = {
            log_key(group_key(route.key, route.group_labels(labels)), route)
            for labels in firing
            for route in routes_for(self._routes, labels)
        }
        dropped = [key for key in self._log if key not in keep]
        for key in dropped:
            del self._log[key]
        return dropped

    def observe(
        self, firing: Iterable[GroupAlert], resolved: Iterable[GroupAlert], now: float
    ) -> None:
        """Take this evaluation's firing alerts (all of them) and those just resolved."""
        placed, groups = self._placed, self._groups
        for i, alert in enumerate(firing, 1):
            if not i % YIELD_EVERY:  # a mass event: 12,500 (collector.cooperate)
                yield_gil()
            places = placed.get(alert.fingerprint)  # known since it fired: most of them
            if places is None:
                places = self._places(alert)
            for place in places:
                group = groups.get(place.key)
                if group is None:
                    group = groups[place.key] = _Group(
                        place.group_key,
                        place.route,
                        place.labels,
                        now + place.route.group_wait_s,
                        self._log.get(place.key),
                    )
                group.alerts[alert.fingerprint] = alert
        for alert in resolved:
            for place in self._places(alert):
                group = self._groups.get(place.key)
                if group is not None and alert.fingerprint in group.alerts:
                    group.alerts[alert.fingerprint] = alert
            self._placed.pop(alert.fingerprint, None)

    def _places(self, alert: GroupAlert) -> list[_Placement]:
        places = self._placed.get(alert.fingerprint)
        if places is None:
            places = self._placed[alert.fingerprint] = [
                self._place(route, alert.labels) for route in routes_for(self._routes, alert.labels)
            ]
        return places

    def _place(self, route: Route, labels: Mapping[str, str]) -> _Placement:
        group_labels = route.group_labels(labels)
        shared = (id(route), tuple(group_labels.items()))
        place = self._shared.get(shared)
        if place is None:
            if len(self._shared) >= _SHARED_MAX:  # label churn: start again
                self._shared.clear()
            gkey = group_key(route.key, group_labels)
            place = self._shared[shared] = _Placement(
                route, group_labels, gkey, log_key(gkey, route)
            )
        return place

    def flush(
        self, now: float, is_muted: Callable[[GroupAlert], bool]
    ) -> tuple[list[Flush], dict[str, Notified], list[str]]:
        """Flush the groups that are due: the notifications, the log entries to store, and
        the keys of groups that are gone (their entries to delete); both keyed by
        :func:`log_key`."""
        flushes: list[Flush] = []
        logged: dict[str, Notified] = {}
        gone: list[str] = []
        for key, group in list(self._groups.items()):
            if now < group.next_flush:
                continue
            group.next_flush = now + group.route.group_interval_s
            live, done = _split(group.alerts.values(), is_muted)
            firing = frozenset(a.fingerprint for a in live)
            resolved = frozenset(a.fingerprint for a in done)
            last = group.notified
            if needs_update(last, firing, resolved, group.route.repeat_interval_s, now):
                told = last.firing if last is not None else frozenset()
                body = _ordered(live + [a for a in done if a.fingerprint in told], last)
                if body:
                    flushes.append(Flush(group.key, group.route, group.labels, body))
                group.notified = logged[key] = Notified(firing, resolved & told, now)
            for a in done:
                del group.alerts[a.fingerprint]
            if not group.alerts:
                del self._groups[key]
                self._log.pop(key, None)
                logged.pop(key, None)
                gone.append(key)
        return flushes, logged, gone


def _split(
    alerts: Iterable[GroupAlert], is_muted: Callable[[GroupAlert], bool]
) -> tuple[list[GroupAlert], list[GroupAlert]]:
    """A group's alerts firing and not muted, and those resolved; a mass event's group
    holds every node's (12,500: a muting check each), so the GIL is handed over every
    :data:`~collector.cooperate.YIELD_EVERY` (:mod:`collector.cooperate`)."""
    live: list[GroupAlert] = []
    done: list[GroupAlert] = []
    for i, a in enumerate(alerts, 1):
        if not i % YIELD_EVERY:
            yield_gil()
        if a.ends_at is not None:
            done.append(a)
        elif not is_muted(a):
            live.append(a)
    return live, done


def _ordered(alerts: list[GroupAlert], last: Notified | None) -> list[GroupAlert]:
    """What changed first (new firing, newly resolved), then the rest; each oldest first
    (ties by fingerprint: a group holds one alert per fingerprint, so the order is total).

    Two sorts by a C key, not one by a Python key function: a mass event's first
    notification orders every alert of the fleet."""
    if last is None:  # never notified: all changed
        return sorted(alerts, key=_oldest_first)
    changed: list[GroupAlert] = []
    rest: list[GroupAlert] = []
    for a in alerts:
        told = last.firing if a.ends_at is None else last.resolved
        (rest if a.fingerprint in told else changed).append(a)
    return sorted(changed, key=_oldest_first) + sorted(rest, key=_oldest_first)


_oldest_first: Final = attrgetter("starts_at", "fingerprint")
