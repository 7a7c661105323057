"""What the table modules ask of the connection they run on: :class:`Reads` and
:class:`Statements`.

A table module's read functions take anything that :class:`Reads` (a command's read-only
:class:`~collector.store.reader.StoreReader`, or its write transaction, which sees its own
writes). Its domain writes (``tx.governance``, ``tx.pools``) run on a :class:`Statements`:
the :class:`~collector.store.command.Command` that builds them. They are typed against these
protocols rather than the class because the command sits above the table modules (it imports
them to offer their methods), so a table module never imports it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from collector.store.connect import SyncCursor
from collector.store.dialect import Dialect, Row
from collector.store.query import Query

__all__ = ["Reads", "Statements"]

T = TypeVar("T")


class Reads(Protocol):
    """A snapshot of the store: rows, and which tables (a store not yet migrated lacks some)."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def has_table(self, name: str) -> bool: ...

    def columns(self, table: str) -> set[str]: ...

    @property
    def dialect(self) -> Dialect:
        """The backend, where a statement differs (:func:`collector.store.dialect.pick`)."""
        ...


class Statements(Reads, Protocol):
    """One command's write transaction (:class:`~collector.store.command.Command`)."""

    @property
    def now(self) -> float:
        """The command's time: what its rows record as created, updated, moved."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> SyncCursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def run(self, query: Query[T]) -> T: ...

    def bump_generation(self) -> None: ...
