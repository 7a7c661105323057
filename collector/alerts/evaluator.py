"""Alerts and their life cycle, as Prometheus evaluates alerting rules.

:class:`Evaluator` runs :class:`~collector.alerts.rule.Rule` s over the live view and keeps
one :class:`AlertState` per (rule, label set), moving it through Prometheus' life cycle
(``rules/alerting.go``)::

    inactive -> pending    condition holds, held for less than ``for_s``
    pending  -> firing     held for ``for_s`` (at once when ``for_s`` is 0)
    pending  -> inactive   gone before ``for_s``: never notified
    firing   -> resolved   gone for ``keep_firing_for_s`` (at once when it is 0)

``keep_firing_for_s`` is measured, as in Prometheus, from the first evaluation at which the
condition was gone; the condition coming back inside it cancels the countdown, so a
flapping condition stays one firing alert. An alert whose ``node`` was forgotten
(:meth:`LiveView.was_forgotten <collector.live.LiveView.was_forgotten>`: ``collector
inventory forget`` decommissioned it) resolves at once: there is no node left to flap. Each
change is returned as a :class:`Transition` for the caller to persist (and, for firing and
resolved, to notify). ``startsAt`` is the time the alert started firing (Prometheus'
``FiredAt``); ``endsAt`` is the resolution time. A pending alert that goes away is counted
per rule (``capwatch_collector_alert_pending_cleared_total``; in the collector as its
change commits, :attr:`Evaluator.cleared_at_commit`): as in Prometheus, which keeps pending
alerts in memory and in its ``ALERTS`` series only, and Alertmanager, which never hears of
them, it is not history (``alert_history`` keeps what fired:
:data:`collector.store.alerts.HISTORY_STATES`).

What one node can make the evaluator hold is bounded: a rule holds at most
``Rule.max_per_node`` alerts (default :data:`~collector.alerts.rule.MAX_PER_NODE`, 64) whose
``node`` label names the same node, pending and firing together. An instance past that is
not created: it is counted per rule (``capwatch_collector_alert_instances_dropped_total``)
and logged (``alert_instances_dropped``: the nodes that lost most and how many; a line per
rule at most every minute, the first at once). The alerts already held keep their place (a
firing alert is never displaced by a new one); the count is of the alerts held while the
evaluation runs, so at the limit a new instance is created at the first evaluation after an
old one is gone. A node naming 256 new idle jobs in every sample (``JobGpuIdle``) thus holds
64 pending alerts, not 256 new ones per sample. Instances without a ``node`` label (capacity
and governance rules: racks, tenants, leases of the site's own configuration) are not
bounded here, nor those of a rule whose instances the site's configuration names per node
(``LeaseExpiredInUse``: one per ended lease that held the node; it sets its own bound).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

import msgspec
from prometheus_client import CollectorRegistry, Counter

from collector.alerts.fingerprint import fingerprints_of_items
from collector.alerts.rule import Rule
from collector.cooperate import YIELD_EVERY, yield_gil
from collector.counters import value
from shared.logging import get_logger

if TYPE_CHECKING:
    from collector.live import LiveView

__all__ = [
    "AlertState",
    "Evaluator",
    "EvaluatorMetrics",
    "State",
    "Transition",
]

log = get_logger("alerts")

State = Literal["inactive", "pending", "firing", "resolved"]


class AlertState(msgspec.Struct, gc=False):
    """One alert (a rule and a label set) while it is pending or firing.

    ``gc=False``: not tracked by the cyclic garbage collector (it holds only strings, numbers
    and dicts of strings): a mass event makes one per node at once."""

    rule: str
    labels: dict[str, str]
    fingerprint: str
    state: State
    active_at: float
    """When the condition started to hold (Prometheus' ``ActiveAt``)."""
    fired_at: float | None = None
    """When it went firing: ``startsAt`` for Alertmanager."""
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    """First evaluation at which the condition was gone while firing."""
    last_seen: float | None = None
    """Last evaluation at which the condition held."""
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    values: dict[str, str] = msgspec.field(default_factory=dict)
    hold_until: float = 0.0
    """After a restore: stay firing until then, while the live view fills up again."""

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """Identity within the evaluator: the sorted label set."""
        return tuple(sorted(self.labels.items()))

    def holds(self, now: float) -> bool:
        """Whether its condition holds at ``now`` as far as the evaluator knows: it was met
        at the last evaluation, or the alert is restored and in its hold (the live view
        refilling: not met may only be not heard yet). A firing alert that does not hold
        only keeps firing (``keep_firing_for``)."""
        return self.keep_firing_since is None or now < self.hold_until


class Transition(NamedTuple):
    """One state change of one alert, returned by :meth:`Evaluator.evaluate`.

    A named tuple, not a frozen dataclass: a mass event makes thousands in one evaluation,
    and a frozen dataclass costs three times as much to build."""

    rule: str
    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    previous: State
    state: State
    at: float
    """Evaluation time of the change."""
    active_at: float
    starts_at: float | None
    """Firing since (firing and resolved transitions)."""
    ends_at: float | None
    """Resolution time (resolved transitions)."""

    @property
    def notify(self) -> bool:
        """Whether receivers hear of it: firing and resolved do, pending and inactive do not."""
        return self.state in ("firing", "resolved")


_Key = tuple[tuple[str, str], ...]
_LOGGED_NODES: Final = 10
"""Nodes an ``alert_instances_dropped`` line names at most (those that lost most; the rest
counted in ``more_nodes``)."""
_LOG_EVERY_S: Final = 60.0
"""A rule logs ``alert_instances_dropped`` at most this often (the first drop at once)."""


class EvaluatorMetrics:
    """What the evaluator counts per rule, on ``registry`` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(
                name, doc, ["alertname"], namespace="capwatch_collector", registry=registry
            )

        self.pending_cleared = counter(
            "alert_pending_cleared",
            "Pending alerts whose condition went away before the rule's for (never fired).",
        )
        self.instances_dropped = counter(
            "alert_instances_dropped",
            "Alert instances not created: their node already had the rule's max_per_node.",
        )

    def counter_rows(self) -> dict[str, int]:
        """``alert_pending_cleared``, ``alert_instances_dropped`` (every rule's together)."""
        return {
            "alert_pending_cleared": value(self.pending_cleared),
            "alert_instances_dropped": value(self.instances_dropped),
        }


class Evaluator:
    """Runs rules over the live view and keeps each alert's life-cycle state."""

    def __init__(self, rules: Iterable[Rule], *, metrics: EvaluatorMetrics | None = None) -> None:
        self.rules: dict[str, Rule] = {}
        for rule in rules:
            if rule.name in self.rules:
                raise ValueError(f"two rules are named {rule.name!r}")
            self.rules[rule.name] = rule
        self._states: dict[str, dict[_Key, AlertState]] = {name: {} for name in self.rules}
        self._held: dict[str, dict[str, int]] = {name: {} for name in self.rules}
        """Per rule, the alerts held per node (label ``node``): what ``max_per_node`` bounds."""
        self._unlogged: dict[str, dict[str, int]] = {}
        """Per rule, instances dropped per node since its last ``alert_instances_dropped``."""
        self._log_at: dict[str, float] = {}
        """Per rule, when ``alert_instances_dropped`` may be logged again."""
        self.metrics = EvaluatorMetrics(CollectorRegistry()) if metrics is None else metrics
        self.cleared_at_commit = False
        """Whether whoever records the transitions counts the pending alerts that went away
        (``pending_cleared``) as their changes commit, not :meth:`evaluate`: the alert job
        does (:class:`collector.alerts.job.AlertJob`), since a change it fails to commit is
        found again after it takes its states back from the store, and counted again."""
        self._published: tuple[AlertState, ...] = ()

    def states(self) -> list[AlertState]:
        """Every pending and firing alert, as of the last evaluation or restore.

        Safe to call while :meth:`evaluate` runs in another thread (``/metrics`` does): it
        reads a tuple that each evaluation replaces when done."""
        return list(self._published)

    def _publish(self) -> None:
        self._published = tuple(s for by_key in self._states.values() for s in by_key.values())

    def restore(self, states: Iterable[AlertState], now: float, *, hold_s: float = 0.0) -> None:
        """Take over persisted pending and firing states, e.g. after a restart, in place of
        any held (the alert job takes its states back from the store after a refused write).

        A restored firing alert stays firing, without a new transition, while its condition
        holds; it resolves as usual once the condition is gone, but not before ``now + hold_s``
        (give the live view time to refill after a restart, e.g. a few sample intervals). A
        state for a rule that no longer exists is kept and resolves at the next evaluation
        after the hold, so its receivers hear that it ended.
        """
        self._states = {name: {} for name in self.rules}
        self._held = {name: {} for name in self.rules}  # counted anew, of these states
        for st in states:
            if st.state not in ("pending", "firing"):
                continue
            st.hold_until = now + hold_s if st.state == "firing" else 0.0
            by_key = self._states.setdefault(st.rule, {})
            key = st.key
            node = st.labels.get("node")
            if key not in by_key and node is not None:
                held = self._held.setdefault(st.rule, {})
                held[node] = held.get(node, 0) + 1
            by_key[key] = st
        self._publish()

    def evaluate(self, view: LiveView, now: float) -> list[Transition]:
        """One evaluation of every rule at ``now``: the state changes, in rule order."""
        out: list[Transition] = []
        for name, by_key in self._states.items():
            rule = self.rules.get(name)
            seen: set[_Key] = set()
            held = self._held.setdefault(name, {})
            if rule is not None:
                self._present(rule, view, now, by_key=by_key, seen=seen, held=held, out=out)
            if len(seen) < len(by_key):
                self._absent(name, rule, by_key, seen, now, out=out, held=held, view=view)
        self._publish()
        return out

    def _dropped(self, rule: Rule, dropped: dict[str, int], now: float) -> None:
        """Count the instances ``rule``'s evaluation did not create (``dropped``: per node);
        log them, with those of the evaluations since the rule's last line, at most once per
        :data:`_LOG_EVERY_S`."""
        self.metrics.instances_dropped.labels(rule.name).inc(sum(dropped.values()))
        unlogged = self._unlogged.setdefault(rule.name, {})
        for node, n in dropped.items():
            unlogged[node] = unlogged.get(node, 0) + n
        if now < self._log_at.get(rule.name, float("-inf")):
            return
        self._log_at[rule.name] = now + _LOG_EVERY_S
        del self._unlogged[rule.name]
        log.warning(
            "alert_instances_dropped",
            alertname=rule.name,
            max_per_node=rule.max_per_node,
            dropped=sum(unlogged.values()),
            nodes=dict(sorted(unlogged.items(), key=lambda kv: -kv[1])[:_LOGGED_NODES]),
            more_nodes=max(0, len(unlogged) - _LOGGED_NODES),
        )

    def _present(
        self,
        rule: Rule,
        view: LiveView,
        now: float,
        *,
        by_key: dict[_Key, AlertState],
        seen: set[_Key],
        held: dict[str, int],
        out: list[Transition],
    ) -> None:
        """Run ``rule``'s condition: update each instance's alert, or create it unless its
        node has ``max_per_node`` (then counted as dropped); each instance's key goes to
        ``seen``, its change, if any (at most one), to ``out``.

        One loop, no Python call per instance but the condition's and the templates': a mass
        event goes through it once per node (12,500 new alerts, then as many updates at every
        evaluation), and a call with its ten arguments cost about as much as the work it did."""
        changed: list[AlertState] = []
        before: list[State] = []
        new_keys: list[_Key] = []
        created: list[AlertState] = []
        """The alerts created, and their keys: no fingerprint yet."""
        dropped: dict[str, int] = {}
        name, own, annotations = rule.name, rule.own_labels, rule.annotations
        # The rule's own pairs, shared by the keys of all its alerts: two tuples fewer to make
        # per instance, and for the cyclic collector to scan while a mass event's keys are new.
        own_items, n_own = tuple(own.items()), len(own)
        for_s, max_per_node = rule.for_s, rule.max_per_node
        fires = for_s <= 0
        first: State = "firing" if fires else "pending"
        fired_at = now if fires else None
        n_seen = len(seen)
        for i, inst in enumerate(rule.condition(view, now), 1):
            if not i % YIELD_EVERY:
                yield_gil()  # the evaluator runs this in a thread: collector.cooperate
            mine = inst.labels
            labels = {**mine, **own}  # rule.alert_labels(inst), inlined
            if len(labels) == len(mine) + n_own:  # none of the rule's own labels overridden
                pairs = [*mine.items(), *own_items]
                pairs.sort()
                key = tuple(pairs)
            else:
                key = tuple(sorted(labels.items()))
            seen.add(key)
            if len(seen) == n_seen:  # one alert per label set, whatever the condition yields
                continue
            n_seen += 1
            st = by_key.get(key)
            if st is None:
                node = labels.get("node")
                if node is not None:
                    n = held.get(node, 0)
                    if n >= max_per_node:
                        dropped[node] = dropped.get(node, 0) + 1
                        seen.discard(key)
                        n_seen -= 1
                        continue
                    held[node] = n + 1
                values = dict(inst.values)
                # Built in its final state: a mass event creates thousands.
                by_key[key] = st = AlertState(
                    name,
                    labels,
                    "",
                    first,
                    now,
                    fired_at,
                    None,
                    None,
                    now,
                    annotations(labels, values),
                    values,
                )
                new_keys.append(key)
                created.append(st)
                changed.append(st)
                before.append("inactive")
                continue
            if st.values != inst.values:  # copied only then (mostly they are the same)
                st.values = values = dict(inst.values)
                st.annotations = annotations(labels, values)
            st.last_seen = now
            st.keep_firing_since = None
            if st.state == "pending" and now - st.active_at >= for_s:
                st.state = "firing"
                st.fired_at = now
                changed.append(st)
                before.append("pending" if for_s > 0 else "inactive")
        if new_keys:  # their fingerprints hashed together (a mass event makes thousands)
            for st, fp in zip(created, fingerprints_of_items(new_keys), strict=True):
                st.fingerprint = fp
        out += map(_transition, changed, before, repeat(now))
        if dropped:
            self._dropped(rule, dropped, now)

    def _absent(
        self,
        name: str,
        rule: Rule | None,
        by_key: dict[_Key, AlertState],
        seen: set[_Key],
        now: float,
        *,
        out: list[Transition],
        held: dict[str, int],
        view: LiveView,
    ) -> None:
        keep_for = rule.keep_firing_for_s if rule is not None else 0.0
        gone: list[_Key] = []
        cleared = 0
        for i, (key, st) in enumerate(by_key.items(), 1):
            if not i % YIELD_EVERY:
                yield_gil()  # a mass event's end resolves every node's alert: as in _present
            if key in seen:
                continue
            if st.state == "pending":
                gone.append(key)
                cleared += 1
                st.state = "inactive"
                out.append(_transition(st, "pending", now))
                continue
            if st.keep_firing_since is None:
                st.keep_firing_since = now
            if now < st.hold_until:
                continue
            if now - st.keep_firing_since < keep_for and not _forgotten(st, view):
                continue
            gone.append(key)
            st.state = "resolved"
            st.resolved_at = now
            out.append(_transition(st, "firing", now))
        for key in gone:
            node = by_key.pop(key).labels.get("node")
            if node is not None and node in held:
                n = held[node] - 1
                if n:
                    held[node] = n
                else:
                    del held[node]
        if cleared and not self.cleared_at_commit:
            self.metrics.pending_cleared.labels(name).inc(cleared)


def _forgotten(st: AlertState, view: LiveView) -> bool:
    """Whether the alert's node was forgotten (an alert of no node: never)."""
    node = st.labels.get("node")
    return node is not None and view.was_forgotten(node)


def _transition(st: AlertState, previous: State, now: float) -> Transition:
    # tuple.__new__ itself: a named tuple's __new__ is a Python function that calls it (a
    # mass event makes thousands).
    return _new_tuple(
        Transition,
        (
            st.rule,
            st.fingerprint,
            st.labels,
            st.annotations,
            previous,
            st.state,
            now,
            st.active_at,
            st.fired_at,
            st.resolved_at,
        ),
    )


_new_tuple: Final = tuple.__new__
