"""A read written once, whatever runs it: the SQL and what its rows become, together.

A :class:`Query` is the statements of one question (SQL text and parameters) and the
function that turns their rows into the answer. It runs on any connection of the store:
``reader.run(q)`` (a command's :class:`~collector.store.reader.StoreReader`), ``tx.run(q)``
(a :class:`~collector.store.command.Command`, seeing its own writes) and
``await store.run(q)`` (the collector's :class:`~collector.store.db.Store`). Each of those is
the same two lines (:func:`run`); so the question is never written twice, once per way of
executing it.

>>> def usage_snapshot() -> Query[str | None]:
...     return single("SELECT value FROM meta WHERE key = ?", (USAGE_KEY,), first_value)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Fetch", "Query", "first_value", "run", "single"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Fetch = Callable[[str, Sequence[Any]], list[Any]]
"""A connection's read: SQL and parameters in, all rows out."""


@dataclass(frozen=True, slots=True)
class Query(Generic[T_co]):
    """Statements to run in order, and what their results (one row list each) become."""

    statements: tuple[tuple[str, tuple[Any, ...]], ...]
    build: Callable[[list[list[Any]]], T_co]


def single(sql: str, params: Sequence[Any], build: Callable[[list[Any]], T]) -> Query[T]:
    """A query of one statement: ``build`` gets its rows."""
    return Query(((sql, tuple(params)),), lambda results: build(results[0]))


def run(query: Query[T], fetchall: Fetch) -> T:
    """``query`` run with a synchronous ``fetchall``."""
    return query.build([fetchall(sql, params) for sql, params in query.statements])


def first_value(rows: list[Any]) -> str | None:
    """The first column of the first row as text; ``None`` without a row."""
    return str(rows[0][0]) if rows else None
