"""Reading the files a person points capwatch at (settings, plans, cluster files, web
configs): never further than a bound, so ``--config /dev/zero``, a link to a device or a
runaway generator on stdin is refused in one line instead of read into memory until the
process dies; and parsing them (:func:`parse_toml`, :func:`parse_json`) so that one nested
deeper than the standard library's recursive parsers go is a malformed file like any other,
not a ``RecursionError``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, BinaryIO, Final

__all__ = [
    "MAX_FILE_BYTES",
    "TOO_DEEP",
    "FileTooLargeError",
    "parse_json",
    "parse_toml",
    "read_bounded",
]

MAX_FILE_BYTES: Final = 32 << 20
"""The largest file read by default: a 100,000-node cluster's file is a few MB."""


class FileTooLargeError(ValueError):
    """The file holds more than ``limit`` bytes; the caller names it in its own words."""

    def __init__(self, limit: int) -> None:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit:,} bytes"
        super().__init__(f"is larger than {size}")
        self.limit = limit


def read_bounded(source: Path | BinaryIO, limit: int = MAX_FILE_BYTES) -> bytes:
    """All the bytes of ``source`` (a path, or an open binary stream such as stdin) when
    there are at most ``limit``; :class:`FileTooLargeError` once ``limit + 1`` are read. ``OSError``
    as opening or reading raises it."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            data = f.read(limit + 1)
    else:
        data = source.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(limit)
    return data


TOO_DEEP: Final = "nested too deeply (lists or tables inside each other thousands of times)"
"""What a file too deep to parse is told: tomllib, json and PyYAML recurse once per level and
stop at Python's recursion limit (about a thousand levels), with a ``RecursionError``."""


class _TomlTooDeepError(tomllib.TOMLDecodeError):
    """:data:`TOO_DEEP` as the TOML parser's own error, so callers catch one kind."""

    def __init__(self) -> None:
        ValueError.__init__(self, TOO_DEEP)  # not the parser's (msg, doc, pos) of 3.14


def parse_toml(text: str) -> dict[str, Any]:
    """:func:`tomllib.loads`; a document nested too deep raises
    :class:`tomllib.TOMLDecodeError` (:data:`TOO_DEEP`) as a syntax error does."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise _TomlTooDeepError from None


def parse_json(text: str | bytes, **kw: Any) -> Any:
    """:func:`json.loads` (``kw`` passed on); a document nested too deep raises
    :class:`json.JSONDecodeError` (:data:`TOO_DEEP`) as a syntax error does."""
    try:
        return json.loads(text, **kw)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, "", 0) from None
