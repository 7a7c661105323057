"""Leader election through PostgreSQL: one lease row with a fencing token.

Several collectors share one PostgreSQL store; exactly one at a time runs the leader's jobs
(alerts, governance, capacity, webhook delivery, the Alertmanager push). They elect it
through one row of ``capwatch_leader``::

    name        'collector' (one row per elected role)
    holder      the collector holding the lease (its MQTT client id: unique per collector)
    token       fencing token: +1 at every acquisition, never reused
    expires_at  the end of the lease, on the database's clock

Every time is the database's ``now()``: the collectors' clocks never decide who leads, so a
collector whose clock is off cannot take a lease that has not ended. The holder renews every
``ttl / 3``; a contender takes the row only once ``expires_at`` has passed (or it was
released), and the token goes up by one each time: ``(token, expires_at)`` names one term.

Fencing: a leader that is slow, partitioned or paused may not know it was deposed. Each of
its state changes (alert state, an outbox row claimed for delivery) therefore checks its
token *in the same transaction* with :func:`check_token`: ``SELECT ... FOR SHARE`` on the
lease row where ``token`` is its own and the lease has not ended. A new leader's takeover
updates that row, so it waits for any transaction that holds the share lock to end, and a
transaction that starts after the takeover finds another token and fails with
:class:`~shared.errors.NotLeaderError` (rolled back: nothing of it is written).

:class:`LeaderLease` keeps one autocommit connection for the election, opened lazily and
dropped on any error (the next call opens a new one): a PostgreSQL restart costs one failed
call. Every call is bounded by ``timeout_s``: a renewal that hangs on a dead connection must
fail before the lease would end (:class:`collector.role.Role` steps down by its own clock
before then).

The table is one of the PostgreSQL store's migrations (``0022_leader_lease``). An election
database of its own (``[election] url``) is not migrated: there the lease creates the table
on first use, under an advisory lock, so that collectors starting together do not race on
``CREATE TABLE IF NOT EXISTS`` (two at once: one fails on a duplicate ``pg_type`` row).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from collector.store.migrations import LEADER_TABLE_SQL
from shared.errors import NotLeaderError, StoreError
from shared.logging import get_logger

if TYPE_CHECKING:  # imported where a lease connects: a collector on SQLite never loads it
    # (~0.1 s of its start, issue 14)
    import psycopg

__all__ = [
    "CHECK_TOKEN_SQL",
    "HOLDS_TOKEN_SQL",
    "ROLE",
    "LeaderLease",
    "Lease",
    "Term",
    "check_token",
    "not_leader",
]

log = get_logger("leader")

ROLE: Final = "collector"
"""The elected role (one lease row)."""

_TABLE_LOCK: Final = 0x63617077_00000005
"""Advisory lock held while the lease creates its table (collector/store/pgconn.py numbers
the store's others)."""

_ACQUIRE: Final = """
INSERT INTO capwatch_leader AS l (name, holder, token, acquired_at, expires_at)
VALUES (%(name)s, %(holder)s, 1, now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, token = l.token + 1,
        acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
    WHERE l.expires_at <= now()
RETURNING token, extract(epoch FROM expires_at - now())
"""
"""Take the row when it is new or its lease has ended; a new token each time (also for the
holder that had it: its old term's fenced writes must fail, its jobs were stopped)."""

_RENEW: Final = """
UPDATE capwatch_leader SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE name = %(name)s AND holder = %(holder)s AND token = %(token)s AND expires_at > now()
RETURNING extract(epoch FROM expires_at - now())
"""

_RELEASE: Final = """
UPDATE capwatch_leader SET expires_at = now()
WHERE name = %(name)s AND holder = %(holder)s AND token = %(token)s AND expires_at > now()
"""

_CURRENT: Final = """
SELECT holder, token, extract(epoch FROM expires_at - now()) FROM capwatch_leader
WHERE name = %(name)s
"""

CHECK_TOKEN_SQL: Final = """
SELECT 1 FROM capwatch_leader
WHERE name = %(name)s AND token = %(token)s AND expires_at > now()
FOR SHARE
"""
"""The fence, for any transaction of the leader's: a row back means the term still holds
(and the row stays locked against a takeover until the transaction ends)."""

HOLDS_TOKEN_SQL: Final = (
    "EXISTS (SELECT 1 FROM capwatch_leader WHERE name = ? AND token = ? AND expires_at > now())"
)
"""The fence as a condition of one read (params: name, token): a read-only snapshot cannot
lock the row, but what it reads is what the term saw while it still held the lease."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One term: who holds it, its token, and how long it had left when last granted."""

    holder: str
    token: int
    ttl_s: float
    remaining_s: float
    """Seconds of the lease left when the database granted or renewed it."""


@dataclass(frozen=True, slots=True)
class Term:
    """Who leads now, as anyone can read it (``collector status``-like output)."""

    holder: str
    token: int
    remaining_s: float
    """Seconds until the lease ends; <= 0: it has ended and nobody took it yet."""


async def check_token(
    conn: psycopg.AsyncConnection[object], token: int, *, name: str = ROLE
) -> None:
    """Fail the current transaction of ``conn`` unless ``token`` still holds the lease.

    Call it first in each transaction that changes the leader's state: raises
    :class:`NotLeaderError` (roll the transaction back) when another collector took over
    or the lease ended. The row stays share-locked until the transaction ends, so a
    takeover waits for it.
    """
    async with conn.cursor() as cur:
        await cur.execute(CHECK_TOKEN_SQL, {"name": name, "token": token})
        if await cur.fetchone() is None:
            raise not_leader(token)


def not_leader(token: int) -> NotLeaderError:
    """The error of a fenced transaction whose ``token`` no longer holds the lease."""
    return NotLeaderError(f"leadership lost: token {token} no longer holds the lease", token=token)


class LeaderLease:
    """The election's connection and its three calls; see the module docstring.

    >>> async with LeaderLease(url) as election:
    ...     lease = await election.try_acquire("collector-a", ttl_s=10)
    ...     if lease is not None and await election.renew(lease): ...

    Every call raises :class:`StoreError` (not fatal) when the database cannot be reached
    within ``timeout_s``; the next call reconnects.
    """

    def __init__(
        self, url: str, *, password: str | None = None, name: str = ROLE, timeout_s: float = 3.0
    ) -> None:
        self._url = url
        self._password = password
        """The store's password (``store.password_file``); ``None``: libpq's own sources."""
        self.name = name
        self.timeout_s = timeout_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._ready = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._drop()

    async def try_acquire(self, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease if it has ended (or never existed); ``None`` while another holds it."""
        row = await self._one(_ACQUIRE, {"name": self.name, "holder": holder, "ttl": ttl_s})
        if row is None:
            return None
        token, remaining = row
        log.info("leader_lease_acquired", holder=holder, token=token)
        return Lease(holder, int(str(token)), ttl_s, float(str(remaining)))

    async def renew(self, lease: Lease) -> Lease | None:
        """Extend ``lease`` by its ttl from now; ``None`` if it was lost (ended, or taken)."""
        row = await self._one(
            _RENEW,
            {"name": self.name, "holder": lease.holder, "token": lease.token, "ttl": lease.ttl_s},
        )
        if row is None:
            return None
        return Lease(lease.holder, lease.token, lease.ttl_s, float(str(row[0])))

    async def release(self, lease: Lease) -> None:
        """End ``lease`` now, so that a standby takes over at its next try (a clean stop)."""
        await self._one(_RELEASE, {"name": self.name, "holder": lease.holder, "token": lease.token})

    async def current(self) -> Term | None:
        """The row as it is: who holds (or last held) the lease; ``None`` before any term."""
        row = await self._one(_CURRENT, {"name": self.name})
        if row is None:
            return None
        holder, token, remaining = row
        return Term(str(holder), int(str(token)), float(str(remaining)))

    async def _one(self, sql: str, params: dict[str, object]) -> tuple[object, ...] | None:
        """Run one statement (its own transaction) and return its first row, if any."""
        import psycopg  # noqa: PLC0415 (see the imports)

        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._connection()
                async with conn.cursor() as cur:
                    await cur.execute(sql, params)
                    return await cur.fetchone() if cur.description is not None else None
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop()
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc).strip()
            raise StoreError(
                f"leader election: PostgreSQL unreachable: {what}", fatal=False, exit_code=1
            ) from exc

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        import psycopg  # noqa: PLC0415 (see the imports)

        if self._conn is None or self._conn.closed:
            conninfo = self._url
            if self._password is not None:
                conninfo = psycopg.conninfo.make_conninfo(conninfo, password=self._password)
            self._conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=max(1, round(self.timeout_s))
            )
            self._ready = False
        if not self._ready:
            async with self._conn.transaction():
                await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_TABLE_LOCK,))
                await self._conn.execute(LEADER_TABLE_SQL)
            self._ready = True
        return self._conn

    async def _drop(self) -> None:
        import psycopg  # noqa: PLC0415 (see the imports)

        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
