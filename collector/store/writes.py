"""What the table modules beside the store write through, as a protocol.

:class:`collector.store.db.Store` imports their SQL (the ledger's retention, the rollups'
staging); they take the store it opens as a :class:`Writes`, so neither imports the other
(structural typing, as :class:`typing.Protocol` has it: the store need not name this).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collector.store.dialect import Row

__all__ = ["Writes"]


class Writes(Protocol):
    """One write transaction and the statements run inside it (the writer's)."""

    def transaction(self, what: str) -> AbstractAsyncContextManager[None]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def insert_many(
        self, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
    ) -> int: ...
