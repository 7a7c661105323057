"""The alert rules at work in the collector: evaluate on the live view, record the changes.

:class:`AlertJob` is a cycle of the evaluator (:mod:`collector.evaluate`), every
``interval_s``: one :meth:`Evaluator.evaluate` over a snapshot of the live view (never the
store), in a worker thread; the state changes come back as an :class:`AlertRecord` that the
writer commits (``alerts`` holds what is pending or firing, ``alert_history`` every change):
in one transaction, or for a mass event in parts of :data:`PART_CHANGES`, sample batches
committed between them. On start it restores the pending and firing alerts of the
previous run, so a restarted collector neither forgets nor re-announces them.

Notifications: the firing alerts and the resolutions go to the :class:`Dispatcher` (routes,
groups, the notification log); the silences in force are read back at every evaluation (one
indexed query) and, with the inhibit rules (default: ``NodeOffline`` mutes its node), mute
alerts: an alert inhibits while its condition holds, not while it is only kept firing
(:mod:`collector.alerts.silence`). Alertmanagers (``push``) get every firing alert and
resolution, unmuted. Each group
flush that sends becomes one outbox row per receiver of its route (the webhook body, fixed
once, and an idempotency key), written with the notification log entry in the same
transaction as the changes (a record in parts: as its last part, so no notification names an
alert whose state is not committed yet); after the commit they are offered to the delivery
task (``notify``), once, and the Alertmanagers get their update. A stop between parts loses
nothing: the parts committed are restored at the next start (:meth:`AlertJob.restore`), the
alerts of the parts that were not are found again by the next evaluation, and the groups
whose notification was not committed are not in the restored notification log, so they are
notified then (never twice: an outbox row exists only once committed).

A part the store refuses without being broken (a lock held past the busy timeout, a
constraint: :class:`~shared.errors.StoreError` neither fatal nor ``unavailable``; the writer
drops the rest of the record) leaves the job ahead of the store: its states hold the changes
of the parts not committed, its notification log the groups whose notification was not. It
then goes on as after a stop: the records it made since (from those states) write nothing,
and its next evaluation first takes the states and the notification log back from the store
(:meth:`AlertJob.take_back`), so it finds again what the refused parts held, writes it, and
notifies those groups, once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec
from prometheus_client import CollectorRegistry, Counter

from collector.alerts.evaluator import AlertState, Evaluator, Transition
from collector.alerts.group import Dispatcher, Flush, GroupAlert, Notified
from collector.alerts.route import Route, default_route
from collector.alerts.silence import (
    DEFAULT_INHIBIT_RULES,
    KEPT_SOURCES_KEY,
    Inhibitor,
    InhibitRule,
    Silence,
    SourceKeys,
    inhibit_rules_to_json,
    muted,
    silence_from_row,
)
from collector.alerts.webhook import group_body
from collector.cooperate import YIELD_EVERY, yield_gil
from collector.counters import value
from collector.live import LiveView
from collector.store.alerts import (
    AlertChange,
    GroupLog,
    OutboxEntry,
    OutboxNew,
    active_alerts,
    active_silences,
    alert_groups,
    write_alerts,
)
from collector.store.db import Store
from shared.clock import Clock
from shared.errors import StoreError
from shared.logging import get_logger

if TYPE_CHECKING:
    from collector.settings import ReceiverSettings

__all__ = ["PART_CHANGES", "AlertJob", "AlertJobMetrics", "AlertRecord", "RestoreRecord"]

log = get_logger("alerts")

_KEEP_HISTORY_S: Final = 30 * 86_400.0
PART_CHANGES: Final = 500
"""Alert changes one transaction writes at most. The mass event of ``bench/bench_alerts.py``
(every node stale at 12,500 nodes, 12,687 changes) into SQLite on a 2-core machine at a
load of ~7: one transaction 270-575 ms; in parts of 500, median 10-26 ms a part (1,000:
11-19 ms), sample batches committed between them."""
_LOGGED_CHANGES: Final = 20
"""Alerts that went firing or resolved, logged a line each per evaluation; the rest of a mass
event is one line (the writer logs them: 12,500 lines cost it ~0.14 s of CPU, samples waiting)."""


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_new_tuple: Final = tuple.__new__


def _json(mapping: Mapping[str, str]) -> str:
    """``mapping`` as the store keeps an alert's labels and annotations: the text of
    ``json.dumps(mapping, sort_keys=True, ensure_ascii=False)``, made by msgspec (keys
    sorted, then its one-line format, which separates items by ``", "`` and ``": "`` as
    ``json.dumps`` does): ~0.9 us a document instead of ~4 us, two per change, and a mass
    event's first evaluation makes a change per node. A string msgspec will not encode
    (a lone surrogate) is left to ``json.dumps``, which writes it as before."""
    try:
        encoded = _ENCODER.encode(mapping if type(mapping) is dict else dict(mapping))
    except UnicodeEncodeError:
        return json.dumps(dict(mapping), sort_keys=True, ensure_ascii=False)
    return msgspec.json.format(encoded, indent=0).decode()


def _log_changes(transitions: Sequence[Transition]) -> None:
    """A line per alert that went firing or resolved, up to :data:`_LOGGED_CHANGES`; then
    one line counting the rest by rule and state (the store's history has each one)."""
    notified = [t for t in transitions if t.notify]
    for t in notified[:_LOGGED_CHANGES]:
        log.info(
            "alert_" + t.state, alertname=t.rule, fingerprint=t.fingerprint, labels=dict(t.labels)
        )
    rest = notified[_LOGGED_CHANGES:]
    if rest:
        counts: dict[str, int] = {}
        for t in rest:
            key = f"{t.rule} {t.state}"
            counts[key] = counts.get(key, 0) + 1
        log.info("alert_changes_not_logged", alerts=len(rest), by_rule=counts)


def _changes(transitions: Sequence[Transition]) -> list[AlertChange]:
    """The transitions as the store records them, in the evaluation's worker thread: a mass
    event's first evaluation has one per node (12,500 at ~3 us each, two JSON documents),
    so it hands the GIL over every :data:`~collector.cooperate.YIELD_EVERY`
    (:mod:`collector.cooperate`)."""
    out = []
    for i, t in enumerate(transitions, 1):
        if not i % YIELD_EVERY:
            yield_gil()
        out.append(_change(t))
    return out


def _change(t: Transition) -> AlertChange:
    return AlertChange(
        t.fingerprint,
        t.rule,
        _json(t.labels),
        _json(t.annotations),
        t.previous,
        t.state,
        t.at,
        t.active_at,
        t.starts_at,
        t.ends_at,
    )


@dataclass(slots=True)
class AlertRecord:
    """One evaluation's changes and notifications, for the writer (see :meth:`write`)."""

    job: AlertJob
    now: float
    transitions: list[Transition]
    changes: list[AlertChange]
    """The transitions as the store records them (made in the worker thread, not the
    writer's: a mass event has thousands, two JSON documents each)."""
    outbox: list[OutboxNew]
    groups: list[GroupLog]
    forget_groups: list[str]
    flushes: list[Flush]
    firing: list[GroupAlert]
    resolved: list[GroupAlert]
    generation: int
    """The job's :attr:`AlertJob.generation` when the evaluation began: a record refused
    since then makes this one's changes stale (see the module docstring)."""
    kept_sources: frozenset[str] | None
    """The firing alerts that match an inhibit rule's source but only keep firing (they
    mute nothing), to record with the last part (meta ``KEPT_SOURCES_KEY``); ``None``: as
    last recorded."""
    name: str = "alerts"
    written: int = 0
    """Changes committed so far (a mass event's are written in parts)."""

    async def write(self, store: Store) -> bool:
        """Commit the next part of the changes; after the last, hand the notifications on
        (see the module docstring); return whether parts remain."""
        return await self.job._recorded(store, self)  # the job's other half


@dataclass(slots=True)
class RestoreRecord:
    """What taking back the alerts makes for the store (see :meth:`AlertJob.take_back`)."""

    restored: int
    orphans: list[str]
    inhibit_rules: str
    job: AlertJob
    name: str = "alerts"

    async def write(self, store: Store) -> None:
        """Forget the notification groups of alerts that no longer fire; record the inhibit
        rules this collector applies (`collector alerts` marks inhibited alerts by them)."""
        if self.orphans:
            await write_alerts(store, [], self.job.keep_history_s, forget_groups=self.orphans)
            log.info("alert_groups_pruned", groups=len(self.orphans))
        await store.write_batch([], meta=[("inhibit_rules", self.inhibit_rules)])


class AlertJobMetrics:
    """What the alert job counts, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, namespace="capwatch_collector", registry=registry)

        self.evaluations = counter("alert_evaluations", "Evaluations of the alert rules.")
        self.changes = counter(
            "alert_changes",
            "Alert state changes (pending, firing, resolved) recorded (counted as"
            " they are committed).",
        )
        self.silences_unreadable = counter(
            "silences_unreadable", "Silence rows that could not be read (skipped)."
        )

    def counter_rows(self) -> dict[str, int]:
        """``alert_evaluations``, ``alert_changes``, ``silence_unreadable``."""
        return {
            "alert_evaluations": value(self.evaluations),
            "alert_changes": value(self.changes),
            "silence_unreadable": value(self.silences_unreadable),
        }


class AlertJob:
    """Evaluates the rules every ``interval_s`` and records the changes; see the module."""

    def __init__(
        self,
        evaluator: Evaluator,
        clock: Clock,
        *,
        interval_s: float = 5.0,
        keep_history_s: float = _KEEP_HISTORY_S,
        metrics: AlertJobMetrics | None = None,
        receivers: Sequence[ReceiverSettings] = (),
        external_url: str = "",
        notify: Callable[[list[OutboxEntry]], None] | None = None,
        routes: Sequence[Route] | None = None,
        inhibit_rules: Sequence[InhibitRule] = DEFAULT_INHIBIT_RULES,
        push: Callable[[list[GroupAlert], list[GroupAlert], float], None] | None = None,
        part_changes: int = PART_CHANGES,
    ) -> None:
        self.name = "alerts"
        self.part_changes = part_changes
        """Changes one part of a record writes at most (:data:`PART_CHANGES`)."""
        self._receivers = {r.name: r for r in receivers}
        self._routes = (
            list(routes) if routes is not None else [default_route(list(self._receivers))]
        )
        self._dispatcher = Dispatcher(self._routes)
        self._external_url = external_url.rstrip("/")
        self._notify = notify
        self._inhibit_rules = tuple(inhibit_rules)
        self._sources = SourceKeys(self._inhibit_rules)
        """What each firing alert is to the inhibit rules, kept across evaluations."""
        self._push = push
        self.interval_s = interval_s
        self._evaluator = evaluator
        evaluator.cleared_at_commit = True  # counted in _recorded, as they are committed
        self._clock = clock
        self.keep_history_s = keep_history_s
        """How long resolved alerts stay in the history."""
        self.metrics = AlertJobMetrics(CollectorRegistry()) if metrics is None else metrics
        self.evaluated_at = float("-inf")
        """Clock time of the last evaluation whose changes are recorded (tests wait on it)."""
        self.generation = 0
        """Records refused part-way so far: a record made before the last one was refused
        writes nothing (see the module docstring)."""
        self._ahead = False
        """A record was refused: the states and notification log are ahead of the store
        until the next evaluation takes them back from it."""
        self._kept_recorded: frozenset[str] | None = None
        """The kept sources the store holds (:attr:`AlertRecord.kept_sources`; ``None``:
        not recorded by this job yet)."""

    async def restore(self, store: Store, *, hold_s: float) -> int:
        """Take back the pending and firing alerts of the previous run; return how many."""
        record = await self.take_back(store, hold_s=hold_s)
        await record.write(store)
        return record.restored

    async def take_back(self, store: Store, *, hold_s: float) -> RestoreRecord:
        """The reading half of :meth:`restore`: the alerts and notification log as the store
        holds them, taken into this job. What that makes for the store (notification groups
        of alerts that no longer fire, the inhibit rules in force) is the returned record's,
        for whoever owns the writes (a new leader puts it on the writer's queue)."""
        states = []
        for row in await active_alerts(store):
            labels = json.loads(row["labels"])
            states.append(
                AlertState(
                    rule=row["rule"],
                    labels=labels,
                    fingerprint=row["fingerprint"],
                    state=row["state"],
                    active_at=row["active_at"],
                    fired_at=row["starts_at"],
                    annotations=json.loads(row["annotations"]),
                )
            )
        self._evaluator.restore(states, self._clock.time(), hold_s=hold_s)
        log_entries = {
            g.group_key: Notified(
                frozenset(json.loads(g.firing)), frozenset(json.loads(g.resolved)), g.notified_at
            )
            for g in await alert_groups(store)
        }
        self._dispatcher = Dispatcher(self._routes, log_entries)
        orphans = self._dispatcher.prune_log(s.labels for s in states if s.state == "firing")
        if states:
            log.info("alerts_restored", alerts=len(states))
        return RestoreRecord(
            len(states), list(orphans), inhibit_rules_to_json(self._inhibit_rules), self
        )

    async def __call__(self, store: Store, view: LiveView) -> AlertRecord:
        """One evaluation of ``view`` (a snapshot); ``store`` is read for the silences (and,
        after a refused record, for the states and notification log to go on from)."""
        forget: list[str] = []
        if self._ahead:
            back = await self.take_back(store, hold_s=0.0)
            forget, self._ahead = back.orphans, False
            log.warning("alerts_taken_back", alerts=back.restored, generation=self.generation)
        # After taking back: a record refused from here on (during the evaluation) makes
        # this one stale too, and the next evaluation takes back again.
        generation = self.generation
        now = self._clock.time()
        silences = await self._silences(store, now)
        record = await asyncio.to_thread(self._evaluate, view, now, silences, generation)
        # A group this record logs again stays (write_alerts deletes after it upserts).
        kept = {g.group_key for g in record.groups}.union(record.forget_groups)
        record.forget_groups += [key for key in forget if key not in kept]
        self.metrics.evaluations.inc()
        return record

    def _evaluate(
        self, view: LiveView, now: float, silences: list[Silence], generation: int
    ) -> AlertRecord:
        """The pure part, in a worker thread: rules, life cycle, groups, webhook bodies."""
        transitions = self._evaluator.evaluate(view, now)
        states = [s for s in self._evaluator.states() if s.state == "firing"]
        # Every firing alert at every evaluation (12,500 while a mass event holds): built by
        # tuple.__new__, not the named tuple's own __new__, a Python function that calls it
        # (as evaluator._transition).
        firing = [
            _new_tuple(
                GroupAlert, (s.fingerprint, s.labels, s.annotations, s.fired_at or now, None)
            )
            for s in states
        ]
        resolved = [
            GroupAlert(t.fingerprint, t.labels, t.annotations, t.starts_at or t.at, t.at)
            for t in transitions
            if t.state == "resolved"
        ]
        self._dispatcher.observe(firing, resolved, now)
        # A source mutes while its condition holds, not while it only keeps firing.
        sources = self._sources
        inhibitor = Inhibitor(
            self._inhibit_rules,
            ((s.fingerprint, s.labels) for s in states if s.holds(now)),
            sources=sources,
        )
        kept = frozenset(
            s.fingerprint
            for s in states
            if not s.holds(now) and sources.of(s.fingerprint, s.labels) is not None
        )
        sources.keep(len(states), (s.fingerprint for s in states))
        flushes, logged, gone = self._dispatcher.flush(
            now, lambda a: muted(a.labels, silences, inhibitor, now, a.fingerprint)
        )
        return AlertRecord(
            self,
            now,
            transitions,
            _changes(transitions),
            [n for f in flushes for n in self._notifications(f, now)],
            [
                GroupLog(key, json.dumps(sorted(n.firing)), json.dumps(sorted(n.resolved)), n.at)
                for key, n in logged.items()
            ],
            list(gone),
            flushes,
            firing,
            resolved,
            generation,
            None if kept == self._kept_recorded else kept,
        )

    async def _recorded(self, store: Store, r: AlertRecord) -> bool:
        """The writer's half: the next part of the changes in one transaction; the
        notifications with the last, then what waited for them. Return whether parts
        remain."""
        if r.generation != self.generation:
            log.warning("alert_record_dropped", changes=len(r.changes), generation=r.generation)
            return False  # made from states a refused record left ahead of the store
        end = min(r.written + self.part_changes, len(r.changes))
        last = end == len(r.changes)
        changes = r.changes[r.written : end]
        kept = r.kept_sources if last else None
        if changes or (last and (r.flushes or r.groups or r.forget_groups)) or kept is not None:
            try:
                entries = await write_alerts(
                    store,
                    changes,
                    self.keep_history_s,
                    r.outbox if last else (),
                    r.now,
                    groups=r.groups if last else (),
                    forget_groups=r.forget_groups if last else (),
                    meta=() if kept is None else [(KEPT_SOURCES_KEY, json.dumps(sorted(kept)))],
                )
            except StoreError as exc:
                if not exc.unavailable:  # that one the writer writes again, once reconnected
                    self.generation += 1  # the rest of this record is dropped: go on as after
                    self._ahead = True  # a stop (see the module docstring)
                raise
            if entries and self._notify is not None:
                self._notify(entries)  # committed: now the delivery may send them
            if kept is not None:
                self._kept_recorded = kept
        r.written = end  # committed (a part that failed is written again whole)
        self.metrics.changes.inc(len(changes))  # counted as committed: a refused part's, never
        self._count_cleared(changes)
        if not last:
            return True
        if self._push is not None:
            self._push(r.firing, r.resolved, r.now)
        self.evaluated_at = r.now
        _log_changes(r.transitions)
        for f in r.flushes:
            if f.route.receivers:
                log.info("alert_group_notified", group_key=f.group_key, alerts=len(f.alerts))
        return False

    def _count_cleared(self, changes: Sequence[AlertChange]) -> None:
        """Count the pending alerts among committed ``changes`` that went away (the
        evaluator's ``pending_cleared``, per rule): a refused part's are found again after
        the take-back and counted when those commit."""
        cleared: dict[str, int] = {}
        for c in changes:
            if c.state == "inactive":
                cleared[c.rule] = cleared.get(c.rule, 0) + 1
        for rule, n in cleared.items():
            self._evaluator.metrics.pending_cleared.labels(rule).inc(n)

    async def _silences(self, store: Store, now: float) -> list[Silence]:
        """The silences in force (a bad row, written by hand, is skipped and counted)."""
        out = []
        for row in await active_silences(store, now):
            try:
                out.append(silence_from_row(tuple(row)))
            except (ValueError, TypeError) as exc:
                self.metrics.silences_unreadable.inc()
                log.warning("silence_unreadable", id=row[0], error=str(exc))
        return out

    def _notifications(self, f: Flush, now: float) -> list[OutboxNew]:
        """One outbox row per receiver of the flushed group's route."""
        out = []
        status = "firing" if any(a.ends_at is None for a in f.alerts) else "resolved"
        first = f.alerts[0]
        for name in f.route.receivers:
            r = self._receivers.get(name)
            if r is None:
                continue
            body = group_body(
                receiver=r.name,
                route_key=f.route.key,
                group_labels=f.group_labels,
                alerts=f.alerts,
                external_url=self._external_url,
                max_alerts=r.max_alerts,
            )
            rule = first.labels.get("alertname", "")
            out.append(
                OutboxNew(
                    str(uuid.uuid4()),
                    r.name,
                    first.fingerprint,
                    rule,
                    status,
                    body,
                    now,
                    now + r.max_age_s,
                )
            )
        return out
