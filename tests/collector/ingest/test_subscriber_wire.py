"""MqttSubscriber against a loopback server that plays the broker byte by byte.

What brokers may do that Mosquitto's timing rarely shows: reuse a packet id the moment its
PUBACK arrives (the spec frees it then), and put more messages (or payload bytes) into one
read than the subscriber may buffer, so reading pauses with more messages still to come.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from collector.ingest.packets import Message
from collector.ingest.subscriber import MqttSubscriber
from tests.collector.ingest import wire
from tests.helpers import wait_until

_STEP_S = 10.0
"""Bound of one network wait, and of each scripted broker's whole run."""


def _broker(
    script: wire.Script,
) -> contextlib.AbstractAsyncContextManager[tuple[int, asyncio.Future[None]]]:
    """:func:`wire.scripted_broker` that also answers SUBSCRIBE with SUBACK before ``script``."""

    async def subscribed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subscribe = await wire.read_packet(reader)
        assert subscribe[0] == 0x82, "expected SUBSCRIBE"
        writer.write(wire.suback(int.from_bytes(subscribe[2:4], "big"), [1]))
        await script(reader, writer)

    return wire.scripted_broker(subscribed)


async def _open(
    port: int,
    stack: contextlib.AsyncExitStack,
    *,
    max_buffered: int = 50_000,
    max_buffered_bytes: int = 16 << 20,
) -> MqttSubscriber:
    """Connect and subscribe to ``t/#`` at QoS 1."""
    sub = MqttSubscriber(
        "127.0.0.1",
        port,
        client_id="wire",
        connect_timeout_s=_STEP_S,
        max_buffered=max_buffered,
        max_buffered_bytes=max_buffered_bytes,
    )
    async with asyncio.timeout(_STEP_S):
        await stack.enter_async_context(sub)
        assert await sub.subscribe([("t/#", 1)]) == [1]
    return sub


async def _next(sub: MqttSubscriber) -> list[Message]:
    async with asyncio.timeout(_STEP_S):
        return await sub.next_batch()


async def _pubacks_until_disconnect(reader: asyncio.StreamReader) -> list[int]:
    """The packet ids of the PUBACKs the client sends, up to its DISCONNECT."""
    ids = []
    while (packet := await wire.read_packet(reader)) != wire.DISCONNECT:
        assert packet[:2] == b"\x40\x02", f"expected PUBACK or DISCONNECT, got {packet!r}"
        ids.append(int.from_bytes(packet[2:4], "big"))
    return ids


# --- packet id reuse -------------------------------------------------------------------------

_REUSE_MESSAGES = 600
_ID_POOL = (7, 1, 0xFFFF)
"""The broker's packet ids in order of preference: 7 is taken again whenever it is free."""


async def test_packet_id_reused_right_after_its_puback_is_a_new_message_each_time() -> None:
    """Id 7 reused on PUBACK: each message delivered once, in order, PUBACKed once after ack()."""
    acked: list[bytes] = []  # payloads the test passed to ack(), in order
    pubacks: list[tuple[int, bytes]] = []  # (id, payload it acknowledged) as the broker saw them
    sent: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_flight: dict[int, bytes] = {}
        while len(sent) < _REUSE_MESSAGES or in_flight:
            # Fill the window, lowest free id first; every 5th message is QoS 0 (no id).
            burst = b""
            while len(sent) < _REUSE_MESSAGES and len(in_flight) < len(_ID_POOL):
                payload = b"m%04d" % len(sent)
                sent.append(payload)
                if len(sent) % 5 == 0:
                    burst += wire.publish_packet("t/q0", payload)
                    continue
                packet_id = next(i for i in _ID_POOL if i not in in_flight)
                in_flight[packet_id] = payload
                burst += wire.publish_packet("t/q1", payload, qos=1, packet_id=packet_id)
            writer.write(burst)
            if not in_flight:
                continue
            packet = await wire.read_packet(reader)
            assert packet[:2] == b"\x40\x02", f"expected PUBACK, got {packet!r}"
            packet_id = int.from_bytes(packet[2:4], "big")
            # A PUBACK for an id not in flight would acknowledge the NEXT message to get it.
            assert packet_id in in_flight, f"PUBACK {packet_id} for no message in flight"
            payload = in_flight.pop(packet_id)
            assert payload in acked, f"PUBACK {packet_id} ({payload!r}) before ack()"
            pubacks.append((packet_id, payload))
        assert await _pubacks_until_disconnect(reader) == [], "PUBACKs for nothing in flight"

    got: list[Message] = []
    async with _broker(script) as (port, done):
        async with contextlib.AsyncExitStack() as stack:
            sub = await _open(port, stack)
            while len(got) < _REUSE_MESSAGES:
                batch = await _next(sub)
                got.extend(batch)
                acked.extend(m.payload for m in batch if m.packet_id is not None)
                sub.ack(m.packet_id for m in batch if m.packet_id is not None)
        async with asyncio.timeout(_STEP_S):
            await done

    assert [m.payload for m in got] == sent
    assert all(not m.dup for m in got)
    qos1 = [m for m in got if m.qos == 1]
    assert pubacks == [(m.packet_id, m.payload) for m in qos1]
    reused = [m.packet_id for m in qos1].count(7)
    assert reused >= 100  # id 7 really was taken again and again (160 here: 1 in 3)


# --- more than the buffer in one read --------------------------------------------------------


@pytest.mark.parametrize(
    ("max_buffered", "max_buffered_bytes", "burst", "payload_size"),
    [
        pytest.param(20, 16 << 20, 300, 8, id="max_buffered"),  # 297 messages, 5 KB a write
        pytest.param(50_000, 20_000, 60, 1000, id="max_buffered_bytes"),  # 57 messages, 57 KB
    ],
)
async def test_one_read_past_the_buffer_bound_pauses_then_delivers_everything(
    max_buffered: int, max_buffered_bytes: int, burst: int, payload_size: int
) -> None:
    """A write of more than the bound pauses reading; all messages, later ones too, arrive once."""
    bursts, lead = 3, 3
    total = bursts * burst
    go = asyncio.Event()
    subs: list[MqttSubscriber] = []

    def messages(start: int, stop: int) -> bytes:
        return b"".join(
            wire.publish_packet(
                "t/burst", b"%05d" % n + b"." * (payload_size - 5), qos=1, packet_id=n + 1
            )
            for n in range(start, stop)
        )

    def parsed(n: int) -> Callable[[], bool]:
        return lambda: subs[0].packets_received >= n

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for b in range(bursts):
            # Each burst on cue: the first after subscribe() returned (a read that also
            # completes an awaited SUBACK never pauses), the others while reading is paused.
            await go.wait()
            go.clear()
            # A few messages below the bound, read on their own and left waiting untaken ...
            start = b * burst
            writer.write(messages(start, start + lead))
            # CONNACK, SUBACK, the earlier bursts, the lead
            await wait_until(parsed(2 + start + lead), timeout_s=_STEP_S, what="lead parsed")
            # ... then the rest of the burst, more than the bound, in one write.
            writer.write(messages(start + lead, start + burst))
            await writer.drain()
        ids = await _pubacks_until_disconnect(reader)
        assert ids == list(range(1, total + 1)), "each message acked once, in order"

    got: list[Message] = []
    async with _broker(script) as (port, done):
        async with contextlib.AsyncExitStack() as stack:
            sub = await _open(
                port, stack, max_buffered=max_buffered, max_buffered_bytes=max_buffered_bytes
            )
            subs.append(sub)
            go.set()
            for b in range(bursts):
                await wait_until(lambda: sub.reading_paused, timeout_s=_STEP_S, what="pause")
                if b + 1 < bursts:
                    before = sub.packets_received
                    go.set()  # the broker writes the next burst: it must wait in the socket
                    await asyncio.sleep(0.1)
                    assert sub.reading_paused
                    assert sub.packets_received == before, "read while paused"
                while len(got) < (b + 1) * burst:
                    batch = await _next(sub)
                    got.extend(batch)
                    sub.ack(m.packet_id for m in batch if m.packet_id is not None)
            assert not sub.reading_paused
        async with asyncio.timeout(_STEP_S):
            await done

    assert [m.packet_id for m in got] == list(range(1, total + 1))
    assert [m.payload[:5] for m in got] == [b"%05d" % n for n in range(total)]
    assert all(len(m.payload) == payload_size for m in got)


# --- a SUBACK and a backlog in one read -------------------------------------------------------


async def test_a_backlog_arriving_with_the_suback_pauses_reading_once_subscribed() -> None:
    """SUBACK plus more than max_buffered messages in one read: paused after subscribe()."""
    backlog = [b"b%03d" % i for i in range(100)]
    ready = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert (await wire.read_packet(reader))[0] == 0x10, "expected CONNECT"
        writer.write(wire.CONNACK_OK)
        subscribe = await wire.read_packet(reader)
        suback = wire.suback(int.from_bytes(subscribe[2:4], "big"), [1])
        writer.write(suback + b"".join(wire.publish_packet("t/b", p) for p in backlog))
        await ready.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server, contextlib.AsyncExitStack() as stack:
        sub = await _open(server.sockets[0].getsockname()[1], stack, max_buffered=20)
        assert sub.reading_paused is True
        got = await _next(sub)
        assert sub.reading_paused is False
        ready.set()
    assert [m.payload for m in got] == backlog
