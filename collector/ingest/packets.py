"""MQTT 3.1.1 packets for the collector's subscriber: the incremental parser and encoders.

Pure functions and one small state machine over bytes, no I/O: :class:`PacketParser` turns the
broker-to-client byte stream into :class:`Message` lists (plus control packets for the
subscriber), and ``encode_*`` build what the subscriber sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from shared.errors import MqttProtocolError

__all__ = [
    "DISCONNECT",
    "PINGREQ",
    "PUBACK_HEADER",
    "Message",
    "PacketParser",
    "encode_packet",
    "encode_string",
]

PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"
PUBACK_HEADER: Final = 0x4002_0000
"""A PUBACK is 4 bytes, ``40 02 id_hi id_lo``: one big-endian u32 ORed with the packet id."""
_MAX_REMAINING_LENGTH: Final = 268_435_455


class Message(NamedTuple):
    """One PUBLISH received from the broker.

    ``packet_id`` is ``None`` for QoS 0; for QoS 1 pass it to :meth:`MqttSubscriber.ack`.
    ``dup`` is set on a redelivery of a message that was sent before and not acknowledged.
    """

    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    retain: bool
    dup: bool


_new_tuple = tuple.__new__  # Message(...) goes through a Python-level __new__; this does not.


class PacketParser:
    """Incremental decoder of the broker-to-client MQTT 3.1.1 byte stream.

    :meth:`feed` takes the bytes of one read and appends the PUBLISH packets completed by it
    to a list, in order; every other packet goes to ``on_control(first_byte, body)``, which may
    raise :class:`MqttProtocolError` to reject it. Data is parsed in place by offset: the only
    copies are each message's topic and payload, and the join of a packet that spans reads.
    """

    __slots__ = ("_need", "_on_control", "_pending", "_pending_len", "packets")

    def __init__(self, on_control: Callable[[int, bytes], None]) -> None:
        self._on_control = on_control
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._need = 0
        self.packets = 0
        """Complete packets decoded so far, of every type."""

    def reset(self) -> None:
        """Forget a partial packet (a new connection starts a new stream)."""
        self._pending = []
        self._pending_len = 0
        self._need = 0

    def feed(self, data: bytes, out: list[Message]) -> None:
        """Decode ``data``; append the messages it completes (possibly none) to ``out``.

        Raises :class:`MqttProtocolError` on a malformed packet; ``out`` then holds the
        messages that preceded it.
        """
        if self._pending:
            # Join only once the packet that spans reads is complete: a large payload arriving
            # in many reads is copied once, not once per read.
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return
            data = b"".join(self._pending)
            self.reset()
        append = out.append
        new = _new_tuple
        end = len(data)
        pos = 0
        need = 0
        count = 0
        try:
            while pos < end:
                first = data[pos]
                i = pos + 1
                # Remaining length: 1 to 4 bytes of 7 bits, least significant group first.
                length = 0
                shift = 0
                while i < end:
                    byte = data[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift == 28:
                        raise MqttProtocolError(
                            "malformed packet from broker: remaining length longer than 4 bytes"
                        )
                else:
                    need = 0  # the header itself is incomplete
                    break
                pkt_end = i + length
                if pkt_end > end:
                    need = pkt_end - pos
                    break
                count += 1
                if first & 0xF0 == 0x30:  # PUBLISH
                    qos = (first >> 1) & 3
                    t_start = i + 2
                    t_end = t_start + ((data[i] << 8) | data[i + 1])
                    if qos:
                        p_start = t_end + 2
                        if qos != 1 or p_start > pkt_end or t_end == t_start:
                            raise MqttProtocolError(_bad_publish(first, length))
                        packet_id: int | None = (data[t_end] << 8) | data[t_end + 1]
                        if not packet_id:
                            raise MqttProtocolError("malformed PUBLISH from broker: packet id 0")
                    else:
                        p_start = t_end
                        packet_id = None
                        if p_start > pkt_end or t_end == t_start:
                            raise MqttProtocolError(_bad_publish(first, length))
                    append(
                        new(
                            Message,
                            (
                                # A topic that is not UTF-8 (a broker should refuse it) is one
                                # bad message for the ingestor to reject, not a reason to drop
                                # the connection (which would bring the same message back).
                                data[t_start:t_end].decode("utf-8", "replace"),
                                data[p_start:pkt_end],
                                qos,
                                packet_id,
                                (first & 1) == 1,
                                (first & 8) == 8,
                            ),
                        )
                    )
                else:
                    self._on_control(first, data[i:pkt_end])
                pos = pkt_end
        except IndexError as exc:  # a PUBLISH shorter than its own topic length field
            raise MqttProtocolError(_bad_publish(data[pos], end - pos)) from exc
        finally:
            self.packets += count
        if pos < end:
            rest = data[pos:]
            self._pending = [rest]
            self._pending_len = len(rest)
            self._need = need


def _bad_publish(first: int, length: int) -> str:
    qos = (first >> 1) & 3
    if qos > 1:
        return f"PUBLISH from broker at QoS {qos}: this subscriber handles QoS 0 and 1 only"
    return f"malformed PUBLISH from broker (QoS {qos}, remaining length {length})"


def _encode_length(n: int) -> bytes:
    if n > _MAX_REMAINING_LENGTH:
        raise ValueError(f"MQTT packet too large: {n} bytes")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_packet(first: int, body: bytes) -> bytes:
    """One MQTT packet: the fixed header byte, the remaining length, the body."""
    return bytes((first,)) + _encode_length(len(body)) + body


def encode_string(value: str, what: str) -> bytes:
    """An MQTT UTF-8 string: two length bytes, then the bytes (``what`` names it in errors)."""
    raw = value.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is {len(raw)} bytes; MQTT allows at most 65535")
    return len(raw).to_bytes(2, "big") + raw
