"""One command transaction: how every command (pool, lease, quota, apply, silence,
inventory import, alerts --redeliver) writes to the store.

``with Command(path, now=...) as tx`` is one connection
(:func:`~collector.store.connect.open_sync`) and one write transaction that takes the
commands' write lock first (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level
advisory lock), so a check and the write it allows cannot be split by another command's
write. It commits when the block ends, rolls back when it raises or after
:meth:`Command.discard`. The writes of a domain are its methods: ``tx.governance``
(:class:`~collector.store.governance.GovernanceWrites`: tenants, cohorts, quotas, leases) and
``tx.pools`` (:class:`~collector.store.pools.PoolWrites`: pools, declared inventories).

* **Lock budget.** The collector's writer waits at most the busy timeout (5 s) for the write
  lock and then stops; a statement that would run after :data:`LOCK_BUDGET_S` (3 s) of
  holding it is refused and the whole change rolled back.
* **Generation.** After :meth:`Command.bump_generation` (every governance write calls it) the
  commit also moves meta ``governance_generation``
  (:data:`~collector.store.governance.GENERATION_KEY`): the collector compares it at each
  evaluation and reloads its governance state only when it moved.
* **Errors.** Whatever the store says becomes one :class:`StoreError` line
  (:func:`~collector.store.errors.refused`); ``no_table`` says what to do when the store
  predates a table this command needs. A store that is no capwatch store (another
  program's database, an empty one) is named so, as the read commands name it
  (:func:`~collector.store.connect.foreign`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from collector.paths import StoreTarget
from collector.store.connect import SyncConn, SyncCursor, foreign, open_sync
from collector.store.dialect import Dialect, Row
from collector.store.errors import not_capwatch, refused
from collector.store.governance import GENERATION_KEY, GovernanceWrites
from collector.store.migrations import refuse_newer
from collector.store.pools import PoolWrites
from collector.store.query import Query, run
from shared.errors import ConfigError, StoreError

__all__ = ["LOCK_BUDGET_S", "Command"]

T = TypeVar("T")

LOCK_BUDGET_S: Final = 3.0
"""Longest a command may hold the write lock: the collector's own writes wait at most 5 s
for it (``busy_timeout``) and then stop the collector, so a bigger change is refused."""
_NOT_MIGRATED: Final = "is not migrated yet: start this version's `collector run` once"


def _no_nul(params: Sequence[Any]) -> None:
    """Refuse text holding a NUL, on either backend: PostgreSQL cannot keep one in text
    (SQLite can, and a store holding one could then not be migrated). What a command writes
    comes from a person (a comment, a reason, a name): :class:`ConfigError` quoting it."""
    for value in params:
        if isinstance(value, str) and "\x00" in value:
            shown = repr(value if len(value) <= 80 else value[:79] + "…")
            raise ConfigError(
                f"{shown} holds a NUL character, which the store cannot keep (PostgreSQL "
                "refuses it in text): remove it"
            )


class Command:
    """One write transaction of a command on the existing store at ``path``.

    Reads (:meth:`fetchall`, :meth:`run`) see the transaction's own writes; so do the
    domain methods, :attr:`governance` and :attr:`pools`.
    """

    def __init__(
        self,
        path: StoreTarget,
        *,
        now: float | None = None,
        no_table: str = _NOT_MIGRATED,
        lock_budget_s: float = LOCK_BUDGET_S,
    ) -> None:
        self.path = path
        self.now = time.time() if now is None else now
        self.lock_budget_s = lock_budget_s
        self._no_table = no_table
        self._conn: SyncConn | None = None
        self._locked_at = 0.0
        self._discard = False
        self._bump = False
        self.governance: Final = GovernanceWrites(self)
        """Tenants, cohorts, quotas and leases (each write moves the generation)."""
        self.pools: Final = PoolWrites(self)
        """Pools, their moves and the leases that follow them; declared inventories."""

    def __enter__(self) -> Self:
        conn = open_sync(self.path, write=True)
        try:
            conn.begin(write=True)
            # Not by an older schema's rules: a store a newer capwatch migrated is refused.
            done = conn.execute("SELECT name FROM schema_migrations").fetchall()
            refuse_newer(self.path, [row[0] for row in done])
        except conn.errors as exc:
            error = self._refused(exc, conn)  # asks the store whether it is capwatch's
            conn.close()
            raise error from exc
        except StoreError:
            conn.rollback()
            conn.close()
            raise
        self._conn = conn
        self._locked_at = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if exc_type is None and not self._discard:
                if self._bump:
                    conn.execute(
                        "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                        "updated = excluded.updated",
                        (GENERATION_KEY, uuid.uuid4().hex, self.now),
                    )
                conn.commit()
            else:
                conn.rollback()
        except conn.errors as err:
            if conn.in_transaction:
                conn.rollback()
            if exc is None:
                raise self._refused(err, conn) from err
        finally:
            conn.close()

    def _refused(self, exc: BaseException, conn: SyncConn) -> StoreError:
        """A statement refused, as one line: on a store that is no capwatch store (a table
        or column missing from another program's database or an empty one), what the read
        commands say (:func:`~collector.store.connect.foreign`), never 'not migrated', whose
        fix (start `collector run` on it) would write capwatch's tables into it."""
        if foreign(conn, exc):
            return not_capwatch(self.path)
        return refused(self.path, exc, doing="cannot write", no_table=self._no_table, write=True)

    def discard(self) -> None:
        """Roll back instead of committing at exit (a dry run, or nothing changed)."""
        self._discard = True

    def bump_generation(self) -> None:
        """Move the governance generation with the commit (leases, quotas, tenants changed)."""
        self._bump = True

    @property
    def dialect(self) -> Dialect:
        """Which backend this transaction runs on."""
        return self._live().dialect

    def _live(self) -> SyncConn:
        """The connection, while the transaction is open and within its lock budget."""
        if self._conn is None:
            raise StoreError("command transaction is not open: use `with Command(path)`")
        if time.monotonic() - self._locked_at > self.lock_budget_s:
            raise StoreError(
                f"this change held the database's write lock for over {self.lock_budget_s:g} s "
                "(a running collector stops after waiting 5 s for it), so nothing was changed: "
                "apply it in smaller parts"
            )
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> SyncCursor:
        """Run one statement inside the transaction (refused past the lock budget); its
        ``rowcount``, and its rows (``... RETURNING id``) by ``fetchall()``."""
        conn = self._live()
        _no_nul(params)
        try:
            return conn.execute(sql, params)
        except conn.errors as exc:
            raise self._refused(exc, conn) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement over ``rows`` inside the transaction."""
        conn = self._live()
        rows = list(rows)
        for row in rows:
            _no_nul(row)
        try:
            conn.executemany(sql, rows)
        except conn.errors as exc:
            raise self._refused(exc, conn) from exc

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read inside the transaction (sees its own writes)."""
        cur = self.execute(sql, params)
        conn = self._live()
        try:
            return cur.fetchall()
        except conn.errors as exc:
            raise self._refused(exc, conn) from exc

    def run(self, query: Query[T]) -> T:
        """A query (:mod:`collector.store.query`) inside the transaction."""
        return run(query, self.fetchall)

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (one not yet migrated may lack it)."""
        conn = self._live()
        try:
            return conn.has_table(name)
        except conn.errors as exc:
            raise self._refused(exc, conn) from exc

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty: no such table)."""
        conn = self._live()
        try:
            return conn.columns(table)
        except conn.errors as exc:
            raise self._refused(exc, conn) from exc
