"""Reading the files a person points capwatch at (settings, plans, cluster files, web
configs): never further than a bound, so ``--config /dev/zero``, a link to a device or a
runaway generator on stdin is refused in one line instead of read into memory until the
process dies."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["MAX_FILE_BYTES", "FileTooLargeError", "read_bounded"]

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
