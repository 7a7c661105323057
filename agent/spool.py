"""The agent's on-disk spool: every sample waits here, in order, until the store has it.

A sample is appended before it is published. The broker's PUBACK (:meth:`Spool.ack`) does
not end its stay once the collector's store watermark has been heard (:attr:`Spool.holding`):
it is *held* until a watermark passes it (:meth:`Spool.confirm`), because the broker is not a
durable queue (a broker that loses its state loses what it acknowledged). Held samples are
sent again on :meth:`Spool.resend` (the collector reports a hole). A held sample is released
without confirmation ``hold_s`` after its PUBACK (:meth:`Spool.release`): a collector that
stops publishing watermarks (an older one, an ACL without the watermark topic) costs at most
``hold_s`` of spool, and the agent is back to forgetting at PUBACK. An agent restarted (or
killed, or its node rebooted) sends everything it had not retired once the broker is back.

The directory holds segment files of records, a cursor, the epoch and the node id whose
samples they are (``node``): their formats are :mod:`agent.spoolfile`'s, but for ``node``,
the id and a newline. A directory that another node id left unsent samples in is refused at
open (:class:`ConfigError` naming ``spool_dir``): they would go out on this node's topic; so
is one another running agent holds (``flock`` on its ``lock`` file, held until close).
Each record is written with one ``write(2)``. At open each
segment is read through: a record cut short at the end of a file (a crash mid-write) is
*torn*: counted, and the file truncated to the last whole record; a bad record in the middle
(CRC, magic or length wrong) is *corrupt*: counted, and skipped by searching for the next
magic that starts a record whose CRC holds. Neither stops the agent, nor does a stray
entry named like a segment that is not a regular file (skipped, with a warning).

Durability: appends go to the page cache (an agent crash loses nothing); :meth:`Spool.sync`
``fsync``\\s the tail, rolled segments and the directory, and the agent runs it in a worker
thread every ``fsync_s``, so the sampling tick never waits for the disk. A host that loses
power loses at most the last ``fsync_s`` of samples (and a stale ``cursor`` costs duplicates,
which the collector's ``(node, ts)`` key ignores).

Bounds: ``max_bytes`` over all segments and ``max_age_s`` per segment (a segment's age is
its last append). Over either, the oldest segment goes, unsent records and all, counted per
reason (:attr:`Spool.lost`) and logged at warning. A segment is at most ``max_bytes / 32``,
so a drop removes about 3 % of the spool at once.

If a write fails (disk full, I/O error), the record is kept in memory instead, up to
``memory_records``, and later records follow it there until it is sent: order holds and the
agent keeps publishing on a full disk. A failed write that cannot be truncated away ends
its segment: the next write starts a new one, never after bytes the spool does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

import msgspec

from agent.spoolfile import (
    HEADER,
    MAX_RECORD_BYTES,
    encode_cursor,
    frame,
    fsync_dir,
    next_epoch,
    read_cursor,
    record_at,
    record_fits,
    resync,
    scan,
)
from shared.errors import ConfigError
from shared.logging import get_logger

__all__ = ["MAX_RECORD_BYTES", "Spool", "SpoolRecord", "record_key", "segment_bytes_for"]

log = get_logger("spool")

_MIN_SEGMENT: Final = 64 * 1024
_MAX_SEGMENT: Final = 16 * 1024 * 1024
_READ_AHEAD: Final = 256 * 1024


def segment_bytes_for(max_bytes: int) -> int:
    """Segment size for a spool of ``max_bytes``: 1/32 of it, within 64 KiB - 16 MiB."""
    return max(_MIN_SEGMENT, min(_MAX_SEGMENT, max_bytes // 32))


def _unusable(what: str, exc: OSError) -> ConfigError:
    """The one-line error of a spool directory the agent cannot use (``what``: which file and
    what it could not do), naming the setting and the fix."""
    why = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError) and exc.filename is not None:
        why = f"{exc.filename} is a file, not a directory"  # mkdir's bare "File exists"
        with contextlib.suppress(OSError):  # or a link to nothing (a volume not mounted)
            if not os.path.exists(exc.filename):
                why = (
                    f"{exc.filename} is a link to {os.readlink(exc.filename)}, which does not exist"
                )
    elif isinstance(exc, NotADirectoryError) and exc.filename is not None:
        why = f"a folder on the way to {exc.filename} is a file"
    return ConfigError(
        f"setting 'spool_dir': {what}: {why}; point --spool-dir "
        "(CAPWATCH_SPOOL_DIR) at a directory the agent may write",
        field="spool_dir",
    )


class SpoolRecord(NamedTuple):
    """One spooled sample as handed to the publisher; give it back to :meth:`Spool.ack`."""

    segment: int
    """Segment id; -1 for a record held in memory after a failed write."""
    offset: int
    end: int
    payload: bytes


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int
    records: int
    mtime: float
    """Wall time of the last append (the file's mtime after a restart)."""
    corrupt_at: set[int] = field(default_factory=set)
    """Offsets of the corrupt stretches already counted in ``lost`` (each counts once,
    however often :meth:`Spool.next` reads over it)."""


class _Key(msgspec.Struct):
    seq: int
    epoch: int | None = None


_key_decoder = msgspec.json.Decoder(_Key)


def record_key(payload: bytes) -> tuple[int, int] | None:
    """``(epoch, seq)`` of an encoded sample; ``None`` if it has no epoch or is unreadable."""
    try:
        key = _key_decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    return None if key.epoch is None else (key.epoch, key.seq)


class _Held(NamedTuple):
    """A record the broker acknowledged, waiting for the store's watermark."""

    record: SpoolRecord
    key: tuple[int, int]
    acked_at: float
    """Monotonic time of the PUBACK."""


class Spool:
    """Bounded, crash-safe FIFO of encoded samples in ``directory``.

    ``open()`` (blocking: run it in a thread) reads the directory back; then, on one event
    loop: :meth:`append` each sample, :meth:`next` / :meth:`ack` to publish them in order,
    :meth:`rewind` after a lost connection (resend what was not acknowledged),
    :meth:`confirm` / :meth:`resend` / :meth:`release` for what the store's watermark says.
    Blocking ``fsync`` lives in :meth:`sync` alone, for a worker thread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        segment_bytes: int | None = None,
        memory_records: int = 4096,
        hold_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        node: str | None = None,
    ) -> None:
        self.segment_bytes = segment_bytes or segment_bytes_for(max_bytes)
        self.node = node
        """The node id whose samples this spool holds (its ``node`` file): a spool left by
        another node id with samples unsent is refused at open, not sent on this node's
        topic (see :meth:`open`). ``None``: not checked."""
        if not 0 < self.segment_bytes <= max_bytes:
            raise ValueError(f"segment_bytes must be in (0, max_bytes={max_bytes}]")
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._monotonic = monotonic
        self.hold_s = hold_s
        """How long an acknowledged sample waits for the store's watermark (0: not at all)."""
        self.holding = False
        """Set once a watermark was heard: from then on :meth:`ack` holds samples."""
        self.confirmed = 0
        """Samples a watermark passed."""
        self.released = 0
        """Held samples let go unconfirmed: ``hold_s`` after their PUBACK, or dropped with
        their segment (full, age; the broker had them)."""
        self.resent = 0
        """Held samples handed out again by :meth:`resend`."""
        self._held: deque[_Held] = deque()
        self.epoch = 0
        """This start's boot counter (one more than the previous start's; a fresh directory's
        first: the wall clock in ms), set by open()."""
        self.lost: Counter[str] = Counter()
        """Samples lost, per reason: ``full``, ``age`` (dropped oldest first), ``torn``,
        ``corrupt`` (found at open or by :meth:`next`; a corrupt run of bytes counts once,
        however often it is read), ``memory_full``."""
        self.write_errors = 0
        self.high_water = 0
        """Most samples ever waiting at once."""
        self.bytes_written = 0
        self._segments: deque[_Segment] = deque()
        self._bytes = 0
        self._records = 0
        self._wfd: int | None = None
        self._to_sync: list[int] = []
        self._dir_dirty = False
        self._unsynced = False
        self._next_id = 0
        # Ack cursor: always in the head segment; how many of its records are acknowledged.
        self._ack_off = 0
        self._head_acked = 0
        self._cursor_written: tuple[int, int] | None = None
        self._cursor_fd: int | None = None
        self._lock_fd: int | None = None
        """The ``lock`` file, flocked while the spool is open (:meth:`_lock`)."""
        # Read cursor: the next record next() hands out.
        self._read: _Segment | None = None
        self._read_off = 0
        self._closing: list[int] = []
        self._rfd: tuple[int, int] | None = None
        self._rbuf = b""
        self._rbuf_at = (-1, 0)
        self._memory: deque[bytes] = deque()
        self._memory_read = 0
        self._memory_records = memory_records
        self._readable = asyncio.Event()

    # -- open / close

    def open(self) -> None:
        """Create or read back the directory; count the epoch up. Blocking. A directory
        that cannot be made or written (a file in the way, no permission, a read-only
        file system) is the setting's fault: :class:`ConfigError` naming ``spool_dir``."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
            self.epoch = next_epoch(self.directory, self._clock)
        except OSError as exc:
            self._unlock()
            raise _unusable(f"cannot use {self.directory}", exc) from exc
        cursor = read_cursor(self.directory)
        paths = sorted(self.directory.glob("seg-*.log"))
        now = self._clock()
        for path in paths:
            try:
                seg_id = int(path.stem[4:], 16)
            except ValueError:
                continue
            self._next_id = max(self._next_id, seg_id + 1)  # never reuse the name
            if not path.is_file():
                # Not written by a spool (it creates regular files only), so it holds none of
                # its samples: nothing to count as lost. A FIFO would block a read forever.
                log.warning("spool_entry_skipped", path=path.name, reason="not a regular file")
                continue
            if cursor is not None and seg_id < cursor[0]:
                path.unlink()  # acknowledged before the restart
                continue
            data = path.read_bytes()
            start = cursor[1] if cursor is not None and seg_id == cursor[0] else 0
            if start > len(data) or (start and record_at(data, start) == -2):
                start = 0  # a cursor that does not point at a record: resend the segment
            found = scan(data, start)
            if found.torn:
                with path.open("r+b") as f:
                    f.truncate(found.valid_end)
            self._count_lost("torn", found.torn, path=path.name)
            self._count_lost("corrupt", len(found.corrupt), path=path.name)
            seg = _Segment(seg_id, path, found.valid_end, found.records, path.stat().st_mtime)
            seg.corrupt_at.update(found.corrupt)
            if not self._segments:
                self._ack_off = self._read_off = start
                self._read = seg
            self._segments.append(seg)
            self._bytes += seg.size
            self._records += seg.records
            del data, found  # one segment in memory at a time (a day's spool: 16 vs 32 MiB peak)
        try:
            self._claim()
        except ConfigError:
            self._unlock()  # refused: nothing of this spool stays open
            raise
        self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
        self.expire(now)
        self._enforce_bytes()
        if len(self):
            self._readable.set()
        self.high_water = len(self)
        log.info(
            "spool_opened",
            path=str(self.directory),
            epoch=self.epoch,
            pending=len(self),
            spool_bytes=self._bytes,
            max_bytes=self.max_bytes,
            max_age_s=self.max_age_s,
        )

    def _lock(self) -> None:
        """Hold the directory (``flock`` on its ``lock`` file until :meth:`close` or the
        process ends) before reading or counting anything in it: another agent running on
        it (two given one ``spool_dir``) is refused, whatever its node id and however empty
        the spool, instead of both appending to the same segment files. Only with
        :attr:`node`, as :meth:`_claim`."""
        if self.node is None:
            return
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"setting 'spool_dir': {self.directory} is in use by another agent: give "
                "each agent its own --spool-dir (CAPWATCH_SPOOL_DIR)",
                field="spool_dir",
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _claim(self) -> None:
        """Make the directory :attr:`node`'s (its ``node`` file). One that another node id
        left samples in (the host renamed, two agents given one ``spool_dir``) is refused:
        its samples would go out on this node's topic, which the collector rejects as
        ``topic_mismatch`` and the broker's ACL may refuse. An empty one is taken over."""
        if self.node is None:
            return
        path = self.directory / "node"
        try:
            held = path.read_text(errors="replace").strip()
        except FileNotFoundError:
            held = ""  # a new spool, or one from before the file: the agent's own
        except OSError as exc:
            raise _unusable(f"cannot read {path}", exc) from exc
        if held == self.node:
            return
        if held and len(self):
            raise ConfigError(
                f"setting 'spool_dir': {self.directory} holds {len(self)} unsent samples of "
                f"node {held[:64]!r}, and this agent is {self.node!r}: give each node id its "
                "own --spool-dir (CAPWATCH_SPOOL_DIR), or empty that directory if those "
                "samples may go",
                field="spool_dir",
            )
        if held:
            log.warning("spool_taken_over", path=str(self.directory), node=self.node, was=held)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(f"{self.node}\n")
            os.replace(tmp, path)
        except OSError as exc:  # e.g. a node.tmp another user left
            raise _unusable(f"cannot write {path}", exc) from exc
        self._dir_dirty = True  # the next sync makes the rename durable

    def close(self) -> None:
        """Sync everything and close the files. Blocking."""
        self.sync()
        self._write_cursor()
        for fd in (self._wfd, self._cursor_fd, self._rfd[1] if self._rfd else None):
            if fd is not None:
                os.close(fd)
        self._wfd = self._cursor_fd = self._rfd = None
        self._unlock()

    def _unlock(self) -> None:
        """Release the directory (:meth:`_lock`)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _write_cursor(self) -> None:
        """Record the ack cursor in place (page cache; a stale one only costs duplicates)."""
        if self._cursor_fd is None or not self._segments:
            return
        pos = (self._segments[0].id, self._ack_off)
        if pos == self._cursor_written:
            return
        os.pwrite(self._cursor_fd, encode_cursor(*pos), 0)
        self._cursor_written = pos

    # -- size

    def __len__(self) -> int:
        """Samples not retired yet: not acknowledged by the broker, or held (disk and memory)."""
        return self._records - self._head_acked + len(self._memory)

    @property
    def unconfirmed(self) -> int:
        """Samples the broker acknowledged, held until the store's watermark passes them."""
        return len(self._held)

    @property
    def spool_bytes(self) -> int:
        """Bytes of the segment files."""
        return self._bytes

    # -- writing

    def append(self, payload: bytes) -> None:
        """Spool one encoded sample (page cache only: no fsync here)."""
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"a record holds at most {MAX_RECORD_BYTES} bytes")
        if self._memory or not self._append_to_disk(payload):
            self._append_to_memory(payload)
        self.high_water = max(self.high_water, len(self))
        self._readable.set()

    def _append_to_disk(self, payload: bytes) -> bool:
        record = frame(payload)
        tail = self._segments[-1] if self._segments else None
        try:
            if (
                tail is None
                or self._wfd is None
                or (tail.records and tail.size + len(record) > self.segment_bytes)
            ):
                tail = self._roll()
            assert self._wfd is not None
            written = os.write(self._wfd, record)
            if written != len(record):
                raise OSError(f"short write: {written} of {len(record)} bytes")
        except OSError as exc:
            self.write_errors += 1
            if tail is not None and self._wfd is not None:
                try:
                    os.ftruncate(self._wfd, tail.size)  # no torn record left behind
                except OSError as trunc_exc:
                    # Bytes of unknown length after the last record: the next append would go
                    # after them (O_APPEND) at an offset the spool does not know. Roll instead;
                    # a restart's scan cuts them off as torn.
                    log.warning("spool_truncate_failed", path=tail.path.name, error=str(trunc_exc))
                    self._to_sync.append(self._wfd)  # the syncer fsyncs and closes it
                    self._wfd = None
            if self.write_errors == 1 or self.write_errors % 100 == 0:
                log.warning(
                    "spool_write_failed",
                    error=str(exc),
                    write_errors=self.write_errors,
                    fallback="memory",
                )
            return False
        tail.size += len(record)
        tail.records += 1
        tail.mtime = self._clock()
        self._bytes += len(record)
        self._records += 1
        self.bytes_written += len(record)
        self._unsynced = True
        self._enforce_bytes()
        return True

    def _append_to_memory(self, payload: bytes) -> None:
        if len(self._memory) >= self._memory_records:
            self._memory.popleft()
            self._memory_read = max(0, self._memory_read - 1)
            self._count_lost("memory_full", 1)
        self._memory.append(payload)

    def _roll(self) -> _Segment:
        if self._wfd is not None:
            self._to_sync.append(self._wfd)  # the syncer fsyncs and closes it
            self._wfd = None
        seg_id = self._next_id
        self._next_id += 1
        path = self.directory / f"seg-{seg_id:016x}.log"
        self._wfd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        seg = _Segment(seg_id, path, 0, 0, self._clock())
        if not self._segments:
            self._ack_off = self._head_acked = 0
            self._read, self._read_off = seg, 0
        self._segments.append(seg)
        self._dir_dirty = True
        self._pop_acked_heads()
        return seg

    # -- bounds

    def _enforce_bytes(self) -> None:
        while self._bytes > self.max_bytes and len(self._segments) > 1:
            self._drop_head("full")

    def expire(self, now: float | None = None) -> None:
        """Drop segments whose last append is older than ``max_age_s``."""
        now = self._clock() if now is None else now
        while self._segments and now - self._segments[0].mtime > self.max_age_s:
            if len(self._segments) == 1 and self._wfd is not None:
                self._roll()  # the tail itself is that old: start a new one first
            self._drop_head("age")

    def _drop_head(self, reason: str) -> None:
        seg = self._segments.popleft()
        held = 0
        while self._held and 0 <= self._held[0].record.segment <= seg.id:
            if self._held.popleft().record.segment == seg.id:
                held += 1
        self.released += held
        unsent = seg.records - self._head_acked - held
        self._records -= seg.records
        self._bytes -= seg.size
        self._head_acked = self._ack_off = 0
        if self._read is seg:
            self._read = self._segments[0] if self._segments else None
            self._read_off = 0
        self._close_read(seg.id)
        seg.path.unlink(missing_ok=True)
        self._dir_dirty = True
        self._count_lost(reason, unsent, path=seg.path.name)

    def _pop_acked_heads(self) -> None:
        """Delete head segments whose every record is acknowledged (never the tail)."""
        while len(self._segments) > 1 and self._ack_off >= self._segments[0].size:
            head = self._segments.popleft()
            self._records -= head.records
            self._bytes -= head.size
            self._head_acked = self._ack_off = 0
            if self._read is head:
                self._read, self._read_off = self._segments[0], 0
            self._close_read(head.id)
            head.path.unlink(missing_ok=True)
            self._dir_dirty = True

    def _count_lost(self, reason: str, n: int, **kw: object) -> None:
        if n <= 0:
            return
        self.lost[reason] += n
        log.warning(
            "spool_samples_lost", reason=reason, samples=n, lost_total=self.lost[reason], **kw
        )

    # -- reading

    def next(self) -> SpoolRecord | None:
        """The next record not handed out since the last :meth:`rewind`, or ``None``."""
        seg = self._read
        while seg is not None:
            if self._read_off >= seg.size:
                if seg is self._segments[-1]:
                    break
                seg = self._segments[self._segments.index(seg) + 1]
                self._read, self._read_off = seg, 0
                continue
            buf, base = self._window(seg, self._read_off)
            pos = self._read_off - base
            end = record_at(buf, pos)
            if end < 0:
                # Found at open (counted there), or the disk's doing since: skip them.
                if self._read_off not in seg.corrupt_at:
                    seg.corrupt_at.add(self._read_off)
                    self._count_lost("corrupt", 1, path=seg.path.name)
                self._read_off = resync(self._read_all(seg), self._read_off)
                continue
            record = SpoolRecord(seg.id, self._read_off, base + end, buf[pos + HEADER.size : end])
            self._read_off = base + end
            return record
        if self._memory_read < len(self._memory):
            payload = self._memory[self._memory_read]
            self._memory_read += 1
            return SpoolRecord(-1, self._memory_read - 1, self._memory_read, payload)
        self._readable.clear()
        return None

    def ack(self, record: SpoolRecord) -> None:
        """The broker has ``record``: hold it for the store's watermark (once one was heard
        and ``hold_s`` > 0, and the record says its epoch), else forget it."""
        if self.holding and self.hold_s > 0:
            key = record_key(record.payload)
            if key is not None:
                self._held.append(_Held(record, key, self._monotonic()))
                return
        self._retire(record)

    def confirm(self, epoch: int, seq: int) -> int:
        """The store holds every sample of epochs before ``epoch`` and of ``epoch`` up to
        ``seq``: forget those held; return how many."""
        held = self._held
        mark = (epoch, seq)
        n = 0
        while held and held[0].key <= mark:
            self._retire(held.popleft().record)
            n += 1
        self.confirmed += n
        return n

    def release(self, now: float | None = None) -> int:
        """Forget held samples acknowledged more than ``hold_s`` ago; return how many."""
        held = self._held
        if not held:
            return 0
        cutoff = (self._monotonic() if now is None else now) - self.hold_s
        n = 0
        while held and held[0].acked_at <= cutoff:
            self._retire(held.popleft().record)
            n += 1
        if n:
            self.released += n
            log.info("spool_released_unconfirmed", samples=n, hold_s=self.hold_s)
        return n

    def resend(self) -> int:
        """Hand out again everything held (and after it): the store lacks some of it."""
        n = len(self._held)
        self._held.clear()
        self.resent += n
        if self._segments:
            self._read, self._read_off = self._segments[0], self._ack_off
        self._memory_read = 0
        if len(self):
            self._readable.set()
        return n

    def _retire(self, record: SpoolRecord) -> None:
        """Forget ``record`` for good (unless it was dropped meanwhile)."""
        if record.segment == -1:
            if self._memory and self._memory[0] is record.payload:
                self._memory.popleft()
                self._memory_read = max(0, self._memory_read - 1)
            return
        self._pop_acked_heads()
        if not self._segments:
            return
        head = self._segments[0]
        if record.segment != head.id or record.offset != self._ack_off:
            return  # dropped (full / age) or acknowledged already
        self._ack_off = record.end
        self._head_acked += 1
        self._pop_acked_heads()

    def rewind(self) -> None:
        """Hand out again everything not acknowledged (after a lost connection); what is
        held the broker had acknowledged: it waits for the watermark (or :meth:`resend`)."""
        read: tuple[_Segment, int] | None = None
        memory_held = 0
        for h in reversed(self._held):
            if h.record.segment == -1:
                memory_held += 1
            elif read is None:
                seg = next((s for s in self._segments if s.id == h.record.segment), None)
                if seg is not None:
                    read = (seg, h.record.end)
                break
        if read is None and self._segments:
            read = (self._segments[0], self._ack_off)
        if read is not None:
            self._read, self._read_off = read
        self._memory_read = memory_held
        if len(self) > len(self._held):
            self._readable.set()

    def wake(self) -> None:
        """Wake :meth:`wait` (the publisher has something to do besides reading)."""
        self._readable.set()

    async def wait(self) -> None:
        """Return once :meth:`next` may have something."""
        await self._readable.wait()

    def _read_fd(self, seg: _Segment) -> int:
        if self._rfd is not None and self._rfd[0] == seg.id:
            return self._rfd[1]
        self._close_read(None)
        fd = os.open(seg.path, os.O_RDONLY)
        self._rfd = (seg.id, fd)
        return fd

    def _close_read(self, seg_id: int | None) -> None:
        if self._rfd is not None and (seg_id is None or self._rfd[0] == seg_id):
            os.close(self._rfd[1])
            self._rfd = None
            self._rbuf, self._rbuf_at = b"", (-1, 0)

    def _window(self, seg: _Segment, offset: int) -> tuple[bytes, int]:
        """Bytes of ``seg`` from ``offset`` or before, holding the record there if whole."""
        sid, base = self._rbuf_at
        buf = self._rbuf
        if sid == seg.id and base <= offset and record_fits(buf, offset - base):
            return buf, base
        buf = os.pread(self._read_fd(seg), min(seg.size - offset, _READ_AHEAD), offset)
        if not record_fits(buf, 0) and len(buf) >= HEADER.size:
            length = min(HEADER.unpack_from(buf, 0)[1], MAX_RECORD_BYTES)
            want = min(seg.size - offset, HEADER.size + length)
            buf = os.pread(self._read_fd(seg), want, offset)
        self._rbuf, self._rbuf_at = buf, (seg.id, offset)
        return buf, offset

    def _read_all(self, seg: _Segment) -> bytes:
        return os.pread(self._read_fd(seg), seg.size, 0)

    # -- durability (a worker thread)

    def take_sync(self) -> tuple[list[int], bool]:
        """On the loop: the file descriptors :meth:`sync_fds` should fsync (the tail and
        rolled segments) and whether the directory changed; resets both."""
        fds = list(self._to_sync)
        closing = len(fds)
        if self._wfd is not None and self._unsynced:
            fds.append(self._wfd)
        self._unsynced = False
        dirty, self._dir_dirty = self._dir_dirty, False
        self._write_cursor()
        self._closing = fds[:closing]
        self._to_sync = []
        return fds, dirty

    def sync_fds(self, fds: list[int], dir_dirty: bool) -> None:
        """In a worker thread: fsync ``fds`` and, if asked, the directory."""
        for fd in fds:
            os.fsync(fd)
        if dir_dirty:
            fsync_dir(self.directory)

    def done_sync(self) -> None:
        """On the loop, after :meth:`sync_fds`: close the rolled segments' descriptors."""
        for fd in self._closing:
            os.close(fd)
        self._closing = []

    def sync(self) -> None:
        """Blocking: everything spooled so far reaches the disk."""
        fds, dirty = self.take_sync()
        self.sync_fds(fds, dirty)
        self.done_sync()

    async def run_sync(self, stop: asyncio.Event, every_s: float) -> None:
        """Until ``stop``: every ``every_s``, expire old segments and fsync in a thread."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(every_s):
                    await stop.wait()
            except TimeoutError:
                pass
            self.expire()
            self.release()
            fds, dirty = self.take_sync()
            try:
                if fds or dirty:
                    await asyncio.to_thread(self.sync_fds, fds, dirty)
            finally:
                self.done_sync()
