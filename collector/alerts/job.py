"""The alert rules at work in the collector: evaluate on the live view, record the changes.

:class:`AlertJob` runs inside the writer task (it owns the store's connection) every
``interval_s``: one :meth:`Evaluator.evaluate` over the in-memory :class:`LiveView` (never
the store), then the state changes in one transaction (``alerts`` holds what is pending or
firing, ``alert_history`` every change). On start it restores the pending and firing alerts
of the previous run, so a restarted collector neither forgets nor re-announces them.

Notification (grouping, routing, silences, webhooks) builds on the recorded changes and is
not part of this module yet.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Final

from collector.alerts.rule import AlertState, Evaluator, Transition
from collector.live import LiveView
from collector.store.db import AlertChange, Store
from shared.clock import Clock
from shared.logging import get_logger

__all__ = ["AlertJob"]

log = get_logger("alerts")

_KEEP_HISTORY_S: Final = 30 * 86_400.0


def _json(mapping: Mapping[str, str]) -> str:
    return json.dumps(dict(mapping), sort_keys=True, ensure_ascii=False)


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


class AlertJob:
    """Evaluates the rules every ``interval_s`` and records the changes; see the module."""

    def __init__(
        self,
        evaluator: Evaluator,
        view: LiveView,
        clock: Clock,
        *,
        interval_s: float = 5.0,
        keep_history_s: float = _KEEP_HISTORY_S,
        counters: Counter[str] | None = None,
    ) -> None:
        self.name = "alerts"
        self.interval_s = interval_s
        self._evaluator = evaluator
        self._view = view
        self._clock = clock
        self._keep_history_s = keep_history_s
        self.counters: Counter[str] = Counter() if counters is None else counters

    async def restore(self, store: Store, *, hold_s: float) -> int:
        """Take back the pending and firing alerts of the previous run; return how many."""
        states = []
        for row in await store.active_alerts():
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
        if states:
            log.info("alerts_restored", alerts=len(states))
        return len(states)

    async def __call__(self, store: Store) -> None:
        """One evaluation; its changes are recorded before the next one."""
        transitions = self._evaluator.evaluate(self._view, self._clock.time())
        self.counters["alert_evaluations"] += 1
        if not transitions:
            return
        self.counters["alert_changes"] += len(transitions)
        await store.write_alerts([_change(t) for t in transitions], self._keep_history_s)
        for t in transitions:
            if t.notify:
                log.info(
                    "alert_" + t.state,
                    alertname=t.rule,
                    fingerprint=t.fingerprint,
                    labels=dict(t.labels),
                )
