"""Alerts and notifications in the store: the state the alert job records and the outbox
the webhook delivery sends (tables ``alerts``, ``alert_history``, ``outbox``,
``alert_groups``, ``silences``).

Plain functions of the writer's :class:`~collector.store.db.Store` (its public
``transaction``, ``execute``, ``insert_many``, ``fetchall``), so the writer's one connection
records an alert change, its notifications and the group log in one transaction
(``write_alerts(store, ...)``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from collector.store.db import Store
    from collector.store.dialect import Row

__all__ = [
    "HISTORY_STATES",
    "OUTBOX_PRUNE_SQL",
    "AlertChange",
    "GroupLog",
    "OutboxEntry",
    "OutboxNew",
    "OutboxOutcome",
    "OutboxReport",
    "active_alerts",
    "active_silences",
    "alert_groups",
    "pending_outbox",
    "write_alerts",
    "write_outbox",
]


HISTORY_STATES: Final = frozenset({"firing", "resolved"})
"""The changes ``alert_history`` keeps: an alert that went firing, and its resolution; what
receivers hear of (Alertmanager is sent firing and resolved alerts only). A pending alert
that went away without firing is no one's history: Prometheus keeps pending alerts in memory
and in its ``ALERTS`` series only; here ``alerts`` holds it while it lasts (so a restart
restores it) and the evaluator counts those that went away
(``capwatch_collector_alert_pending_cleared_total``). Otherwise a node naming new things to
alert on in every sample would write two rows per thing per sample, kept 30 days."""


class AlertChange(NamedTuple):
    """One alert state change, as stored (labels and annotations as JSON text)."""

    fingerprint: str
    rule: str
    labels: str
    annotations: str
    previous: str
    state: str
    at: float
    active_at: float
    starts_at: float | None
    ends_at: float | None


class OutboxNew(NamedTuple):
    """A notification to put in the outbox with the alert change it announces."""

    uuid: str
    receiver: str
    fingerprint: str
    rule: str
    status: str
    body: str
    created: float
    expires_at: float


class GroupLog(NamedTuple):
    """One row of ``alert_groups``: fingerprints (JSON lists) last notified for a group."""

    group_key: str
    firing: str
    resolved: str
    notified_at: float


class OutboxEntry(NamedTuple):
    """A pending notification, as the delivery task needs it."""

    id: int
    uuid: str
    receiver: str
    body: str
    created: float
    expires_at: float
    attempts: int
    next_at: float
    redeliveries: int


class OutboxOutcome(NamedTuple):
    """What became of a notification after an attempt (``state`` pending: retry at ``next_at``)."""

    id: int
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    next_at: float
    last_status: int | None
    last_error: str | None
    response_head: str | None
    done_at: float | None


@dataclass(frozen=True, slots=True)
class OutboxReport:
    """Delivery outcomes for the writer to record (a record on the writer's queue)."""

    outcomes: list[OutboxOutcome]
    name: str = "outbox_update"

    async def write(self, store: Store) -> None:
        """Record the outcomes; refused, the rows stay pending and are sent again."""
        await write_outbox(store, self.outcomes)


_UPSERT_ALERT: Final = (
    "INSERT INTO alerts "
    "(fingerprint, rule, labels, annotations, state, active_at, starts_at, updated)",
    8,
    " ON CONFLICT (fingerprint) DO UPDATE SET state = excluded.state, "
    "annotations = excluded.annotations, active_at = excluded.active_at, "
    "starts_at = excluded.starts_at, updated = excluded.updated",
)
_INSERT_ALERT_HISTORY: Final = (
    "INSERT INTO alert_history "
    "(fingerprint, rule, labels, annotations, previous, state, at, starts_at, ends_at)",
    9,
    "",
)
_INSERT_OUTBOX: Final = (
    "INSERT INTO outbox (uuid, receiver, fingerprint, rule, status, body, created, expires_at, "
    "state, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) RETURNING id"
)
OUTBOX_PRUNE_SQL: Final = "DELETE FROM outbox WHERE state != 'pending' AND done_at < ?"
"""The notifications delivered or dead before ``?`` go (found by the ``outbox_done`` index)."""
_OUTBOX_ENTRY: Final = (
    "SELECT id, uuid, receiver, body, created, expires_at, attempts, next_at, redeliveries "
    "FROM outbox"
)


async def write_alerts(
    store: Store,
    changes: Sequence[AlertChange],
    keep_history_s: float,
    outbox: Sequence[OutboxNew] = (),
    now: float | None = None,
    *,
    groups: Sequence[GroupLog] = (),
    forget_groups: Sequence[str] = (),
    meta: Sequence[tuple[str, str]] = (),
) -> list[OutboxEntry]:
    """Record alert state changes: the current pending/firing set, the history (the
    changes to :data:`HISTORY_STATES`), and the notifications they cause (``outbox``), all
    in one transaction; return the latter as stored (with their ids), for the delivery task.

    ``groups`` (what was notified per alert group) are upserted and ``forget_groups``
    deleted in it too, and the ``meta`` rows (key, value) recorded. History, delivered
    notifications and dead letters older than ``keep_history_s`` go in the same transaction
    (``now``: the alert clock's time, default the system's).
    """
    now = time.time() if now is None else now
    live = [c for c in changes if c.state in ("pending", "firing")]
    gone = [(c.fingerprint,) for c in changes if c.state not in ("pending", "firing")]
    async with store.transaction("recording alert changes"):
        await store.insert_many(
            _UPSERT_ALERT,
            [
                (
                    c.fingerprint,
                    c.rule,
                    c.labels,
                    c.annotations,
                    c.state,
                    c.active_at,
                    c.starts_at,
                    now,
                )
                for c in live
            ],
        )
        if gone:
            await store.executemany("DELETE FROM alerts WHERE fingerprint = ?", gone)
        await store.insert_many(
            _INSERT_ALERT_HISTORY,
            [
                (
                    c.fingerprint,
                    c.rule,
                    c.labels,
                    c.annotations,
                    c.previous,
                    c.state,
                    c.at,
                    c.starts_at,
                    c.ends_at,
                )
                for c in changes
                if c.state in HISTORY_STATES
            ],
        )
        await store.execute("DELETE FROM alert_history WHERE at < ?", (now - keep_history_s,))
        entries = [await _insert_outbox(store, n) for n in outbox]
        if groups:
            await store.executemany(
                "INSERT INTO alert_groups (group_key, firing, resolved, notified_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (group_key) DO UPDATE SET "
                "firing = excluded.firing, resolved = excluded.resolved, "
                "notified_at = excluded.notified_at",
                groups,
            )
        if forget_groups:
            await store.executemany(
                "DELETE FROM alert_groups WHERE group_key = ?", [(k,) for k in forget_groups]
            )
        if meta:
            await store.executemany(
                "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, updated = excluded.updated",
                [(key, v, now) for key, v in meta],
            )
        await store.execute(OUTBOX_PRUNE_SQL, (now - keep_history_s,))
    return entries


async def write_outbox(store: Store, outcomes: Sequence[OutboxOutcome]) -> None:
    """Record delivery outcomes in one transaction (only on rows still pending)."""
    async with store.transaction("recording delivery outcomes"):
        await store.executemany(
            "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_status = ?, "
            "last_error = ?, response_head = ?, done_at = ? "
            "WHERE id = ? AND state = 'pending'",
            [(*o[1:], o.id) for o in outcomes],
        )


async def pending_outbox(store: Store, token: int | None = None) -> list[OutboxEntry]:
    """Every notification still to deliver, oldest first.

    ``token`` (an elected leader's term, PostgreSQL): the delivery's claim. The rows are
    read in the same statement, one snapshot, as the check that ``token`` holds the lease:
    a deposed leader reads none (and so sends none); the new leader reads every row still
    pending, each with the ``Idempotency-Key`` it was committed with.
    """
    if token is None:
        rows = await store.fetchall(f"{_OUTBOX_ENTRY} WHERE state = 'pending' ORDER BY id")
    else:
        from collector.store.leader import HOLDS_TOKEN_SQL, ROLE  # noqa: PLC0415 (psycopg)

        rows = await store.fetchall(
            f"{_OUTBOX_ENTRY} WHERE state = 'pending' AND {HOLDS_TOKEN_SQL} ORDER BY id",
            (ROLE, token),
        )
    return [OutboxEntry(*r) for r in rows]


async def active_alerts(store: Store) -> list[Row]:
    """The pending and firing alerts last recorded (to restore them after a restart)."""
    return await store.fetchall(
        "SELECT fingerprint, rule, labels, annotations, state, active_at, starts_at FROM alerts"
    )


async def alert_groups(store: Store) -> list[GroupLog]:
    """What was last notified per alert group (to restore the dispatcher's log)."""
    rows = await store.fetchall("SELECT group_key, firing, resolved, notified_at FROM alert_groups")
    return [GroupLog(*r) for r in rows]


async def active_silences(store: Store, now: float) -> list[Row]:
    """Silences not ended at ``now`` (id, matchers, starts_at, ends_at, comment, author)."""
    return await store.fetchall(
        "SELECT id, matchers, starts_at, ends_at, comment, author FROM silences "
        "WHERE ends_at > ? ORDER BY id",
        (now,),
    )


async def _insert_outbox(store: Store, n: OutboxNew) -> OutboxEntry:
    (row,) = await store.execute_returning(_INSERT_OUTBOX, (*n, n.created))
    return OutboxEntry(
        int(row[0]), n.uuid, n.receiver, n.body, n.created, n.expires_at, 0, n.created, 0
    )
