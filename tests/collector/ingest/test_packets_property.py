"""Property tests of :class:`PacketParser`: the framing of the broker's byte stream.

A TCP read can end anywhere: between packets, inside a payload, inside the 1-4 byte remaining
length. Whatever the cuts, the parser must hand over exactly the packets the broker sent, in
order; and on bytes that are not MQTT it must fail with :class:`MqttProtocolError` after exactly
the messages that came before the bad packet, never dropping one and never making one up.
Streams are encoded by :mod:`tests.collector.ingest.wire`, not by the module under test.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from collector.ingest.packets import Message, PacketParser
from shared.errors import MqttProtocolError
from tests.collector.ingest import wire

_PROPERTY = settings(
    max_examples=200,
    deadline=None,  # a shared 2-core machine: timing is no part of these properties
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Control:
    """A non-PUBLISH packet as ``on_control`` sees it, with how many messages preceded it."""

    first: int
    body: bytes
    after_messages: int = 0


Packet = Message | Control


# --- strategies ------------------------------------------------------------------------------

_TOPICS = st.one_of(
    st.text(alphabet="abcxyz/+#-_0123456789", min_size=1, max_size=24),
    st.text(min_size=1, max_size=24),  # any code point but surrogates: 1-4 UTF-8 bytes each
    # 3-byte characters, 270-300 bytes: the topic length's high byte is not zero
    st.text(
        alphabet=st.characters(
            min_codepoint=0x800, max_codepoint=0xFFFF, exclude_categories=["Cs"]
        ),
        min_size=90,
        max_size=100,
    ),
)

_LENGTH_BOUNDARIES = (127, 128, 16_383, 16_384)
"""Where the remaining length grows from 1 to 2 and from 2 to 3 bytes."""


@st.composite
def _payload(draw: st.DrawFn, overhead: int) -> bytes:
    """0-70 KB, often sized so the whole packet sits on a remaining-length boundary."""
    kind = draw(st.sampled_from(["small", "boundary", "large"]))
    if kind == "small":
        size = draw(st.integers(0, 300))
    elif kind == "boundary":
        target = draw(st.sampled_from(_LENGTH_BOUNDARIES)) + draw(st.integers(-2, 2))
        size = max(0, target - overhead)
    else:
        size = draw(st.integers(0, 70_000))
    # Random bytes from a drawn seed: distinct content (a slice off by one shows) without
    # making hypothesis generate 70 KB byte by byte.
    return random.Random(draw(st.integers(0, 2**32))).randbytes(size)


@st.composite
def _messages(draw: st.DrawFn) -> Message:
    topic = draw(_TOPICS)
    qos = draw(st.sampled_from([0, 1]))
    packet_id = draw(st.integers(1, 0xFFFF)) if qos else None
    payload = draw(_payload(2 + len(topic.encode()) + 2 * qos))
    dup = draw(st.booleans()) if qos else False  # DUP is 0 on every QoS 0 PUBLISH
    return Message(topic, payload, qos, packet_id, draw(st.booleans()), dup)


@st.composite
def _controls(draw: st.DrawFn) -> Control:
    if draw(st.booleans()):
        return Control(0xD0, b"")  # PINGRESP
    packet_id = draw(st.integers(1, 0xFFFF))
    # Up to 200 filters: a SUBACK with a 2-byte remaining length too.
    codes = draw(st.lists(st.sampled_from([0, 1, 0x80]), min_size=1, max_size=200))
    return Control(0x90, packet_id.to_bytes(2, "big") + bytes(codes))


_STREAMS = st.lists(st.one_of(_messages(), _controls()), max_size=10)


def _encode(p: Packet) -> bytes:
    if isinstance(p, Message):
        return wire.publish_packet(
            p.topic, p.payload, qos=p.qos, packet_id=p.packet_id, retain=p.retain, dup=p.dup
        )
    return wire.packet(p.first, p.body)


def _expected(packets: Sequence[Packet]) -> tuple[list[Message], list[Control]]:
    """The messages, and the control packets stamped with how many messages came first."""
    messages: list[Message] = []
    controls: list[Control] = []
    for p in packets:
        if isinstance(p, Message):
            messages.append(p)
        else:
            controls.append(Control(p.first, p.body, len(messages)))
    return messages, controls


def _chunks(data: st.DataObject, stream: bytes, starts: Sequence[int]) -> list[bytes]:
    """``stream`` cut where hypothesis says, biased to the first bytes of each packet."""
    n = len(stream)
    cuts: set[int] = set()
    if n <= 4000 and data.draw(st.integers(0, 4), label="every byte") == 0:
        cuts.update(range(n))
    # Inside the fixed header, the remaining length, the topic length, the packet id.
    for start in starts:
        cuts.update(start + off for off in data.draw(st.lists(st.integers(0, 7), max_size=3)))
    cuts.update(data.draw(st.lists(st.integers(0, n), max_size=20), label="anywhere"))
    for start in data.draw(st.lists(st.integers(0, n), max_size=3), label="1-byte runs"):
        cuts.update(range(start, min(start + 40, n)))
    bounds = [0, *sorted(c for c in cuts if 0 < c < n), n]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def _starts(encoded: Sequence[bytes]) -> list[int]:
    starts, pos = [], 0
    for e in encoded:
        starts.append(pos)
        pos += len(e)
    return starts


class _Recorder:
    """A parser, its output list, and its ``on_control`` calls (rejecting what the subscriber
    rejects: anything but PINGRESP and SUBACK after the handshake)."""

    def __init__(self) -> None:
        self.out: list[Message] = []
        self.controls: list[Control] = []
        self.parser = PacketParser(self._on_control)

    def _on_control(self, first: int, body: bytes) -> None:
        if first not in (0xD0, 0x90):
            raise MqttProtocolError(f"unexpected packet from MQTT broker: type {first >> 4}")
        self.controls.append(Control(first, body, len(self.out)))

    def feed_all(self, chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            self.parser.feed(chunk, self.out)


def _note_coverage(encoded: Sequence[bytes], chunks: Sequence[bytes]) -> None:
    """Hypothesis statistics (``--hypothesis-show-statistics``): what the examples exercised."""
    split_lengths: set[int] = set()
    ends = set(itertools.accumulate(len(c) for c in chunks))
    pos = 0
    for e in encoded:
        width = next(i for i in range(1, 5) if e[i] < 0x80)
        event(f"remaining length of {width} byte(s)")
        if width > 1 and any(pos + 1 < end < pos + 1 + width for end in ends):
            split_lengths.add(width)
        pos += len(e)
    for width in split_lengths:
        event(f"a read ends inside a {width}-byte remaining length")
    event(f"{min(len(chunks), 10)}{'+' if len(chunks) >= 10 else ''} reads")


# --- valid streams ---------------------------------------------------------------------------


@_PROPERTY
@given(packets=_STREAMS, data=st.data())
def test_any_valid_stream_cut_anywhere_yields_the_packets_sent_in_order(
    packets: list[Packet], data: st.DataObject
) -> None:
    """Any PUBLISH/PINGRESP/SUBACK stream, whole or in any chunks, decodes to what was sent."""
    encoded = [_encode(p) for p in packets]
    stream = b"".join(encoded)
    messages, controls = _expected(packets)

    chunks = _chunks(data, stream, _starts(encoded))
    _note_coverage(encoded, chunks)

    whole = _Recorder()
    whole.feed_all([stream])
    chunked = _Recorder()
    chunked.feed_all(chunks)

    for got in (whole, chunked):
        assert got.out == messages
        assert got.controls == controls
        assert got.parser.packets == len(packets)


@_PROPERTY
@given(interrupted=_STREAMS, cut=st.floats(0, 1, exclude_max=True), packets=_STREAMS)
def test_reset_drops_a_partial_packet_and_the_next_stream_decodes_cleanly(
    interrupted: list[Packet], cut: float, packets: list[Packet]
) -> None:
    """A connection lost mid-packet leaves nothing behind once reset() starts the next one."""
    old = b"".join(_encode(p) for p in interrupted)
    got = _Recorder()
    got.feed_all([old[: int(len(old) * cut)]])
    got.out.clear()
    got.controls.clear()
    got.parser.reset()
    got.feed_all([b"".join(_encode(p) for p in packets)])
    assert (got.out, got.controls) == _expected(packets)


# --- corrupted streams -----------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """Bytes that are not valid MQTT from a broker, and what the error must say."""

    what: str
    data: bytes
    match: str
    framed: bool = True
    """Whether the bad packet has a valid remaining length (then ``packets`` counts it)."""


@st.composite
def _corruptions(draw: st.DrawFn) -> Corruption:
    topic = draw(_TOPICS).encode()
    tl = len(topic).to_bytes(2, "big")
    payload = draw(st.binary(max_size=300))
    flags = draw(st.sampled_from([0, 1, 8, 9]))  # retain, dup
    kind = draw(
        st.sampled_from(
            [
                "length over 4 bytes",
                "packet id 0",
                "QoS 2 or 3",
                "topic past the end",
                "no room for the packet id",
                "no room for the topic length",
                "empty topic",
                "unexpected packet type",
            ]
        )
    )
    if kind == "length over 4 bytes":
        first = draw(st.sampled_from([0x30, 0x32, 0x90, 0xD0]))
        continuation = bytes(draw(st.lists(st.integers(0x80, 0xFF), min_size=4, max_size=4)))
        tail = draw(st.binary(max_size=3))
        data = bytes((first,)) + continuation + tail
        return Corruption(kind, data, "remaining length longer than 4 bytes", framed=False)
    if kind == "packet id 0":
        data = wire.packet(0x32 | flags, tl + topic + b"\x00\x00" + payload)
        return Corruption(kind, data, "packet id 0")
    if kind == "QoS 2 or 3":
        qos = draw(st.sampled_from([2, 3]))
        pid = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        data = wire.packet(0x30 | qos << 1 | flags, tl + topic + pid + payload)
        return Corruption(kind, data, f"QoS {qos}")
    if kind == "topic past the end":
        qos = draw(st.sampled_from([0, 1]))
        rest = topic + (b"\x00\x01" if qos else b"") + payload  # after the topic length
        declared = len(rest) - 2 * qos + draw(st.integers(1, 300))
        if declared > 0xFFFF:
            declared = len(rest) - 2 * qos + 1
        data = wire.packet(0x30 | qos << 1 | flags, declared.to_bytes(2, "big") + rest)
        return Corruption(kind, data, "malformed PUBLISH")
    if kind == "no room for the packet id":
        data = wire.packet(0x32 | flags, tl + topic + draw(st.binary(max_size=1)))
        return Corruption(kind, data, "malformed PUBLISH")
    if kind == "no room for the topic length":
        qos = draw(st.sampled_from([0, 1]))
        data = wire.packet(0x30 | qos << 1 | flags, draw(st.binary(max_size=1)))
        return Corruption(kind, data, "malformed PUBLISH")
    if kind == "empty topic":
        qos = draw(st.sampled_from([0, 1]))
        data = wire.packet(0x30 | qos << 1 | flags, b"\x00\x00" + b"\x00\x01" * qos + payload)
        return Corruption(kind, data, "malformed PUBLISH")
    # CONNACK after the handshake, PUBREL (we never sent QoS 2), reserved types 0 and 15
    first, body = draw(
        st.sampled_from(
            [
                (0x20, b"\x00\x00"),
                (0x62, b"\x00\x01"),
                (0x00, b""),
                (0xF0, b""),
                (0xB0, b"\x00\x01"),
            ]
        )
    )
    return Corruption(kind, wire.packet(first, body), "unexpected packet")


@_PROPERTY
@given(before=_STREAMS, bad=_corruptions(), after=_STREAMS, data=st.data())
def test_corrupted_stream_fails_after_exactly_the_messages_before_the_bad_packet(
    before: list[Packet], bad: Corruption, after: list[Packet], data: st.DataObject
) -> None:
    """Bad bytes raise MqttProtocolError; the output is every packet before them, none after."""
    encoded = [_encode(p) for p in before]
    good = b"".join(encoded)
    stream = good + bad.data + b"".join(_encode(p) for p in after)
    messages, controls = _expected(before)
    starts = [*_starts(encoded), len(good)]

    for chunks in ([stream], _chunks(data, stream, starts)):
        got = _Recorder()
        with pytest.raises(MqttProtocolError, match=re.escape(bad.match)):
            got.feed_all(chunks)
        assert got.out == messages, bad.what
        assert got.controls == controls, bad.what
        assert got.parser.packets == len(before) + bad.framed, bad.what
