"""What the table modules beside the store write through, as protocols.

:class:`collector.store.db.Store` imports their SQL (the ledger's retention, the rollups'
staging); they take the store it opens as a :class:`Writes`, so neither imports the other
(structural typing, as :class:`typing.Protocol` has it: the store need not name this).

A write transaction is written one of two ways. :meth:`Writes.transaction` with the async
statements inside: each statement is a round trip to the store's thread (aiosqlite's, or the
PostgreSQL backend's), and each completion waits for the event loop, which under load is
busy validating messages. :meth:`Writes.transact` runs a whole transaction as one function
in that thread, its statements on a :class:`Tx`: one round trip, the transaction held open
only for as long as its statements take. The hot transactions (a sample batch, a rollup
fold's part) are written that way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from collector.store.dialect import Dialect, Row

__all__ = ["MAX_ROWS_PER_STATEMENT", "Tx", "Writes"]

T = TypeVar("T")

# Many rows per statement, not executemany: sqlite3 releases the GIL around every step, and
# while the event loop is busy each re-acquisition waits a whole switch interval (5 ms), so
# executemany of 4,000 rows took seconds under load. Fewer statements are also fewer round
# trips; but never more bound variables than the library allows (999 before SQLite 3.32,
# e.g. Ubuntu 20.04 and RHEL 8; 32,766 since; PostgreSQL's protocol: 65,535).
MAX_ROWS_PER_STATEMENT: Final = 2000


class Tx(Protocol):
    """A write transaction's statements, synchronous, run in the store's own thread (the
    backend: SQLite's or PostgreSQL's; see :meth:`Writes.transact`)."""

    @property
    def max_variables(self) -> int:
        """The most bound variables one statement may have."""
        ...

    @property
    def dialect(self) -> Dialect:
        """Which backend runs the statements."""
        ...

    @property
    def nan_is_null(self) -> bool:
        """Whether a NaN parameter is stored as NULL (SQLite's binding does that)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def fetch_tuples(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    def insert_many(
        self,
        statement: tuple[str, int, str],
        rows: Sequence[tuple[Any, ...]],
        max_rows: int = MAX_ROWS_PER_STATEMENT,
    ) -> int: ...

    def insert_array(
        self, statement: tuple[str, int, str], rows: npt.NDArray[np.object_]
    ) -> None: ...

    def lock_fold(self) -> None:
        """First in a rollup fold's transaction: wait for any other collector's fold."""
        ...


class Writes(Protocol):
    """One write transaction and the statements run inside it (the writer's)."""

    def transaction(self, what: str) -> AbstractAsyncContextManager[None]: ...

    async def transact(self, what: str, work: Callable[[Tx], T]) -> T: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def insert_many(
        self, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
    ) -> int: ...
