"""The agent spool's files (:mod:`agent.spool`): records, the cursor, the epoch.

Layout of the directory (one agent per directory)::

    seg-0000000000000007.log   records, appended in order; ids grow by one per segment
    seg-0000000000000008.log   the tail segment, open for appending
    cursor                     <segment id u64><offset u64><crc32 u32>: first not retired
    epoch                      the agent's boot counter, as decimal text (its first value:
                               the wall clock in ms, :func:`next_epoch`)

A record is ``<magic u16><length u32><crc32 u32><payload>`` (little-endian); the CRC covers
the length bytes and the payload. A record cut short at the end of a file (a crash
mid-write) is *torn*; a bad record in the middle (CRC, magic or length wrong) is *corrupt*,
and :func:`resync` finds the next magic that starts a record whose CRC holds.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple

from shared.logging import get_logger
from shared.schema import MAX_COUNTER

__all__ = [
    "HEADER",
    "MAX_RECORD_BYTES",
    "Scan",
    "encode_cursor",
    "frame",
    "fsync_dir",
    "next_epoch",
    "read_cursor",
    "record_at",
    "record_fits",
    "resync",
    "scan",
]

log = get_logger("spool")

MAX_RECORD_BYTES: Final = 1 << 20
"""A record's payload: the collector refuses samples over 1,000,000 bytes anyway."""
MAGIC: Final = 0xC5A7
HEADER: Final = struct.Struct("<HII")
"""magic, payload length, CRC-32 of the length bytes and the payload."""
_CURSOR: Final = struct.Struct("<QQ")
_CURSOR_BYTES: Final = _CURSOR.size + 4
_MAX_EPOCH: Final = MAX_COUNTER
"""The wire schema's bound on ``epoch``."""


def frame(payload: bytes) -> bytes:
    """``payload`` as one record: header, then the bytes."""
    length = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little")))
    return HEADER.pack(MAGIC, length, crc) + payload


def record_at(buf: bytes, pos: int) -> int:
    """End of the whole, valid record at ``pos``; -1 if cut short by the end of ``buf``;
    -2 if what is there is not a record."""
    if pos + HEADER.size > len(buf):
        return -1
    magic: int
    length: int
    crc: int
    magic, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return -2
    end = pos + HEADER.size + length
    if end > len(buf):
        return -1
    body = buf[pos + HEADER.size : end]
    if zlib.crc32(body, zlib.crc32(length.to_bytes(4, "little"))) != crc:
        return -2
    return end


def record_fits(buf: bytes, pos: int) -> bool:
    """Whether ``buf`` holds the header at ``pos`` and as many bytes as it announces."""
    if len(buf) - pos < HEADER.size:
        return False
    length: int = min(HEADER.unpack_from(buf, pos)[1], MAX_RECORD_BYTES)
    return pos + HEADER.size + length <= len(buf)


def resync(buf: bytes, pos: int) -> int:
    """Offset of the next valid record after the bad one at ``pos``, or ``len(buf)``."""
    magic = MAGIC.to_bytes(2, "little")
    at = buf.find(magic, pos + 1)
    while at != -1:
        if record_at(buf, at) >= 0:
            return at
        at = buf.find(magic, at + 1)
    return len(buf)


class Scan(NamedTuple):
    """What :func:`scan` found in a segment."""

    records: int
    """Whole records from ``start`` on."""
    valid_end: int
    """Where the last whole record ends (the file is truncated there when torn)."""
    corrupt: list[int]
    """Where each corrupt stretch starts."""
    torn: int


def scan(buf: bytes, start: int) -> Scan:
    """Read a segment's bytes through from ``start``: whole, corrupt and torn records."""
    records = torn = 0
    corrupt: list[int] = []
    pos = valid_end = start
    while pos < len(buf):
        end = record_at(buf, pos)
        if end >= 0:
            records += 1
            pos = valid_end = end
            continue
        nxt = resync(buf, pos)
        if nxt >= len(buf):
            torn += 1  # nothing whole after it: the write a crash cut short
            break
        corrupt.append(pos)
        pos = nxt
    return Scan(records, valid_end, corrupt, torn)


def encode_cursor(segment: int, offset: int) -> bytes:
    """The ``cursor`` file's bytes for the first record not retired."""
    body = _CURSOR.pack(segment, offset)
    return body + zlib.crc32(body).to_bytes(4, "little")


def read_cursor(directory: Path) -> tuple[int, int] | None:
    """(segment id, offset) of the ``cursor`` file; ``None``: none, or not whole."""
    try:
        raw = (directory / "cursor").read_bytes()[:_CURSOR_BYTES]
    except FileNotFoundError:
        return None
    if len(raw) != _CURSOR_BYTES:
        return None
    body = raw[: _CURSOR.size]
    if zlib.crc32(body) != int.from_bytes(raw[_CURSOR.size :], "little"):
        return None
    seg_id, offset = _CURSOR.unpack(body)
    return seg_id, offset


def next_epoch(directory: Path, clock: Callable[[], float]) -> int:
    """This start's epoch: the ``epoch`` file's count plus one, written back durably before
    it is used. Without a readable file (a fresh directory: a new node, or one reinstalled
    with its spool wiped; a damaged file) the wall ``clock`` in ms: past every epoch an
    earlier run on the node reached, counted from 0 (agents before this rule) or from its
    own first start's clock, so the collector takes this run for the node's next start
    (:func:`collector.nodefacts.agent_restarted`: a higher epoch). Counted from 0, a wiped
    spool numbered ``(0, 0)`` again, and the collector held the old run's higher ``seq`` as
    the node's newest sample until the new run passed it (the node looked frozen)."""
    path = directory / "epoch"
    try:
        stored = int(path.read_text().strip())
        if stored < 0:  # never written so; kept, every sample would carry an invalid epoch
            raise ValueError(f"negative epoch {stored}")
        if stored >= _MAX_EPOCH:
            # Never counted to (a start a millisecond for ~285,000 years); kept, the epoch
            # would stay at the bound and no later start would show.
            raise ValueError(f"epoch {stored} at or over the bound {_MAX_EPOCH}")
        epoch = stored + 1
    except FileNotFoundError:
        epoch = int(clock() * 1000)
    except ValueError as exc:
        # Unreadable: as a fresh directory. From the bound it is a step down: the
        # collector's live view takes this start for an older epoch until it restarts
        # (stored gaps are per epoch, unaffected).
        epoch = int(clock() * 1000)
        log.warning("spool_epoch_unreadable", path=str(path), epoch=epoch, error=str(exc))
    epoch = min(epoch, _MAX_EPOCH)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(directory)
    return epoch


def fsync_dir(directory: Path) -> None:
    """``fsync`` the directory itself (its entries: new, renamed, removed files)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
