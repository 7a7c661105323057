"""The alert rules at work in the collector: evaluate on the live view, record the changes.

:class:`AlertJob` runs inside the writer task (it owns the store's connection) every
``interval_s``: one :meth:`Evaluator.evaluate` over the in-memory :class:`LiveView` (never
the store), then the state changes in one transaction (``alerts`` holds what is pending or
firing, ``alert_history`` every change). On start it restores the pending and firing alerts
of the previous run, so a restarted collector neither forgets nor re-announces them.

Notifications: each firing or resolved change becomes one outbox row per receiver (the
webhook body, fixed once, and an idempotency key), written in the same transaction as the
change; after the commit they are offered to the delivery task (``notify``). Grouping,
routing and silences are not part of this slice: every receiver hears of every change.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal

from collector.alerts.rule import AlertState, Evaluator, Transition
from collector.alerts.webhook import webhook_body
from collector.live import LiveView
from collector.store.db import AlertChange, OutboxEntry, OutboxNew, Store
from shared.clock import Clock
from shared.logging import get_logger

if TYPE_CHECKING:
    from collector.settings import ReceiverSettings

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
        receivers: Sequence[ReceiverSettings] = (),
        external_url: str = "",
        notify: Callable[[list[OutboxEntry]], None] | None = None,
    ) -> None:
        self.name = "alerts"
        self._receivers = list(receivers)
        self._external_url = external_url.rstrip("/")
        self._notify = notify
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
        outbox = [n for t in transitions if t.notify for n in self._notifications(t)]
        entries = await store.write_alerts(
            [_change(t) for t in transitions], self._keep_history_s, outbox, self._clock.time()
        )
        if entries and self._notify is not None:
            self._notify(entries)  # committed: now the delivery may send them
        for t in transitions:
            if t.notify:
                log.info(
                    "alert_" + t.state,
                    alertname=t.rule,
                    fingerprint=t.fingerprint,
                    labels=dict(t.labels),
                )

    def _notifications(self, t: Transition) -> list[OutboxNew]:
        """One outbox row per receiver for a firing or resolved change."""
        status: Literal["firing", "resolved"] = "firing" if t.state == "firing" else "resolved"
        out = []
        for r in self._receivers:
            body = webhook_body(
                receiver=r.name,
                status=status,
                labels=t.labels,
                annotations=t.annotations,
                fingerprint=t.fingerprint,
                starts_at=t.at if t.starts_at is None else t.starts_at,
                ends_at=t.ends_at if status == "resolved" else None,
                external_url=self._external_url,
                max_alerts=r.max_alerts,
            )
            out.append(
                OutboxNew(
                    str(uuid.uuid4()),
                    r.name,
                    t.fingerprint,
                    t.rule,
                    status,
                    body,
                    t.at,
                    t.at + r.max_age_s,
                )
            )
        return out
