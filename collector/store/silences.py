"""``collector silence add|expire``: the command's writes to the collector's store.

As ``--redeliver`` does (:mod:`collector.store.outbox`): one short statement in its own
:class:`~collector.store.command.Command` transaction, on a table the collector only reads
(it re-reads the silences in force at every evaluation), so it never holds up the writer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from collector.paths import StoreTarget
from collector.store.command import Command
from shared.errors import ConfigError

__all__ = ["add_silence", "expire_silence"]

_NO_TABLE: Final = (
    "has no silences table yet: start this version's `collector run` once to migrate it"
)


def add_silence(
    path: StoreTarget,
    matchers: Sequence[str],
    starts_at: float,
    ends_at: float,
    *,
    comment: str,
    author: str,
) -> int:
    """Store a silence (matchers already checked); return its id."""
    with Command(path, now=starts_at, no_table=_NO_TABLE) as tx:
        cur = tx.execute(
            "INSERT INTO silences (matchers, starts_at, ends_at, comment, author, created) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (
                json.dumps(list(matchers), ensure_ascii=False),
                starts_at,
                ends_at,
                comment,
                author,
                starts_at,
            ),
        )
        silence_id: int = cur.fetchall()[0][0]
    return silence_id


def expire_silence(path: StoreTarget, silence_id: int, now: float) -> None:
    """End silence ``silence_id`` now; :class:`ConfigError` if no such silence is in force."""
    with Command(path, now=now, no_table=_NO_TABLE) as tx:
        cur = tx.execute(
            "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?", (now, silence_id, now)
        )
    if cur.rowcount != 1:
        raise ConfigError(
            f"no silence in force with id {silence_id}: pick one from `collector silence list`",
            field="expire",
        )
