"""Output for people (aligned tables) and scripts (JSON), shared by every command."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, TextIO

from shared.cli import shown

__all__ = [
    "FREE_TEXT_COLUMNS",
    "Column",
    "aligned",
    "cut",
    "free_text",
    "print_json",
    "render_table",
    "shown",
    "width",
]


# A NamedTuple, not a dataclass: `dataclasses` (with `inspect`) is ~10 ms of imports, a
# twentieth of a query's whole budget.
class Column(NamedTuple):
    """One table column: the row key, its header, and how to show a value."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str
    align_right: bool = True


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as an aligned text table; ``None`` shows as ``-``. Every cell goes through
    :func:`shown`: names in a table were chosen by a node or an operator (models, racks, pools,
    tenants, silences' comments), and a newline or an ANSI escape in one must not break its row
    or redraw the terminal."""
    cells = [[shown(c.header) for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c.key) is None else shown(c.fmt(row[c.key])) for c in columns])
    return aligned(cells, [c.align_right for c in columns])


def aligned(cells: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Rows of cells (already :func:`shown`) as lines, every column as wide as its widest
    cell in terminal columns (:func:`width`, measured once a cell), two spaces apart, padded
    on the left where ``right`` says so; trailing spaces cut."""
    measured = [[width(v) for v in row] for row in cells]
    widths = [max(col, default=0) for col in zip(*measured, strict=True)]
    lines = []
    for row, sizes in zip(cells, measured, strict=True):
        parts = [
            " " * (most - size) + v if r else v + " " * (most - size)
            for v, size, most, r in zip(row, sizes, widths, right, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def print_json(data: Any, out: TextIO | None = None) -> None:
    """Pretty JSON on stdout (stable key order as built; what JSON has no type for, as its
    ``str``; NaN and infinities as ``null``). msgspec, not :mod:`json`: with an indent
    :mod:`json` encodes in pure Python, ~20 us a point, most of a long history's time."""
    import msgspec  # noqa: PLC0415 (not for --help)

    body = msgspec.json.format(msgspec.json.encode(data, enc_hook=str), indent=2)
    print(body.decode(), file=out or sys.stdout)


def width(text: str) -> int:
    """Terminal columns ``text`` takes: 2 for an East Asian wide or fullwidth character
    (CJK, most emoji such as ✅ and ❌), 0 for a nonspacing or enclosing mark (general
    category Mn or Me) and for a Hangul medial vowel or final consonant (U+1160-U+11FF,
    U+D7B0-U+D7FF: drawn inside the syllable its initial starts), else 1 (Unicode Standard
    Annex #11, as ``wcwidth`` counts). A node's model name in Chinese must not shift the
    columns after it. By category, not by :func:`unicodedata.combining`: that is the
    canonical combining class, 0 for many nonspacing marks (the Devanagari vowel sign in
    "कुमार", the Thai vowels in "สวัสดี", every enclosing mark), each of which took a column
    it does not use."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def _char_width(c: str) -> int:
    """:func:`width` of one character."""
    if unicodedata.east_asian_width(c) in "WF":
        return 2
    if (
        unicodedata.category(c) in ("Mn", "Me")
        or "\u1160" <= c <= "\u11ff"
        or "\ud7b0" <= c <= "\ud7ff"
    ):
        return 0
    return 1


def cut(text: str, columns: int) -> str:
    """``text`` as a terminal shows it (:func:`shown`, so that no escape is cut in half) in
    at most ``columns`` terminal columns (:func:`width`): cut, ending with ``…``, where it
    takes more."""
    text = shown(text)
    if width(text) <= columns:
        return text
    room, used = columns - 1, 0  # a column for the "…"
    for end, c in enumerate(text):
        used += width(c)
        if used > room:
            return text[:end] + "…"
    return text


FREE_TEXT_COLUMNS: Final = 60
"""Terminal columns a table gives free text of any length (comments, authors): a 10 kB
comment would make its row, and every other one, 10 kB wide. ``--json`` keeps it whole."""


def free_text(text: str) -> str:
    """A table cell of free text: :func:`cut` to :data:`FREE_TEXT_COLUMNS`."""
    return cut(text, FREE_TEXT_COLUMNS)
