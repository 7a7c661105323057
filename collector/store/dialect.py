"""What differs between the two backends' SQL and rows, decided once.

The table modules write one SQL text for both backends: ``?`` placeholders, ``ON CONFLICT``
upserts, ``coalesce(sum(x), 0)``, ``CASE`` instead of scalar ``max``, explicit keys instead
of ``rowid``. PostgreSQL (psycopg) takes ``%s`` placeholders: :func:`pg_sql` rewrites each
text once (cached) — every ``?`` outside a string literal, quoted name or comment becomes
``%s``, and a literal ``%`` becomes ``%%``. Where a statement must differ, the module keeps
both texts side by side and picks with :func:`pick`.

Rows: callers index a row by position and by name (``row[0]``, ``row["node"]``,
``dict(row)``, ``row.keys()``), as :class:`sqlite3.Row` allows; :class:`PgRow` does the same
for psycopg (:func:`pg_row_factory`). :class:`Row` is the type both satisfy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

if TYPE_CHECKING:
    from collector.paths import StoreTarget

__all__ = ["Dialect", "PgRow", "Row", "dialect_of", "pg_row_factory", "pg_sql", "pick"]

Dialect = Literal["sqlite", "postgresql"]


class Row(Protocol):
    """A result row: by position, by column name, ``keys()``, iteration, ``len()``."""

    @overload
    def __getitem__(self, key: int | str, /) -> Any: ...
    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...
    def keys(self) -> list[str]: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


def dialect_of(target: StoreTarget) -> Dialect:
    """``postgresql`` for a :class:`~collector.paths.PgTarget`, else ``sqlite``."""
    from pathlib import Path  # noqa: PLC0415

    return "sqlite" if isinstance(target, Path) else "postgresql"


def pick(dialect: Dialect, *, sqlite: str, postgresql: str) -> str:
    """The text of a statement that must differ between the backends."""
    return postgresql if dialect == "postgresql" else sqlite


@functools.lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """``sql`` with psycopg's placeholders: ``?`` -> ``%s`` and ``%`` -> ``%%`` outside
    string literals, quoted identifiers and comments (those are copied as they are)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            end = i + 1
            while end < n:  # a doubled quote ('it''s') continues the literal
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class PgRow(tuple[Any, ...]):
    """A psycopg row that reads like :class:`sqlite3.Row`: by index or by name."""

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _index: dict[str, int] = {}  # noqa: RUF012 - replaced per result shape

    @overload  # type: ignore[override]
    def __getitem__(self, key: int | str, /) -> Any: ...
    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...
    def __getitem__(self, key: int | str | slice, /) -> Any:
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """Column names, in order."""
        return list(self._names)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    return type("PgRow", (PgRow,), {"__slots__": (), "_names": names, "_index": _first(names)})


def _first(names: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)  # sqlite3.Row: the first column of that name
    return index


def pg_row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    """psycopg row factory: rows as :class:`PgRow` (``row_factory=pg_row_factory``)."""
    description = cursor.description
    return _row_class(tuple(d.name for d in description) if description else ())
