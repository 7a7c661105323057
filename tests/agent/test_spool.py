"""The on-disk spool with real files: order, restarts, torn and corrupt records, bounds."""

from __future__ import annotations

import fcntl
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.spool import Spool
from shared.errors import ConfigError


def _open(path: Path, *, max_bytes: int = 1 << 20, segment_bytes: int | None = None) -> Spool:
    spool = Spool(path, max_bytes=max_bytes, max_age_s=3600.0, segment_bytes=segment_bytes)
    spool.open()
    return spool


def _payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"sample-{i:05d}-".encode() * 20 for i in range(start, start + n)]


def _drain(spool: Spool, *, ack: bool = True) -> list[bytes]:
    out = []
    while (record := spool.next()) is not None:
        out.append(record.payload)
        if ack:
            spool.ack(record)
    return out


def test_records_come_back_in_order_and_leave_only_when_acknowledged(tmp_path: Path) -> None:
    """next() hands records out in append order; rewind() hands the unacknowledged out again."""
    spool = _open(tmp_path, segment_bytes=2048)
    items = _payloads(40)
    for p in items:
        spool.append(p)
    first = [spool.next() for _ in range(5)]
    assert [r.payload for r in first if r] == items[:5]
    for r in first[:3]:
        assert r is not None
        spool.ack(r)
    spool.rewind()  # a lost connection: 3 and 4 were sent, never acknowledged
    assert _drain(spool) == items[3:]
    assert len(spool) == 0
    assert len(list(tmp_path.glob("seg-*.log"))) == 1  # acknowledged segments are deleted
    spool.close()


def test_a_killed_agent_restarts_with_every_unacknowledged_sample_in_order(
    tmp_path: Path,
) -> None:
    """No close(): what was appended survives in the files; acknowledged samples (cursor
    written by the fsync task) are not sent again; the epoch counts up."""
    spool = _open(tmp_path, segment_bytes=4096)
    items = _payloads(100)
    for p in items[:60]:
        spool.append(p)
    for _ in range(25):
        record = spool.next()
        assert record is not None
        spool.ack(record)
    spool.sync()  # the periodic fsync task's step: cursor and data
    for p in items[60:]:
        spool.append(p)  # never synced: the page cache still has them after a kill
    epoch = spool.epoch
    del spool  # killed: no close, no flush

    again = _open(tmp_path, segment_bytes=4096)
    assert again.epoch == epoch + 1
    assert len(again) == 75
    assert _drain(again) == items[25:]
    assert sum(again.lost.values()) == 0
    again.close()


def test_a_torn_last_record_is_counted_and_the_rest_is_read(tmp_path: Path) -> None:
    """A record cut short at the end of the tail (a crash mid-write) is counted as torn and
    cut off; the whole records before it are read, and new ones follow them."""
    spool = _open(tmp_path)
    items = _payloads(10)
    for p in items:
        spool.append(p)
    spool.close()
    (seg,) = tmp_path.glob("seg-*.log")
    whole = seg.stat().st_size
    with seg.open("r+b") as f:
        f.truncate(whole - 7)  # the last record lost its end
    with capture_logs() as logs:
        again = _open(tmp_path)
    assert again.lost["torn"] == 1
    assert any(e["event"] == "spool_samples_lost" and e["reason"] == "torn" for e in logs)
    again.append(b"after the restart")
    assert _drain(again) == [*items[:9], b"after the restart"]
    again.close()


def test_a_corrupt_middle_record_is_skipped_and_counted(tmp_path: Path) -> None:
    """A flipped byte inside record 4 fails its CRC: that record is skipped (counted), the
    records after it are found again and read."""
    spool = _open(tmp_path)
    items = _payloads(10)
    for p in items:
        spool.append(p)
    spool.close()
    (seg,) = tmp_path.glob("seg-*.log")
    data = bytearray(seg.read_bytes())
    record_len = len(data) // 10
    data[4 * record_len + 30] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = _open(tmp_path)
    assert again.lost["corrupt"] == 1
    assert again.lost["torn"] == 0
    assert _drain(again) == items[:4] + items[5:]
    again.close()


def test_a_full_spool_drops_the_oldest_segment_and_counts_its_samples(tmp_path: Path) -> None:
    """Past max_bytes the oldest segment goes: its unsent samples counted as ``full``, a
    warning logged; what stays is the newest samples, in order, within the bound."""
    spool = _open(tmp_path, max_bytes=8192, segment_bytes=2048)
    items = _payloads(200)
    with capture_logs() as logs:
        for p in items:
            spool.append(p)
    kept = len(spool)
    assert spool.lost["full"] == 200 - kept > 0
    assert spool.spool_bytes <= 8192
    assert sum(f.stat().st_size for f in tmp_path.glob("seg-*.log")) <= 8192
    warnings = [e for e in logs if e["event"] == "spool_samples_lost"]
    assert warnings
    assert {e["log_level"] for e in warnings} == {"warning"}
    assert _drain(spool) == items[200 - kept :]
    spool.close()


def test_samples_older_than_max_age_are_dropped_and_counted(tmp_path: Path) -> None:
    """A segment whose last append is older than max_age_s goes (``age``), tail included.
    (Segments go whole: 1024-byte segments hold three of these records, so nine fill three.)"""
    now = [1_000.0]
    spool = Spool(
        tmp_path, max_bytes=1 << 20, max_age_s=60.0, segment_bytes=1024, clock=lambda: now[0]
    )
    spool.open()
    for p in _payloads(9):
        spool.append(p)
    now[0] += 30.0
    fresh = _payloads(3, start=9)
    for p in fresh:
        spool.append(p)
    now[0] += 40.0  # the first nine are 70 s old, the last three 40 s
    spool.expire()
    assert spool.lost["age"] == 9
    assert _drain(spool) == fresh
    now[0] += 61.0
    spool.expire()
    assert len(spool) == 0
    spool.close()


def test_an_unwritable_disk_keeps_samples_in_memory_in_order(tmp_path: Path) -> None:
    """The next segment file is /dev/full (ENOSPC): the write fails, is counted, and the
    samples wait in memory, in order, until acknowledged."""
    spool = _open(tmp_path)
    os.symlink("/dev/full", tmp_path / "seg-0000000000000000.log")
    items = _payloads(3)
    for p in items:
        spool.append(p)
    assert spool.write_errors == 1  # later samples follow the first into memory
    assert len(spool) == 3
    assert _drain(spool) == items
    assert len(spool) == 0


def test_a_fresh_directory_starts_at_the_wall_clock_past_any_counted_epoch(
    tmp_path: Path,
) -> None:
    """A new spool directory (a new node, or one reinstalled with its spool wiped) starts at
    the wall clock in ms, not 0: an earlier run on the node counted from 0 (or from its own
    first start's clock, earlier), so the collector takes the new run for a later one, not
    for the old run's ``(0, 0)`` again. Later starts count up from it; a second wipe starts
    past them all."""
    clock = 1_750_000_000.25

    def start() -> int:
        spool = Spool(tmp_path / "spool", max_bytes=1 << 20, max_age_s=3600.0, clock=lambda: clock)
        spool.open()
        spool.close()
        return spool.epoch

    with capture_logs() as logs:
        assert [start(), start()] == [1_750_000_000_250, 1_750_000_000_251]
    assert [e for e in logs if e["log_level"] == "warning"] == []  # nothing wrong with it
    for path in (tmp_path / "spool").iterdir():  # reinstalled, a minute on
        path.unlink()
    clock += 60
    assert start() == 1_750_000_060_250
    assert (tmp_path / "spool" / "epoch").read_text() == "1750000060250\n"


@pytest.mark.parametrize("content", ["not a number\n", "", "-5\n", "-1\n"])
def test_an_unreadable_epoch_file_moves_the_epoch_past_any_counter(
    tmp_path: Path, content: str
) -> None:
    """A damaged epoch file: the wall clock in ms, above any count a counter reached.
    A negative count too: the collector refuses a sample whose epoch is below 0."""
    (tmp_path / "epoch").write_text(content)
    spool = _open(tmp_path)
    assert spool.epoch > 10**12
    spool.close()


def test_a_corrupt_stretch_found_at_open_is_counted_once_however_often_it_is_read(
    tmp_path: Path,
) -> None:
    """A corrupt record in the middle of a segment counts once: at open, not again when
    next() reads over it, nor after a rewind() reads over it a second time."""
    spool = _open(tmp_path)
    items = _payloads(10)
    for p in items:
        spool.append(p)
    spool.close()
    (seg,) = tmp_path.glob("seg-*.log")
    data = bytearray(seg.read_bytes())
    data[4 * (len(data) // 10) + 30] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = _open(tmp_path)
    assert again.lost["corrupt"] == 1
    assert _drain(again, ack=False) == items[:4] + items[5:]
    again.rewind()  # a lost connection: everything is read again
    assert _drain(again) == items[:4] + items[5:]
    assert again.lost == {"corrupt": 1}
    again.close()


def test_a_record_damaged_after_it_was_written_is_counted_once(tmp_path: Path) -> None:
    """Bytes the disk damaged after open are found by next(): counted when first read over,
    not again when a rewind() reads over them again."""
    spool = _open(tmp_path)
    items = _payloads(10)
    for p in items:
        spool.append(p)
    (seg,) = tmp_path.glob("seg-*.log")
    record_len = seg.stat().st_size // 10
    with seg.open("r+b") as f:
        f.seek(6 * record_len + 30)
        f.write(b"\x00\x01\x02")
    assert _drain(spool, ack=False) == items[:6] + items[7:]
    assert spool.lost == {"corrupt": 1}
    spool.rewind()
    assert _drain(spool) == items[:6] + items[7:]
    assert spool.lost == {"corrupt": 1}
    spool.close()


@pytest.mark.parametrize("seg_id", [0, 1, 9], ids=["before-cursor", "at-cursor", "after-last"])
def test_a_directory_named_like_a_segment_is_skipped_with_a_warning(
    tmp_path: Path, seg_id: int
) -> None:
    """A stray directory ``seg-*.log`` (before the cursor, where a segment was, or past the
    last) does not stop open(): it is left alone with a warning, the samples are read, and
    new segments are not written over its name."""
    spool = _open(tmp_path, segment_bytes=2048)
    items = _payloads(12)  # 270-byte records: 7 in segment 0, 5 in segment 1
    for p in items:
        spool.append(p)
    for _ in range(7):  # segment 0 is acknowledged and deleted: the cursor is in segment 1
        record = spool.next()
        assert record is not None
        spool.ack(record)
    spool.close()
    assert [p.name for p in tmp_path.glob("seg-*.log")] == ["seg-0000000000000001.log"]
    stray = tmp_path / f"seg-{seg_id:016x}.log"
    stray.unlink(missing_ok=True)  # at-cursor: segment 1 (5 samples) was lost to it
    stray.mkdir()
    with capture_logs() as logs:
        again = _open(tmp_path, segment_bytes=2048)
    skipped = [e for e in logs if e["event"] == "spool_entry_skipped"]
    assert [(e["path"], e["log_level"]) for e in skipped] == [(stray.name, "warning")]
    again.append(b"after the restart")
    assert again.write_errors == 0
    expected = items[7:] if seg_id != 1 else []
    assert _drain(again) == [*expected, b"after the restart"]
    assert stray.is_dir()
    again.close()


def test_a_fifo_named_like_a_segment_does_not_block_open(tmp_path: Path) -> None:
    """A FIFO ``seg-*.log`` would block a read forever: open() skips it with a warning."""
    os.mkfifo(tmp_path / "seg-0000000000000000.log")
    with capture_logs() as logs:
        spool = _open(tmp_path)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["spool_entry_skipped"]
    spool.append(b"one")
    assert _drain(spool) == [b"one"]
    spool.close()


@pytest.mark.parametrize("stored", [2**53 - 1, 2**53, 2**64], ids=["at-bound", "over", "far-over"])
def test_an_epoch_file_at_the_bound_starts_again_from_the_wall_clock(
    tmp_path: Path, stored: int
) -> None:
    """No count can reach the schema's bound (2**53 - 1), so a file there is damaged like an
    unreadable one: the epoch becomes the wall clock in ms (warned), and later starts count
    up from it, each visible as a new epoch instead of all staying at the bound."""
    (tmp_path / "epoch").write_text(f"{stored}\n")
    clock = 1_750_000_000.5

    def start() -> Spool:
        spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, clock=lambda: clock)
        spool.open()
        spool.close()
        return spool

    with capture_logs() as logs:
        first = start()
    assert first.epoch == 1_750_000_000_500
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["spool_epoch_unreadable"]
    assert [start().epoch, start().epoch] == [1_750_000_000_501, 1_750_000_000_502]


def test_the_last_epoch_below_the_bound_is_still_counted_to(tmp_path: Path) -> None:
    """A count one below the bound still moves on by one, to the bound itself."""
    (tmp_path / "epoch").write_text(f"{2**53 - 2}\n")
    spool = _open(tmp_path)
    assert spool.epoch == 2**53 - 1
    spool.close()


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE for this process: a write(2) crossing ``limit`` is cut short there."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_after_a_cut_short_write_that_cannot_be_truncated_the_spool_rolls(
    tmp_path: Path,
) -> None:
    """A write cut short (the file size limit) leaves bytes the spool does not know; when the
    ftruncate that should remove them fails too (a memfd sealed against shrinking), later
    records go to a new segment, never after those bytes: each is read back once, nothing
    counted lost."""
    memfd = os.memfd_create("segment", os.MFD_ALLOW_SEALING)
    try:
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        spool = _open(tmp_path)
        os.symlink(f"/proc/self/fd/{memfd}", tmp_path / "seg-0000000000000000.log")
        items = _payloads(6)
        for p in items[:3]:
            spool.append(p)
        # capture_logs: the warning goes to a list, not to a (size-limited) output file.
        with capture_logs() as logs, _file_size_limit(os.fstat(memfd).st_size + 5):
            spool.append(items[3])  # 5 bytes of it reach the file, then it waits in memory
        assert [(e["event"], e["error"]) for e in logs] == [
            ("spool_truncate_failed", "[Errno 1] Operation not permitted"),
            ("spool_write_failed", "short write: 5 of 270 bytes"),
        ]
        assert spool.write_errors == 1
        with pytest.raises(PermissionError):
            os.ftruncate(memfd, 0)  # what the spool's ftruncate met
        assert _drain(spool) == items[:4]
        for p in items[4:]:
            spool.append(p)
        assert _drain(spool) == items[4:]
        assert spool.lost == {}
        assert os.fstat(memfd).st_size == 3 * 270 + 5  # nothing appended after the 5 bytes
        assert [p.name for p in tmp_path.glob("seg-*.log")] == ["seg-0000000000000001.log"]
        assert spool.write_errors == 1
        spool.close()
    finally:
        os.close(memfd)


def test_a_spool_another_node_id_left_samples_in_is_refused_an_empty_one_taken_over(
    tmp_path: Path,
) -> None:
    """The spool knows whose samples it holds (``node``): an agent with another node id
    (the host renamed, two agents given one directory) refuses it while it holds unsent
    samples, naming the setting, the old id and the fix, and sends none of them; once
    empty, it is taken over; a spool from before the file is the agent's own."""
    legacy = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0)
    legacy.open()  # no node: as a spool written before the file
    legacy.append(b"of-vm")
    legacy.close()
    first = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="vm")
    first.open()  # adopted, its sample kept
    assert (tmp_path / "node").read_text() == "vm\n"
    assert len(first) == 1
    first.close()
    other = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="gpu-7")
    with pytest.raises(ConfigError, match=r"spool_dir.*1 unsent samples of node 'vm'.*'gpu-7'"):
        other.open()
    assert (tmp_path / "node").read_text() == "vm\n"
    again = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="vm")
    again.open()
    assert _drain(again) == [b"of-vm"]  # still there for its own node
    again.sync()
    again.close()
    with capture_logs() as logs:
        taken = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="gpu-7")
        taken.open()
    assert (tmp_path / "node").read_text() == "gpu-7\n"
    assert [e["was"] for e in logs if e["event"] == "spool_taken_over"] == ["vm"]
    taken.close()


def test_a_spool_another_running_agent_holds_is_refused_even_when_empty(tmp_path: Path) -> None:
    """Two agents given one ``spool_dir`` at once: the first has sent everything (its spool
    empty, as it is most of the time), so the ``node`` file alone would let the second take
    it over and both write the same segment files, each later sending the other's samples
    on its own topic. The second is refused while the first holds it (a lock held open,
    whatever its node id), and takes it once the first has closed it."""
    first = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="vm")
    first.open()
    for node in ("gpu-7", "vm"):
        with pytest.raises(ConfigError, match=r"spool_dir.*in use by another agent"):
            Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node=node).open()
    assert (tmp_path / "node").read_text() == "vm\n"
    first.close()
    second = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="gpu-7")
    second.open()
    assert (tmp_path / "node").read_text() == "gpu-7\n"
    second.close()


def test_a_node_file_that_cannot_be_written_is_one_error_naming_spool_dir(
    tmp_path: Path,
) -> None:
    """A ``node.tmp`` the agent cannot replace (here a directory in its way): the
    :class:`ConfigError` naming ``spool_dir``, not an OSError traceback."""
    (tmp_path / "node.tmp").mkdir()
    spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="n1")
    with pytest.raises(ConfigError, match=r"setting 'spool_dir': cannot write .*node"):
        spool.open()
    (tmp_path / "node.tmp").rmdir()
    again = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0, node="n1")
    again.open()  # the refused open let the directory go
    again.close()


@pytest.mark.parametrize("under", ["", "spool"])
def test_a_spool_dir_through_a_dangling_link_says_so_not_that_it_is_a_file(
    tmp_path: Path, under: str
) -> None:
    """A spool_dir that is (or lies under) a link to nothing (its volume not mounted): mkdir
    answers 'File exists', which the error turned into '... is a file, not a directory',
    sending the operator to look for a file that is not there."""
    link = tmp_path / "spool-link"
    link.symlink_to(tmp_path / "unmounted" / "capwatch")
    spool = Spool(link / under if under else link, max_bytes=1 << 20, max_age_s=3600.0, node="n")
    with pytest.raises(ConfigError) as caught:
        spool.open()
    text = str(caught.value)
    assert "is a file" not in text, text
    assert (
        f"{link} is a link to {tmp_path / 'unmounted' / 'capwatch'}, which does not exist" in text
    )
