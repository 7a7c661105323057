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

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from collector.store.dialect import Dialect, Row

__all__ = ["MAX_ROWS_PER_STATEMENT", "Tx", "Writes", "statement_rows"]

T = TypeVar("T")

# Many rows per statement, not executemany: sqlite3 releases the GIL around every step, and
# while the event loop is busy each re-acquisition waits a whole switch interval (5 ms), so
# executemany of 4,000 rows took seconds under load. Fewer statements are also fewer round
# trips; but never more bound variables than the library allows (999 before SQLite 3.32,
# e.g. Ubuntu 20.04 and RHEL 8; 32,766 since; PostgreSQL's protocol: 65,535).
MAX_ROWS_PER_STATEMENT: Final = 2000


def statement_rows(rows: int, most: int) -> Iterator[tuple[int, int]]:
    """Where each statement of a multi-row insert of ``rows`` rows starts, and how many rows
    it takes: ``most`` each, then what is left in powers of two, largest first.

    SQLite parses a multi-row statement in ~33,000 instructions a row of ``samples`` (18
    columns; 1,000 rows: 33 M, callgrind), twice what it then takes to insert them; sqlite3
    keeps the last 128 statements of a connection prepared, by their text. Batches of any
    size (a drain's follow the broker's in-flight window: 54 batches of 23 sizes in 32,000
    samples) then need at most ~12 statement sizes of each insert, each parsed once, where
    one of each batch's size was parsed per batch (``bench/bench_write.py``); at the cost
    of a few more, smaller statements (999 rows: 8). The inserts of
    :class:`~collector.store.db.Store`'s SQLite side, and a fold's reads of the stored
    buckets (:mod:`collector.store.fold`), are cut so."""
    start = 0
    while rows - start >= most:
        yield start, most
        start += most
    left = rows - start
    while left:
        size = 1 << (left.bit_length() - 1)
        yield start, size
        start += size
        left -= size


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
