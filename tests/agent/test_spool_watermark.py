"""The spool's hold for the store's watermark, with real files: confirm, resend, release,
rewind after a reconnect, restarts and the bounds."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent.spool import Spool, SpoolRecord, record_key
from shared.clock import FakeClock


def _payload(epoch: int, seq: int) -> bytes:
    return msgspec.json.encode({"v": 1, "seq": seq, "epoch": epoch, "pad": "x" * 200})


def _seqs(records: list[SpoolRecord]) -> list[int]:
    out = []
    for r in records:
        key = record_key(r.payload)
        assert key is not None
        out.append(key[1])
    return out


def _open(path: Path, clock: FakeClock, *, hold_s: float = 60.0, **kw: int) -> Spool:
    spool = Spool(
        path,
        max_bytes=kw.get("max_bytes", 1 << 20),
        max_age_s=3600.0,
        segment_bytes=kw.get("segment_bytes"),
        hold_s=hold_s,
        clock=clock.time,
        monotonic=clock.monotonic,
    )
    spool.open()
    return spool


def _send_all(spool: Spool) -> list[SpoolRecord]:
    """Hand out and acknowledge (PUBACK) everything readable."""
    sent = []
    while (record := spool.next()) is not None:
        spool.ack(record)
        sent.append(record)
    return sent


def _filled(tmp_path: Path, clock: FakeClock, n: int, **kw: int) -> Spool:
    spool = _open(tmp_path, clock, **kw)
    spool.holding = True
    for seq in range(n):
        spool.append(_payload(3, seq))
    return spool


def test_acknowledged_samples_stay_until_the_watermark_passes_them(tmp_path: Path) -> None:
    """10 sent and acknowledged: all held; watermark 3/6 confirms 0..6, 7..9 stay."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 10)
    assert _seqs(_send_all(spool)) == list(range(10))
    assert (len(spool), spool.unconfirmed) == (10, 10)
    assert spool.confirm(3, 6) == 7
    assert (len(spool), spool.unconfirmed, spool.confirmed) == (3, 3, 7)
    assert spool.confirm(4, -1) == 3  # a later epoch passes every sample of this one
    assert len(spool) == 0


def test_before_any_watermark_samples_leave_at_puback(tmp_path: Path) -> None:
    """Not holding (no watermark heard: an older collector): today's behaviour."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 5)
    spool.holding = False
    _send_all(spool)
    assert (len(spool), spool.unconfirmed) == (0, 0)


def test_resend_hands_out_every_held_sample_again_in_order(tmp_path: Path) -> None:
    """The store reports a hole: everything held is sent again, then the rest."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 6)
    for _ in range(4):
        record = spool.next()
        assert record is not None
        spool.ack(record)
    spool.confirm(3, 1)
    assert spool.resend() == 2
    assert _seqs(_send_all(spool)) == [2, 3, 4, 5]
    assert spool.resent == 2


def test_a_reconnect_sends_again_only_what_the_broker_did_not_acknowledge(tmp_path: Path) -> None:
    """rewind(): held samples (the broker acknowledged them) are not sent again."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 6, segment_bytes=1024)
    for _ in range(4):
        record = spool.next()
        assert record is not None
        spool.ack(record)
    assert spool.next() is not None  # seq 4 in flight when the connection dropped
    spool.rewind()
    assert _seqs(_send_all(spool)) == [4, 5]
    assert spool.unconfirmed == 6


def test_held_samples_are_released_hold_s_after_their_puback(tmp_path: Path) -> None:
    """No watermark for hold_s: forgotten unconfirmed, counted (the spool stays bounded)."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 4, hold_s=60)
    _send_all(spool)
    clock.advance(59)
    assert spool.release() == 0
    clock.advance(1)
    assert spool.release() == 4
    assert (len(spool), spool.released) == (0, 4)


def test_a_restart_sends_every_held_sample_again(tmp_path: Path) -> None:
    """Held samples are not retired on disk: the next start sends them first."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 5)
    _send_all(spool)
    spool.confirm(3, 1)
    spool.close()
    again = _open(tmp_path, clock)
    assert _seqs(_send_all(again)) == [2, 3, 4]


def test_a_full_spool_counts_held_samples_as_released_not_lost(tmp_path: Path) -> None:
    """The oldest segment dropped while its samples were held: the broker had them."""
    clock = FakeClock()
    spool = _filled(tmp_path, clock, 30, max_bytes=8192, segment_bytes=2048)
    assert len(_send_all(spool)) == 30
    for seq in range(30, 40):
        spool.append(_payload(3, seq))
    assert sum(spool.lost.values()) == 0
    assert spool.released > 0
    assert spool.unconfirmed + spool.released == 30
    assert len(spool) == 40 - spool.released
