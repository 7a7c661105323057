"""Read-only access to the store for the command line: synchronous (stdlib ``sqlite3``, or
psycopg for a PostgreSQL store).

``collector query`` asks one question and exits. It needs no event loop, no aiosqlite thread
and none of the writer's machinery: :mod:`collector.store.db` brings aiosqlite, asyncio,
structlog and zstandard, ~0.15 s of imports on a small machine, far more than the answer
takes. A :class:`StoreReader` is one read-only connection and one read transaction, so
every figure of an answer comes from the same snapshot while the collector keeps writing
(WAL mode; on PostgreSQL a ``REPEATABLE READ, READ ONLY`` transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from collector.paths import StoreTarget
from collector.store.connect import SyncConn, foreign, is_capwatch, open_sync
from collector.store.dialect import Dialect, Row
from collector.store.errors import (
    missing_column,
    missing_table,
    not_capwatch,
    not_migrated,
    refused,
)
from collector.store.query import Query, run
from shared.errors import StoreError

if TYPE_CHECKING:
    from collector.store.unpack import PayloadDecoder

__all__ = ["StoreReader"]

T = TypeVar("T")

_TEMPLATE_WINDOW = 1024


class StoreReader:
    """A read-only connection to the store, inside one read transaction.

    >>> with StoreReader(path) as store:
    ...     rows = store.fetchall("SELECT count(*) AS n FROM samples")

    Rows read by index or by name (:class:`~collector.store.dialect.Row`). Fails with
    :class:`StoreError` (one line with the fix) when the store does not exist; never creates
    or writes anything.
    """

    def __init__(self, path: StoreTarget) -> None:
        self.path = path
        self._conn: SyncConn | None = None
        self._decoders: dict[int, PayloadDecoder] = {}
        self._templates: dict[int, bytes] = {}
        self._template_window = 1
        """Templates read per miss: doubles up to :data:`_TEMPLATE_WINDOW` (one node's
        history needs one; a fleet's latest samples, one per node, need them all)."""

    def __enter__(self) -> Self:
        conn = self._conn = open_sync(self.path, write=False)
        try:
            # One snapshot for the whole answer: counts and rows agree with each other.
            conn.begin(write=False)
        except conn.errors as exc:
            self._close()
            raise StoreError(f"cannot read database {str(self.path)!r}: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # ends the read transaction; nothing to commit

    @property
    def conn(self) -> SyncConn:
        """The open connection."""
        if self._conn is None:
            raise StoreError("store is not open: use `with StoreReader(path)`")
        return self._conn

    @property
    def dialect(self) -> Dialect:
        """Which backend answers (for the few statements that differ)."""
        return self.conn.dialect

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read query and return all its rows."""
        conn = self.conn
        try:
            return conn.execute(sql, params).fetchall()
        except conn.errors as exc:
            raise self._refused(exc) from exc

    def _refused(self, exc: BaseException) -> StoreError:
        """A statement refused, as one line. A table or column missing from a capwatch store
        is a store not yet migrated to this version (read with a new binary before its
        collector restarted); missing from another program's database (its own ``nodes`` or
        ``samples`` table), it is no capwatch store
        (:func:`~collector.store.connect.foreign`)."""
        if (missing_table(exc) or missing_column(exc)) and not foreign(self.conn, exc):
            return not_migrated(self.path, exc)
        return refused(self.path, exc, doing="query failed on", no_table=None)

    def run(self, query: Query[T]) -> T:
        """A query (:mod:`collector.store.query`) on this snapshot."""
        return run(query, self.fetchall)

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (a store not yet migrated may lack it)."""
        conn = self.conn
        try:
            return conn.has_table(name)
        except conn.errors as exc:
            raise self._refused(exc) from exc

    def lacks(self, table: str) -> bool:
        """Whether the store lacks table ``table``: a capwatch store the collector has not
        migrated to it yet, which the caller may answer as empty (or name the table). A store
        without capwatch's record of its first migration
        (:func:`~collector.store.connect.is_capwatch`) is no capwatch
        store at all (an empty PostgreSQL database, another program's SQLite file, one with
        a ``samples`` table of its own): that raises
        :func:`~collector.store.errors.not_capwatch`, never an empty answer ("no alerts")."""
        if self.has_table(table):
            return False
        if not is_capwatch(self.conn):
            raise not_capwatch(self.path)
        return True

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty: no such table)."""
        conn = self.conn
        try:
            return conn.columns(table)
        except conn.errors as exc:
            raise self._refused(exc) from exc

    def counters(self) -> dict[str, int]:
        """The counters last flushed by the collector."""
        return {r["name"]: r["value"] for r in self.fetchall("SELECT name, value FROM counters")}

    def payload(self, blob: bytes, dict_id: int | None) -> bytes:
        """A stored sample's JSON, read back by the codec its row names (``dict_id``)."""
        if dict_id is None:  # stored uncompressed
            return bytes(blob)
        try:
            return self._decoder(dict_id).json(bytes(blob))
        except ValueError as exc:
            raise StoreError(str(exc)) from exc

    def sample_object(self, blob: bytes, dict_id: int | None) -> dict[str, Any]:
        """A stored sample as its JSON object's values (plain JSON: no schema judges an old
        row by a newer schema's rules)."""
        try:
            if dict_id is None:
                return self._plain().object(bytes(blob))
            return self._decoder(dict_id).object(bytes(blob))
        except ValueError as exc:
            raise StoreError(str(exc)) from exc

    def _plain(self) -> PayloadDecoder:
        from collector.store.unpack import PayloadDecoder  # noqa: PLC0415

        return PayloadDecoder(b"", None)

    def _decoder(self, dict_id: int) -> PayloadDecoder:
        decoder = self._decoders.get(dict_id)
        if decoder is not None:
            return decoder
        # Only the commands that show a sample's detail read payloads, so only they pay for
        # the codec's reader (and zstandard).
        from collector.store.unpack import PayloadDecoder  # noqa: PLC0415

        rows = self.fetchall("SELECT * FROM payload_dicts WHERE id = ?", (dict_id,))
        if not rows:
            raise StoreError(f"payload dictionary {dict_id} is missing from {str(self.path)!r}")
        row = rows[0]
        names = row.keys()  # a sqlite3.Row's `in` looks at its values, not its names
        layout = row["layout"] if "layout" in names else None  # before 0023: JSON payloads
        decoder = self._decoders[dict_id] = PayloadDecoder(
            bytes(row["dict"]), layout, templates=self._template
        )
        return decoder

    def _template(self, template_id: int) -> bytes:
        """A payload template's body; a miss reads the ones after it too (ids follow the
        order nodes were first stored in), more at each miss."""
        body = self._templates.get(template_id)
        if body is None:
            rows = self.fetchall(
                "SELECT id, body FROM payload_templates WHERE id >= ? ORDER BY id LIMIT ?",
                (template_id, self._template_window),
            )
            self._template_window = min(2 * self._template_window, _TEMPLATE_WINDOW)
            self._templates.update((int(r[0]), bytes(r[1])) for r in rows)
            body = self._templates.get(template_id)
        if body is None:
            raise ValueError(f"payload template {template_id} is missing from {str(self.path)!r}")
        return body
