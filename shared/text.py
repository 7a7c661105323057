"""Which characters show as themselves: one rule for the names the wire schema accepts
(:data:`shared.schema.USER_PATTERN`) and the text the command lines print
(:func:`shared.cli.shown`). Standard library only: the command lines load it for ``--help``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["QUOTED_MOST", "UNSHOWN", "UNSHOWN_RE", "quoted", "shortened"]

UNSHOWN: Final = (
    r"\x00-\x1f\x7f-\xa0\xad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f"
    r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0"
    r"\ufff0-\ufffb\U0001bca0-\U0001bca3\U0001d159\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
"""Characters a name must not hold, for a regex class: C0 and C1 controls and DEL (ANSI
escapes, newlines), the bidirectional marks, embeddings, overrides and isolates (Unicode
UAX #9: U+061C, U+200E-F, U+202A-E, U+2066-9, which reorder what follows), zero-width and
other invisible characters (every Default_Ignorable_Code_Point of Unicode's
DerivedCoreProperties.txt: U+200B-D, U+2060-4, U+FEFF, U+00AD, U+034F, the Hangul fillers
U+115F, U+1160, U+3164, U+FFA0, the variation selectors, tags), the blanks that are not
spaces (U+2800 BRAILLE PATTERN BLANK, U+1D159 MUSICAL SYMBOL NULL NOTEHEAD), the line and
paragraph separators and every space but U+0020. What is left shows as itself: a name
cannot pose as another, break a table or act on a terminal, a chat message or a mail header
where an alert carries it. :meth:`str.isprintable` calls the Hangul fillers and the blanks
printable; this rule does not."""

UNSHOWN_RE: Final = re.compile(f"[{UNSHOWN}]")
"""One character of :data:`UNSHOWN`."""


QUOTED_MOST: Final = 64
"""The most characters of a value an error line quotes."""


def quoted(text: str, most: int = QUOTED_MOST) -> str:
    """``text`` as an error line quotes a value (``repr``), its first ``most`` characters
    then how long it was: a bad setting of 10 KB was echoed whole."""
    if len(text) <= most:
        return repr(text)
    return f"{text[:most]!r}... ({len(text)} characters)"


_LONG_WORD: Final = re.compile(rf"\S{{{4 * QUOTED_MOST + 1},}}")
"""A run of non-blank characters longer than any word an error line writes itself."""


_TAIL: Final = 20
"""The last characters of an overlong word :func:`shortened` keeps: a path's file name, the
quote and colon after a quoted value."""


def shortened(line: str, most: int = QUOTED_MOST) -> str:
    """``line`` with each overlong word (a value it echoes: a node name, a pattern, a date
    of 20,000 characters) cut to its first ``most`` characters, its length and its last
    :data:`_TAIL`, as :func:`quoted` cuts a value; the rest of the line, which names the field
    and the fix, is left whole. The command lines print every error through it
    (:func:`shared.cli.run_command`): their messages quote what the user gave from many
    places."""
    return _LONG_WORD.sub(
        lambda m: f"{m[0][:most]}... ({len(m[0])} characters) ...{m[0][-_TAIL:]}", line
    )
