"""``collector alerts --redeliver``: the one write a command makes to the collector's store.

Everything else a command does is read-only; this turns one dead letter back to pending.
It is a single ``UPDATE`` on a row the collector no longer touches (only pending rows get
delivery outcomes, and only a dead one is revived), in a command transaction
(:class:`~collector.store.command.Command`) of a millisecond, so it never holds up the
collector's writer and cannot race it. The collector's delivery task finds the row at its
next rescan of the outbox (``rescan_s``, 10 s) and sends it with the same idempotency key, a
fresh ``max_age_s`` and the backoff starting over.
"""

from __future__ import annotations

from typing import Final

from collector.paths import StoreTarget
from collector.store.command import Command
from shared.errors import ConfigError

__all__ = ["request_redelivery"]

_NO_TABLE: Final = "has no outbox yet: no dead letters (see `collector alerts --dead-letters`)"


def request_redelivery(path: StoreTarget, outbox_id: int, now: float) -> None:
    """Make dead letter ``outbox_id`` pending again; :class:`ConfigError` if there is none."""
    with Command(path, now=now, no_table=_NO_TABLE) as tx:
        cur = tx.execute(
            # next_at 0: at once, whatever the collector's clock says; a fresh max_age_s.
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at = 0, "
            "expires_at = ? + (expires_at - created), done_at = NULL, "
            "redeliveries = redeliveries + 1 WHERE id = ? AND state = 'dead'",
            (now, outbox_id),
        )
    if cur.rowcount != 1:
        raise ConfigError(
            f"no dead letter with id {outbox_id}: pick one from `collector alerts --dead-letters`",
            field="--redeliver",
        )
