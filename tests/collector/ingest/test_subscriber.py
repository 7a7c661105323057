"""The collector's own MQTT subscriber: parsing, delivery, ack-after-commit, sessions, failures.

Broker behaviour is tested against the real Mosquitto of the ``mosquitto`` fixture; what
Mosquitto never does (malformed packets, silence, refused subscriptions) against a scripted
loopback server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable

import aiomqtt
import pytest

from collector.ingest.packets import PacketParser
from collector.ingest.subscriber import (
    Message,
    MqttConnectError,
    MqttConnectionLost,
    MqttProtocolError,
    MqttSubscribeError,
    MqttSubscriber,
    MqttWireError,
)
from collector.localbroker import BrokerProcess, MosquittoBroker, free_port
from tests.collector.ingest import wire
from tests.collector.ingest.wire import publish_packet
from tests.helpers import wait_until

_STEP_S = 10.0
"""Bound of one network wait (connect, publish, next batch)."""


# --- helpers ------------------------------------------------------------------------------


def _subscriber(
    broker: MosquittoBroker,
    client_id: str = "sub",
    *,
    clean_session: bool = False,
    keepalive_s: int = 30,
    max_buffered: int = 50_000,
    max_buffered_bytes: int = 16 << 20,
) -> MqttSubscriber:
    return MqttSubscriber(
        broker.host,
        broker.port,
        client_id=client_id,
        clean_session=clean_session,
        keepalive_s=keepalive_s,
        max_buffered=max_buffered,
        max_buffered_bytes=max_buffered_bytes,
        connect_timeout_s=_STEP_S,
    )


async def _connect(sub: MqttSubscriber, stack: contextlib.AsyncExitStack) -> MqttSubscriber:
    async with asyncio.timeout(_STEP_S):
        return await stack.enter_async_context(sub)


async def _subscribe(sub: MqttSubscriber, topic: str = "t/#", qos: int = 1) -> list[int]:
    async with asyncio.timeout(_STEP_S):
        return await sub.subscribe([(topic, qos)])


async def _next(sub: MqttSubscriber) -> list[Message]:
    async with asyncio.timeout(_STEP_S):
        return await sub.next_batch()


async def _collect(sub: MqttSubscriber, n: int, *, ack: bool = True) -> list[Message]:
    """Take batches until ``n`` messages arrived, acking each batch (as after a commit)."""
    got: list[Message] = []
    while len(got) < n:
        batch = await _next(sub)
        got.extend(batch)
        if ack:
            sub.ack(m.packet_id for m in batch if m.packet_id is not None)
    return got


async def _publish(
    broker: MosquittoBroker,
    messages: list[tuple[str, bytes]],
    *,
    qos: int = 1,
    retain: bool = False,
) -> None:
    """Publish in order; QoS 1 publishes overlap (paho sends them in call order)."""
    async with (
        asyncio.timeout(60),
        aiomqtt.Client(
            broker.host, broker.port, identifier="pub", timeout=_STEP_S, max_inflight_messages=200
        ) as client,
    ):
        client.pending_calls_threshold = 1000  # overlapping publishes are the point here
        for start in range(0, len(messages), 200):
            await asyncio.gather(
                *(
                    client.publish(topic, payload, qos=qos, retain=retain)
                    for topic, payload in messages[start : start + 200]
                )
            )


# --- a scripted broker for what Mosquitto never does ---------------------------------------


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and discard until the client closes the connection."""
    with contextlib.suppress(ConnectionResetError):
        while await reader.read(65536):
            pass


async def _drain_script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _drain(reader)


@contextlib.asynccontextmanager
async def _scripted_broker(
    script: wire.Script, *, connack: bytes = wire.CONNACK_OK
) -> AsyncIterator[tuple[int, asyncio.Future[None]]]:
    """:func:`wire.scripted_broker`, and at exit the script must have ended well."""
    async with wire.scripted_broker(script, connack=connack) as (port, done):
        yield port, done
        async with asyncio.timeout(_STEP_S):
            await done


# --- parser, without a broker ---------------------------------------------------------------

_STREAM_MESSAGES = [
    Message("t/a", b"", 0, None, False, False),
    Message("t/b", b'{"seq":1}', 1, 1, False, False),
    Message("t/ü/c", bytes(range(256)) * 80, 1, 65535, True, True),  # 3-byte remaining length
    Message("t/d", b"x" * 200, 0, None, True, False),  # 2-byte remaining length
]


def _stream(messages: list[Message]) -> bytes:
    return b"".join(
        publish_packet(
            m.topic, m.payload, qos=m.qos, packet_id=m.packet_id, retain=m.retain, dup=m.dup
        )
        for m in messages
    )


def _parse_in_chunks(
    data: bytes, sizes: Callable[[], int]
) -> tuple[list[Message], list[tuple[int, bytes]]]:
    controls: list[tuple[int, bytes]] = []
    parser = PacketParser(lambda first, body: controls.append((first, body)))
    out: list[Message] = []
    pos = 0
    while pos < len(data):
        step = sizes()
        parser.feed(data[pos : pos + step], out)
        pos += step
    return out, controls


def test_parser_decodes_stream_fed_one_byte_at_a_time() -> None:
    """Packets split at every byte, remaining-length field included, decode unchanged."""
    pingresp, suback = b"\xd0\x00", b"\x90\x03\x00\x07\x01"
    data = _stream(_STREAM_MESSAGES[:2]) + pingresp + _stream(_STREAM_MESSAGES[2:]) + suback
    out, controls = _parse_in_chunks(data, lambda: 1)
    assert out == _STREAM_MESSAGES
    assert controls == [(0xD0, b""), (0x90, b"\x00\x07\x01")]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_parser_decodes_stream_fed_in_random_chunks(seed: int) -> None:
    """Random read sizes, several packets per read, a 4-byte remaining length: same messages."""
    rng = random.Random(seed)
    messages = [
        Message(
            f"node/{i}/sample",
            rng.randbytes(rng.randrange(0, 5000)),
            i % 2,
            i % 2 * i or None,
            False,
            False,
        )
        for i in range(1, 300)
    ]
    messages.insert(150, Message("big", rng.randbytes(2_200_000), 1, 9, False, False))
    data = _stream(messages)
    out, controls = _parse_in_chunks(data, lambda: rng.choice([1, 2, 7, 100, 4096, 65536, 262144]))
    assert out == messages
    assert controls == []


def test_parser_decodes_many_packets_from_one_read() -> None:
    """One read holding 1000 packets yields 1000 messages; packets counts them."""
    messages = [Message("t", str(i).encode(), 1, i, False, False) for i in range(1, 1001)]
    parser = PacketParser(lambda first, body: None)
    out: list[Message] = []
    parser.feed(_stream(messages), out)
    assert out == messages
    assert parser.packets == 1000


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "remaining length longer than 4 bytes"),
        (b"\x32\x04\x00\x01t\x00", "malformed PUBLISH"),  # no room for the packet id
        (b"\x34\x06\x00\x01t\x00\x01x", "QoS 2"),
        (b"\x30\x03\x00\x05t", "malformed PUBLISH"),  # topic longer than the packet
        (b"\x30\x01\x00", "malformed PUBLISH"),  # no room for the topic length
        (b"\x32\x05\x00\x01t\x00\x00", "packet id 0"),
    ],
)
def test_parser_rejects_malformed_packets(data: bytes, match: str) -> None:
    """Malformed input raises MqttProtocolError, fed whole or byte by byte."""
    with pytest.raises(MqttProtocolError, match=match):
        PacketParser(lambda first, body: None).feed(data, [])
    with pytest.raises(MqttProtocolError, match=match):
        _parse_in_chunks(data, lambda: 1)


def test_parser_passes_a_non_utf8_topic_on_for_the_ingestor_to_reject() -> None:
    """A topic that is not UTF-8 is one bad message (replacement characters), not a dead link."""
    out: list[Message] = []
    PacketParser(lambda first, body: None).feed(b"\x32\x08\x00\x02\xff\xfe\x00\x07ok", out)
    assert out == [Message("\ufffd\ufffd", b"ok", 1, 7, False, False)]


def test_parser_keeps_messages_before_a_malformed_packet() -> None:
    """Messages decoded before the bad packet of the same read are in ``out``."""
    good = Message("t", b"ok", 1, 3, False, False)
    out: list[Message] = []
    with pytest.raises(MqttProtocolError):
        PacketParser(lambda first, body: None).feed(_stream([good]) + b"\x30\xff\xff\xff\xff", out)
    assert out == [good]


# --- against Mosquitto -----------------------------------------------------------------------


async def test_receives_qos1_qos0_and_retained_messages(mosquitto: MosquittoBroker) -> None:
    """Topic, payload, QoS, packet id and retain arrive as published; retained ones say so."""
    await _publish(mosquitto, [("t/retained", b"kept")], retain=True)
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, clean_session=True), stack)
        assert sub.session_present is False
        assert await _subscribe(sub) == [1]
        retained = await _collect(sub, 1)
        await _publish(mosquitto, [("t/one", b"q1")], qos=1)
        await _publish(mosquitto, [("t/zero", b"q0")], qos=0)
        live = await _collect(sub, 2)
    assert [(m.topic, m.payload, m.qos, m.retain, m.dup) for m in retained] == [
        ("t/retained", b"kept", 1, True, False)
    ]
    assert [(m.topic, m.payload, m.qos, m.retain, m.dup) for m in live] == [
        ("t/one", b"q1", 1, False, False),
        ("t/zero", b"q0", 0, False, False),
    ]
    assert live[0].packet_id is not None
    assert live[0].packet_id >= 1
    assert live[1].packet_id is None
    assert sub.packets_received >= 5  # CONNACK, SUBACK, three PUBLISH


async def test_unacked_messages_are_redelivered_with_dup(mosquitto: MosquittoBroker) -> None:
    """After a reconnect, only the QoS 1 messages not acked come again, flagged dup."""
    sent = [(f"t/{i}", f"m{i}".encode()) for i in range(6)]
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, "collector"), stack)
        await _subscribe(sub)
        await _publish(mosquitto, sent)
        first = await _collect(sub, 6, ack=False)
        sub.ack(m.packet_id for m in first[::2] if m.packet_id is not None)
        # Mosquitto 2.0.11 now and then ignores a PUBACK that arrives right before the
        # DISCONNECT (the message then comes again: a harmless duplicate for the collector).
        # The broker handles a client's packets in order: its SUBACK to a later SUBSCRIBE
        # shows the PUBACKs were processed, so this test checks our acks, not that race.
        await sub.subscribe([("sync/acks-processed", 0)])
    assert [m.payload for m in first] == [p for _, p in sent]
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, "collector"), stack)
        assert sub.session_present is True
        again = await _collect(sub, 3)
        with pytest.raises(TimeoutError):  # nothing else is owed
            async with asyncio.timeout(1.0):
                await sub.next_batch()
    assert [(m.topic, m.payload, m.dup) for m in again] == [
        ("t/1", b"m1", True),
        ("t/3", b"m3", True),
        ("t/5", b"m5", True),
    ]


async def test_persistent_session_keeps_messages_published_while_away(
    mosquitto: MosquittoBroker,
) -> None:
    """Messages published while the subscriber is gone arrive after it reconnects."""
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, "collector"), stack)
        assert sub.session_present is False
        await _subscribe(sub)
    await _publish(mosquitto, [(f"t/{i}", f"away{i}".encode()) for i in range(3)])
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, "collector"), stack)
        assert sub.session_present is True
        got = await _collect(sub, 3)
    assert [(m.payload, m.qos, m.dup) for m in got] == [
        (b"away0", 1, False),
        (b"away1", 1, False),
        (b"away2", 1, False),
    ]


async def test_resubscribing_a_session_with_a_big_backlog_gets_its_suback(
    mosquitto: MosquittoBroker,
) -> None:
    """A resumed session floods queued messages before the SUBACK; reading must not pause
    on them (max_buffered) or the SUBACK is never read and subscribe() times out."""
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, "backlog"), stack)
        await _subscribe(sub)
    sent = [("t/backlog", b"%04d" % i + b"." * 500) for i in range(600)]
    await _publish(mosquitto, sent)
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, "backlog", max_buffered=50), stack)
        assert sub.session_present is True
        assert await _subscribe(sub) == [1]
        got = await _collect(sub, len(sent))
    assert [m.payload for m in got] == [p for _, p in sent]


async def test_large_payload_and_many_small_messages_arrive_in_order(
    mosquitto: MosquittoBroker,
) -> None:
    """A 300 KB payload (3-byte remaining length) and 10,000 small messages arrive whole, in
    order, when each batch is acked as it is taken."""
    big = os.urandom(300_000)
    small = [("t/small", b"%05d" % i) for i in range(10_000)]
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto), stack)
        await _subscribe(sub)
        await _publish(mosquitto, [("t/big", big)])
        got_big = await _collect(sub, 1)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_publish(mosquitto, small), name="publisher")
            got_small = await _collect(sub, len(small))
    assert [(m.topic, m.payload) for m in got_big] == [("t/big", big)]
    assert [m.payload for m in got_small] == [p for _, p in small]
    assert sub.bytes_received > 300_000 + 10_000 * 16


async def test_backpressure_pauses_reading_without_losing_messages(
    mosquitto: MosquittoBroker,
) -> None:
    """Past max_buffered untaken messages reading pauses; taking them resumes it, none lost."""
    sent = [("t/bp", b"%04d" % i + b"." * 1000) for i in range(2000)]
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, max_buffered=50), stack)
        await _subscribe(sub, qos=0)
        await _publish(mosquitto, sent, qos=0)
        await wait_until(lambda: sub.reading_paused, timeout_s=_STEP_S, what="reading paused")
        got = await _collect(sub, len(sent))
        assert sub.reading_paused is False
    assert [m.payload for m in got] == [p for _, p in sent]


async def test_reading_pauses_on_buffered_bytes_too(mosquitto: MosquittoBroker) -> None:
    """Few but large messages pause reading past max_buffered_bytes: memory stays bounded."""
    sent = [("t/big", b"%02d" % i + b"x" * 200_000) for i in range(20)]  # 4 MB
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(
            _subscriber(mosquitto, max_buffered=50_000, max_buffered_bytes=500_000), stack
        )
        await _subscribe(sub, qos=0)
        await _publish(mosquitto, sent, qos=0)
        await wait_until(lambda: sub.reading_paused, timeout_s=_STEP_S, what="reading paused")
        got = await _collect(sub, len(sent))
    assert [m.payload for m in got] == [p for _, p in sent]


async def test_refused_connect_carries_return_code(mosquitto: MosquittoBroker) -> None:
    """An empty client id with a persistent session is refused: 'identifier rejected', code 2."""
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(MqttConnectError, match="identifier rejected") as caught:
            await _connect(_subscriber(mosquitto, ""), stack)
    assert caught.value.return_code == 2


async def test_nothing_listening_raises_connect_error() -> None:
    """A closed port gives MqttConnectError naming the address, with no return code."""
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(
            MqttConnectError, match=f"cannot connect to MQTT broker 127.0.0.1:{port}"
        ) as caught:
            await _connect(MqttSubscriber("127.0.0.1", port, client_id="sub"), stack)
    assert isinstance(caught.value, MqttWireError)
    assert caught.value.return_code is None
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_broker_stop_raises_connection_lost_after_parsed_messages(
    mosquitto: MosquittoBroker,
) -> None:
    """Stopping the broker mid-stream ends next_batch with MqttConnectionLost; exit is clean."""
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto), stack)
        await _subscribe(sub)
        await _publish(mosquitto, [("t/x", b"before")])
        got = await _collect(sub, 1)
        await asyncio.to_thread(mosquitto.stop)
        with pytest.raises(MqttConnectionLost, match=r"closed the connection|lost"):
            await _next(sub)
        with pytest.raises(MqttConnectionLost):  # and stays so
            sub.ack([1])
    assert [m.payload for m in got] == [b"before"]


async def test_keepalive_keeps_idle_connection_alive(mosquitto: MosquittoBroker) -> None:
    """With keepalive 2 s, 5 s of silence neither drops the connection nor stops delivery."""
    async with contextlib.AsyncExitStack() as stack:
        sub = await _connect(_subscriber(mosquitto, keepalive_s=2), stack)
        await _subscribe(sub)
        before = sub.packets_received
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5.0):
                await sub.next_batch()
        pingresps = sub.packets_received - before
        await _publish(mosquitto, [("t/late", b"still here")])
        got = await _collect(sub, 1)
    assert pingresps >= 3  # one PINGREQ per second of silence, each answered
    assert [m.payload for m in got] == [b"still here"]


# --- against a scripted broker ---------------------------------------------------------------


async def test_silent_broker_is_detected_by_keepalive() -> None:
    """A broker that stops answering (no PINGRESP) is declared lost after 1.5 x keepalive."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain(reader)  # swallow PINGREQs until the client gives up

    async with _scripted_broker(silent) as (port, _), contextlib.AsyncExitStack() as stack:
        sub = await _connect(MqttSubscriber("127.0.0.1", port, client_id="s", keepalive_s=1), stack)
        with pytest.raises(
            MqttConnectionLost, match=r"no packet from MQTT broker .* \(keepalive 1 s\)"
        ):
            await _next(sub)


async def test_ack_sends_pubacks_after_the_fact_and_disconnect_on_exit() -> None:
    """Nothing is acked on receipt; ack() sends PUBACKs for the given ids; exit sends DISCONNECT."""
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            publish_packet("t/a", b"1", qos=1, packet_id=5)
            + publish_packet("t/b", b"2", qos=1, packet_id=7)
            + publish_packet("t/c", b"3")
        )
        while packet := await reader.read(4096):
            received.append(packet)

    async with _scripted_broker(script) as (port, done):
        async with contextlib.AsyncExitStack() as stack:
            sub = await _connect(MqttSubscriber("127.0.0.1", port, client_id="s"), stack)
            got = await _collect(sub, 3, ack=False)
            sub.ack([7, 5])
        async with asyncio.timeout(_STEP_S):
            await done
    assert [(m.topic, m.packet_id) for m in got] == [("t/a", 5), ("t/b", 7), ("t/c", None)]
    # Receipt alone acknowledged nothing: the first bytes the broker got are our acks.
    assert b"".join(received) == b"\x40\x02\x00\x07" + b"\x40\x02\x00\x05" + b"\xe0\x00"


async def test_qos2_publish_is_a_protocol_error_after_earlier_messages() -> None:
    """A QoS 2 PUBLISH closes the connection with MqttProtocolError; earlier ones still arrive."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            publish_packet("t/ok", b"fine", qos=1, packet_id=1)
            + publish_packet("t/bad", b"qos2", qos=2, packet_id=2)
        )
        await _drain(reader)

    async with _scripted_broker(script) as (port, _), contextlib.AsyncExitStack() as stack:
        sub = await _connect(MqttSubscriber("127.0.0.1", port, client_id="s"), stack)
        got = await _next(sub)
        with pytest.raises(MqttProtocolError, match="QoS 2"):
            await _next(sub)
    assert [m.payload for m in got] == [b"fine"]


async def test_refused_subscription_raises_subscribe_error() -> None:
    """A SUBACK failure code (0x80) names the refused filter; granted QoS are returned else."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        packet = await wire.read_packet(reader)
        assert packet[0] == 0x82
        packet_id = packet[2:4]
        writer.write(b"\x90\x04" + packet_id + b"\x80\x01")
        packet = await wire.read_packet(reader)
        writer.write(b"\x90\x03" + packet[2:4] + b"\x00")
        await _drain(reader)

    async with _scripted_broker(script) as (port, _), contextlib.AsyncExitStack() as stack:
        sub = await _connect(MqttSubscriber("127.0.0.1", port, client_id="s"), stack)
        with pytest.raises(MqttSubscribeError, match="secret/#") as caught:
            async with asyncio.timeout(_STEP_S):
                await sub.subscribe([("secret/#", 1), ("t/#", 1)])
        assert caught.value.refused == ["secret/#"]
        assert await _subscribe(sub, "t/#", qos=0) == [0]


async def test_broker_closing_before_connack_is_a_connect_error() -> None:
    """A connection closed before CONNACK fails the connect with no return code."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with (
        _scripted_broker(hang_up, connack=b"") as (port, _),
        contextlib.AsyncExitStack() as stack,
    ):
        with pytest.raises(MqttConnectError, match=r"handshake .* closed the connection") as caught:
            await _connect(MqttSubscriber("127.0.0.1", port, client_id="s"), stack)
    assert caught.value.return_code is None


async def test_missing_connack_times_out_as_connect_error() -> None:
    """No CONNACK within connect_timeout_s is a connect error naming the timeout."""
    async with (
        _scripted_broker(_drain_script, connack=b"") as (port, _),
        contextlib.AsyncExitStack() as stack,
    ):
        sub = MqttSubscriber("127.0.0.1", port, client_id="s", connect_timeout_s=0.3)
        with pytest.raises(MqttConnectError, match=r"within 0\.3 s"):
            await _connect(sub, stack)


async def test_publish_retained_is_kept_by_every_broker_for_a_later_subscriber(
    broker: BrokerProcess,
) -> None:
    """Two retained QoS 0 messages published in one write on a subscriber's connection: a
    client subscribing afterwards gets both, flagged retained (Mosquitto, NATS, amqtt)."""
    messages = [("w/a", b'{"seq":1}'), ("w/b", b'{"seq":2}')]
    async with contextlib.AsyncExitStack() as stack:
        pub = MqttSubscriber(
            broker.host, broker.port, client_id="writer", clean_session=True,
            connect_timeout_s=_STEP_S,
        )  # fmt: skip
        await _connect(pub, stack)
        pub.publish_retained(messages)
        reader = MqttSubscriber(
            broker.host, broker.port, client_id="reader", clean_session=True,
            connect_timeout_s=_STEP_S,
        )  # fmt: skip
        await _connect(reader, stack)
        got: list[Message] = []

        async def retained_arrived() -> None:
            while len({m.topic for m in got}) < 2:
                await _subscribe(reader, "w/#", 0)  # again until the broker has them
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        got.extend(await reader.next_batch())

        async with asyncio.timeout(_STEP_S):
            await retained_arrived()
    assert {m.topic: (m.payload, m.retain) for m in got} == {t: (p, True) for t, p in messages}
