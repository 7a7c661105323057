"""What differs between the two backends' SQL and rows, decided once.

The table modules write one SQL text for both backends: ``?`` placeholders, ``ON CONFLICT``
upserts, ``coalesce(sum(x), 0)``, ``CASE`` instead of scalar ``max``, explicit keys instead
of ``rowid``. PostgreSQL (psycopg) takes ``%s`` placeholders: :func:`pg_sql` rewrites each
text once (cached) — every ``?`` outside a string literal, quoted name or comment becomes
``%s``, and a literal ``%`` becomes ``%%``. Where a statement must differ, the module keeps
both texts side by side and picks with :func:`pick`.

Upserts: a multi-row ``INSERT ... ON CONFLICT (key) DO UPDATE`` that names one key twice is
applied row by row on SQLite ("this decision is made separately for each row",
https://sqlite.org/lang_upsert.html), while PostgreSQL refuses the whole statement ("will not
be allowed to affect any single existing row more than once": cardinality_violation,
https://www.postgresql.org/docs/current/sql-insert.html). :func:`distinct_runs` cuts the
rows, in order, into statements that name each key once: one meaning, SQLite's, on both.

Rows: callers index a row by position and by name (``row[0]``, ``row["node"]``,
``dict(row)``, ``row.keys()``), as :class:`sqlite3.Row` allows; :class:`PgRow` does the same
for psycopg (:func:`pg_row_factory`). :class:`Row` is the type both satisfy.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from collector.paths import StoreTarget

__all__ = [
    "Dialect",
    "PgRow",
    "Row",
    "dialect_of",
    "distinct_runs",
    "growing_side",
    "pg_row_factory",
    "pg_sql",
    "pick",
    "upsert_key",
]

Dialect = Literal["sqlite", "postgresql"]
T = TypeVar("T", bound=Sequence[Any])

_COLUMNS = re.compile(r"\(([^()]*)\)\s*$")
_DO_UPDATE = re.compile(r"\bON\s+CONFLICT\b(.*?)\bDO\s+UPDATE\b", re.IGNORECASE | re.DOTALL)
_TARGET = re.compile(r"^\s*\(([^()]*)\)\s*$")


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


def growing_side(dialect: Dialect, expr: str) -> str:
    """``expr``, a text column of a table outside the growing ones, to compare with a
    growing table's text column (``samples.node``, ``rollup_stage.owner``...) through that
    column's index.

    On PostgreSQL the text columns have the ``C`` collation from
    :data:`~collector.store.migrations.BYTES_ORDER` on, except the growing tables'
    (:data:`~collector.store.migrations.GROWING_TABLES`), which keep the database's, as do
    their indexes. A comparison of the two is made in ``C`` ("If any non-default
    collation is present, that is the result of the collation combination"), and an index
    serves only a comparison in its own collation: without this the growing table is read
    whole, once per outer row. Equality means the same in both (a database's collation is
    deterministic: equal is equal bytes), so only the plan changes
    (https://www.postgresql.org/docs/current/collation.html). SQLite: ``expr`` as it is."""
    return f'{expr} COLLATE "default"' if dialect == "postgresql" else expr


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


@functools.lru_cache(maxsize=256)
def upsert_key(head: str, tail: str) -> tuple[int, ...] | None:
    """Where the conflict key of ``head VALUES (...), ... tail`` sits in each row: the
    positions, in ``head``'s column list, of the target of ``tail``'s ``ON CONFLICT (...) DO
    UPDATE``. ``None``: not such an upsert (a plain insert, ``DO NOTHING``: PostgreSQL takes
    a key twice there). ``()``: an upsert whose target is not a list of ``head``'s columns
    (rows can then only be written one per statement)."""
    upsert = _DO_UPDATE.search(tail)
    if upsert is None:
        return None
    columns, target = _COLUMNS.search(head), _TARGET.match(upsert.group(1))
    if columns is None or target is None:
        return ()
    names = [c.strip().lower() for c in columns.group(1).split(",")]
    key = [c.strip().lower() for c in target.group(1).split(",")]
    if not all(k in names for k in key):
        return ()
    return tuple(names.index(k) for k in key)


def distinct_runs(
    rows: Sequence[T], per: int, key: tuple[int, ...] | None
) -> Iterator[Sequence[T]]:
    """``rows`` in order, in runs of at most ``per`` rows in which no two rows have the same
    values at ``key`` (:func:`upsert_key`; ``None``: runs of ``per``, ``()``: one row each).
    A key that comes again starts the next statement: a batch that names no key twice is
    written in as many statements as before."""
    if not key:
        step = per if key is None else 1
        for i in range(0, len(rows), step):
            yield rows[i : i + step]
        return
    of = operator.itemgetter(*key)
    start, seen = 0, set[Any]()
    for i, row in enumerate(rows):
        k = of(row)
        if k in seen or i - start == per:
            yield rows[start:i]
            start, seen = i, set()
        seen.add(k)
    if start < len(rows):
        yield rows[start:]


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
