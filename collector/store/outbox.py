"""``collector alerts --redeliver``: the one write a command makes to the collector's store.

Everything else a command does is read-only; this turns one dead letter back to pending.
It is a single ``UPDATE`` on a row the collector no longer touches (only pending rows get
delivery outcomes, and only a dead one is revived), in a transaction of a millisecond, with
a busy timeout, so it never holds up the collector's writer and cannot race it. The
collector's delivery task finds the row at its next rescan of the outbox (``rescan_s``,
10 s) and sends it with the same idempotency key, a fresh ``max_age_s`` and the backoff
starting over. Stdlib ``sqlite3``: no event loop for one statement.
"""

from __future__ import annotations

from pathlib import Path

from collector.store.oneshot import execute_once
from shared.errors import ConfigError

__all__ = ["request_redelivery"]


def request_redelivery(path: Path, outbox_id: int, now: float) -> None:
    """Make dead letter ``outbox_id`` pending again; :class:`ConfigError` if there is none."""
    cur = execute_once(
        path,
        # next_at 0: at once, whatever the collector's clock says; a fresh max_age_s.
        "UPDATE outbox SET state = 'pending', attempts = 0, next_at = 0, "
        "expires_at = ? + (expires_at - created), done_at = NULL, "
        "redeliveries = redeliveries + 1 WHERE id = ? AND state = 'dead'",
        (now, outbox_id),
        no_table="has no outbox yet: no dead letters (see `collector alerts --dead-letters`)",
    )
    if cur.rowcount != 1:
        raise ConfigError(
            f"no dead letter with id {outbox_id}: pick one from `collector alerts --dead-letters`",
            field="--redeliver",
        )
