"""A small, fast MQTT 3.1.1 subscriber for the collector's ingest path.

Why not aiomqtt here: paho (under aiomqtt) reads one packet per event-loop wakeup with several
``recv()`` calls, and acknowledges each QoS 1 message on receipt through
``call_soon_threadsafe`` and writer callbacks. That costs ~146 µs of CPU per 3.3 KB sample, and a
collector that crashes between receipt and its SQLite commit loses what it already acknowledged.

:class:`MqttSubscriber` is an :class:`asyncio.Protocol` adapter over one byte stream:

- every ``data_received`` chunk (up to 256 KiB) is parsed in one pass by :class:`PacketParser`
  into one list of :class:`Message`; a packet split across reads (anywhere, also inside the
  remaining-length field) waits in a list of chunks that is joined once it is complete;
- :meth:`MqttSubscriber.next_batch` hands over everything parsed so far, with no task or future
  per message;
- nothing is acknowledged on receipt: :meth:`MqttSubscriber.ack` writes the PUBACKs of a whole
  batch in one ``transport.write``, after the caller has committed it. Unacknowledged QoS 1
  messages of a persistent session are redelivered (``dup=True``) after a reconnect;
- more than ``max_buffered`` parsed-but-untaken messages (or ``max_buffered_bytes`` of their
  payloads) pause reading, so the broker sees TCP
  backpressure instead of the collector buffering without bound.

Supported: CONNECT (username/password, clean session flag, keepalive), TLS through an
``ssl.SSLContext``, SUBSCRIBE at QoS 0/1, UNSUBSCRIBE, PUBLISH QoS 0/1 from the broker,
retained PUBLISH at QoS 0 to the broker (:meth:`MqttSubscriber.publish_retained`: the
collector's watermarks), PINGREQ/PINGRESP, DISCONNECT. Not supported: QoS 1 publishing,
last wills, QoS 2 (a QoS 2 PUBLISH is a
protocol error), MQTT 5, websockets. Error tree (``CapwatchError`` is in :mod:`shared.errors`)::

    CapwatchError
    └── MqttWireError          anything below; a reconnect loop catches this
        ├── MqttConnectError   no session: TCP/TLS failed, timed out, or CONNACK refused
        │                      (``return_code``, None when the broker never answered)
        ├── MqttConnectionLost an established connection ended (or never answered a SUBSCRIBE)
        ├── MqttProtocolError  the broker sent bytes that are not valid MQTT 3.1.1 for us
        └── MqttSubscribeError the broker refused a topic filter (``refused``)
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Final, Self, cast

from collector.ingest.packets import (
    DISCONNECT,
    PINGREQ,
    PUBACK_HEADER,
    Message,
    PacketParser,
    encode_packet,
    encode_string,
)
from shared.errors import (
    MqttConnectError,
    MqttConnectionLost,
    MqttProtocolError,
    MqttSubscribeError,
    MqttWireError,
)

__all__ = [
    "Message",
    "MqttConnectError",
    "MqttConnectionLost",
    "MqttProtocolError",
    "MqttSubscribeError",
    "MqttSubscriber",
    "MqttWireError",
]

_CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad username or password",
    5: "not authorized",
}
_CLOSE_TIMEOUT_S: Final = 2.0
"""How long ``__aexit__`` lets the transport flush DISCONNECT before it aborts."""
_TIMER_SLACK_S: Final = 0.05
"""asyncio may run a timer this early; without slack the keepalive check would spin."""


class _Protocol(asyncio.Protocol):
    """Forwards the transport's callbacks to the subscriber that owns the connection."""

    __slots__ = ("_owner",)

    def __init__(self, owner: MqttSubscriber) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner._connection_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._owner._data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connection_lost(exc)


class MqttSubscriber:
    """An MQTT 3.1.1 subscriber that hands over messages in batches and acks after commit.

    Use as an async context manager; one connection per ``async with`` (reconnect with an outer
    loop)::

        async with MqttSubscriber(host, port, client_id="collector") as sub:
            await sub.subscribe([("capwatch/+/sample", 1)])
            while True:
                batch = await sub.next_batch()
                store(batch)  # commit first ...
                sub.ack(m.packet_id for m in batch if m.packet_id is not None)  # ... then ack

    ``keepalive_s`` (0 disables it): a PINGREQ goes out when nothing was sent for half of it,
    and 1.5 × keepalive without any packet from the broker counts as a lost connection (not
    while reading is paused for backpressure). ``connect_timeout_s`` bounds the TCP/TLS
    connect plus CONNACK, and each SUBACK. ``max_buffered`` parsed messages (or
    ``max_buffered_bytes`` of payload) not yet taken by
    :meth:`next_batch` pause reading from the socket (the bound is approximate: a read of up
    to 256 KiB is parsed whole).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        clean_session: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = 10.0,
        max_buffered: int = 50_000,
        max_buffered_bytes: int = 16 << 20,
    ) -> None:
        if not 0 <= keepalive_s <= 0xFFFF:
            raise ValueError(f"keepalive_s must be 0..65535 seconds, not {keepalive_s}")
        if password is not None and username is None:
            raise ValueError("MQTT 3.1.1 sends a password only together with a username")
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be at least 1, not {max_buffered}")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.clean_session = clean_session
        self.connect_timeout_s = connect_timeout_s
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self._username = username
        self._password = password
        self._ssl_context = ssl_context
        self.session_present = False
        """Whether the broker resumed a stored session (CONNACK flag) on the last connect."""
        self.bytes_received = 0
        """Bytes read from the broker, over every connection of this object."""
        self._parser = PacketParser(self._on_control)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[tuple[bool, int]] | None = None
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._ready: list[Message] = []
        self._ready_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: MqttWireError | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._last_packet_id = 0

    @property
    def packets_received(self) -> int:
        """Complete MQTT packets read from the broker, over every connection of this object."""
        return self._parser.packets

    @property
    def closed(self) -> bool:
        """Whether this connection has ended (or was never opened)."""
        return self._error is not None or self._transport is None

    @property
    def reading_paused(self) -> bool:
        """Whether reading is paused because ``max_buffered`` messages (or bytes) wait."""
        return self._paused

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Connect (TCP, TLS if configured), send CONNECT and wait for CONNACK."""
        if self._transport is not None:
            raise RuntimeError("MqttSubscriber is already connected")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._parser.reset()
        self._ready = []
        self._ready_bytes = 0
        self._error = None
        self._paused = False
        self._subacks.clear()
        self._closed = None
        self._connack = loop.create_future()
        tls = self._ssl_context
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(
                    lambda: _Protocol(self),
                    self.host,
                    self.port,
                    ssl=tls,
                    server_hostname=self.host if tls is not None else None,
                )
                self._write(self._connect_packet())
                session_present, code = await self._connack
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            await self._abort()
            raise MqttConnectError(
                f"no MQTT connection to {self._where} within {self.connect_timeout_s:g} s"
            ) from exc
        except OSError as exc:  # ssl.SSLError included
            await self._abort()
            raise MqttConnectError(f"cannot connect to MQTT broker {self._where}: {exc}") from exc
        except MqttWireError as exc:
            await self._abort()
            raise MqttConnectError(
                f"MQTT handshake with {self._where} failed: {exc}", return_code=None
            ) from exc
        except BaseException:
            self._abort_now()
            raise
        if code:
            await self._abort()
            reason = _CONNACK_REASONS.get(code, "unknown reason")
            raise MqttConnectError(
                f"MQTT broker {self._where} refused client {self.client_id!r}: {reason} "
                f"(CONNACK return code {code})",
                return_code=code,
            )
        self.session_present = session_present
        if self.keepalive_s:
            self._timer = loop.call_later(self.keepalive_s / 2, self._keepalive)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Send DISCONNECT (the broker then publishes no will) and close; safe after a loss."""
        transport = self._transport
        if transport is not None and self._error is None and not transport.is_closing():
            transport.write(DISCONNECT)
            self._error = MqttConnectionLost(f"subscriber for {self._where} was closed")
            transport.close()  # flushes the DISCONNECT first
        await self._abort(grace_s=_CLOSE_TIMEOUT_S)

    async def _abort(self, grace_s: float = 0.0) -> None:
        """Close the transport (after ``grace_s`` to flush) and wait until it is gone."""
        closed = self._closed
        try:
            if closed is not None and not closed.done() and grace_s:
                try:
                    async with asyncio.timeout(grace_s):
                        await asyncio.shield(closed)
                except TimeoutError:
                    pass
            self._abort_now()
            if closed is not None and not closed.done():
                # abort() reports connection_lost on the next loop iteration; waiting for it
                # closes the socket now, not in a garbage-collected transport.
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await asyncio.shield(closed)
        except BaseException:
            self._abort_now()
            raise

    def _abort_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()

    # --- public operations ----------------------------------------------------------------

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> list[int]:
        """Subscribe to ``(topic filter, qos)`` pairs (qos 0 or 1); return the granted QoS.

        Raises :class:`MqttSubscribeError` if the broker refuses any filter, and
        :class:`MqttConnectionLost` (closing the connection) if no SUBACK comes within
        ``connect_timeout_s``.
        """
        if not topics:
            raise ValueError("subscribe() needs at least one (topic filter, qos) pair")
        body = bytearray()
        for topic, qos in topics:
            if qos not in (0, 1):
                raise ValueError(f"QoS {qos} for {topic!r}: this subscriber supports 0 and 1")
            if not topic:
                raise ValueError("an MQTT topic filter cannot be empty")
            body += encode_string(topic, f"topic filter {topic[:40]!r}")
            body.append(qos)
        codes = await self._request(0x82, bytes(body), "SUBACK")
        if len(codes) != len(topics) or any(c not in (0, 1, 0x80) for c in codes):
            raise MqttProtocolError(
                f"SUBACK from {self._where} has return codes {codes} for {len(topics)} filters"
            )
        refused = [topic for (topic, _), code in zip(topics, codes, strict=True) if code == 0x80]
        if refused:
            raise MqttSubscribeError(
                f"MQTT broker {self._where} refused subscription to {', '.join(refused)} "
                "(check the broker's ACL for this user)",
                refused=refused,
            )
        return codes

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Remove topic filters from the session; wait for the broker's UNSUBACK.

        Raises :class:`MqttConnectionLost` (closing the connection) if no UNSUBACK comes within
        ``connect_timeout_s``.
        """
        if not topics:
            raise ValueError("unsubscribe() needs at least one topic filter")
        body = b"".join(encode_string(t, f"topic filter {t[:40]!r}") for t in topics)
        await self._request(0xA2, body, "UNSUBACK")

    async def next_batch(self) -> list[Message]:
        """All messages parsed so far (at least one), in arrival order; waits if none.

        Once the connection has ended and every parsed message was returned, raises
        :class:`MqttConnectionLost` (or :class:`MqttProtocolError` if the broker sent garbage).
        """
        while not self._ready:
            if self._error is not None:
                raise self._error.with_traceback(None)
            loop, _ = self._require_open()
            if self._waiter is not None:
                raise RuntimeError("next_batch() is already being awaited by another task")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        batch = self._ready
        self._ready = []
        self._ready_bytes = 0
        if self._paused and self._transport is not None and self._error is None:
            self._paused = False
            self._last_rx = cast(asyncio.AbstractEventLoop, self._loop).time()
            self._transport.resume_reading()
        return batch

    async def batches(self) -> AsyncIterator[list[Message]]:
        """:meth:`next_batch` forever, as an async iterator; ends by raising like it."""
        while True:
            yield await self.next_batch()

    def ack(self, packet_ids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages by packet id: all PUBACKs in one write, in given order.

        Call after the messages are safely stored; an empty iterable writes nothing. Raises
        :class:`MqttConnectionLost` if the connection has ended (the broker then redelivers the
        messages to the next connection of a persistent session).
        """
        ids = packet_ids if isinstance(packet_ids, list) else list(packet_ids)
        if not ids:
            return
        if self._error is not None:
            raise self._error.with_traceback(None)
        if min(ids) < 1 or max(ids) > 0xFFFF:
            raise ValueError(f"MQTT packet ids are 1..65535, got {min(ids)}..{max(ids)}")
        self._write(struct.pack(f">{len(ids)}I", *[PUBACK_HEADER | i for i in ids]))

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(topic, payload)`` pairs retained at QoS 0, all in one write.

        QoS 0: nothing to wait for, and a message lost with the connection is replaced by
        the next one on its topic (the caller publishes again what changes). Raises
        :class:`MqttConnectionLost` if the connection has ended.
        """
        if not messages:
            return
        if self._error is not None:
            raise self._error.with_traceback(None)
        self._write(
            b"".join(
                encode_packet(0x31, encode_string(topic, "topic") + payload)
                for topic, payload in messages
            )
        )

    # --- internals ------------------------------------------------------------------------

    async def _request(self, first: int, body: bytes, answer: str) -> list[int]:
        """Send SUBSCRIBE or UNSUBSCRIBE with the next packet id; return the answer's codes."""
        loop, _ = self._require_open()
        packet_id = self._next_packet_id()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._subacks[packet_id] = future
        self._write(encode_packet(first, packet_id.to_bytes(2, "big") + body))
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await future
        except TimeoutError:
            error = MqttConnectionLost(
                f"no {answer} from {self._where} within {self.connect_timeout_s:g} s; "
                "connection closed"
            )
            self._fail(error)
            raise error from None
        finally:
            self._subacks.pop(packet_id, None)
            self._pause_if_full()  # what arrived with the answer may be past the bound

    def _require_open(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Transport]:
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._loop is None or self._transport is None:
            raise RuntimeError("MqttSubscriber is not connected: use `async with` first")
        return self._loop, self._transport

    def _write(self, data: bytes) -> None:
        _, transport = self._require_open()
        transport.write(data)
        self._last_tx = cast(asyncio.AbstractEventLoop, self._loop).time()

    def _next_packet_id(self) -> int:
        packet_id = self._last_packet_id
        while True:
            packet_id = packet_id % 0xFFFF + 1
            if packet_id not in self._subacks:
                self._last_packet_id = packet_id
                return packet_id

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self.clean_session else 0x00
        payload = encode_string(self.client_id, "client_id")
        if self._username is not None:
            flags |= 0x80
            payload += encode_string(self._username, "username")
        if self._password is not None:
            flags |= 0x40
            payload += encode_string(self._password, "password")
        header = b"\x00\x04MQTT\x04" + bytes((flags,)) + self.keepalive_s.to_bytes(2, "big")
        return encode_packet(0x10, header + payload)

    def _fail(self, error: MqttWireError) -> None:
        """Record why the connection ends, wake the reader, drop the connection."""
        if self._error is None:
            self._error = error
        self._wake()
        if self._transport is not None:
            self._transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _keepalive(self) -> None:
        self._timer = None
        loop, transport = self._loop, self._transport
        if loop is None or transport is None or self._error is not None:
            return
        now = loop.time()
        half = self.keepalive_s / 2
        limit = self.keepalive_s * 1.5
        if self._paused:
            self._last_rx = now  # the broker's silence is our own doing
        elif now - self._last_rx >= limit:
            self._fail(
                MqttConnectionLost(
                    f"no packet from MQTT broker {self._where} for {now - self._last_rx:.1f} s "
                    f"(keepalive {self.keepalive_s} s)"
                )
            )
            return
        if now - self._last_tx >= half - _TIMER_SLACK_S:
            transport.write(PINGREQ)
            self._last_tx = now
        due = min(self._last_tx + half, self._last_rx + limit)
        self._timer = loop.call_at(max(due, now + _TIMER_SLACK_S), self._keepalive)

    # --- transport callbacks (through _Protocol) -------------------------------------------

    def _connection_made(self, transport: asyncio.Transport) -> None:
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        self._transport = transport
        self._closed = loop.create_future()
        self._last_rx = self._last_tx = loop.time()

    def _data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self.bytes_received += len(data)
        self._last_rx = cast(asyncio.AbstractEventLoop, self._loop).time()
        batch: list[Message] = []
        try:
            self._parser.feed(data, batch)
        except MqttProtocolError as exc:
            self._fail(exc)  # the messages before the bad packet are still handed over
        if batch:
            if self._ready:
                self._ready.extend(batch)
            else:
                self._ready = batch
            self._ready_bytes += sum([len(m[1]) for m in batch])
            self._wake()
            self._pause_if_full()

    def _pause_if_full(self) -> None:
        """Pause reading past ``max_buffered`` messages or ``max_buffered_bytes``.

        Never while a SUBACK is awaited: a broker resuming a persistent session sends queued
        messages before the SUBACK, which would then never be read. The check runs again
        when the last awaited answer has arrived (:meth:`_request`).
        """
        if (
            (len(self._ready) > self.max_buffered or self._ready_bytes > self.max_buffered_bytes)
            and not self._paused
            and not self._subacks
            and self._error is None
            and self._transport is not None
        ):
            self._paused = True
            self._transport.pause_reading()

    def _on_control(self, first: int, body: bytes) -> None:
        if first == 0xD0 and not body:  # PINGRESP
            return
        if first == 0x90 and len(body) >= 3:  # SUBACK
            future = self._subacks.get((body[0] << 8) | body[1])
            # A SUBACK for a subscribe() that timed out is no longer awaited: ignore it.
            if future is not None and not future.done():
                future.set_result(list(body[2:]))
            return
        if first == 0xB0 and len(body) == 2:  # UNSUBACK: no return codes in 3.1.1
            future = self._subacks.get((body[0] << 8) | body[1])
            if future is not None and not future.done():
                future.set_result([])
            return
        connack = self._connack
        if first == 0x20 and len(body) == 2 and connack is not None and not connack.done():
            if body[0] & 0xFE:
                raise MqttProtocolError(f"malformed CONNACK from broker: flags {body[0]:#04x}")
            connack.set_result((bool(body[0] & 1), body[1]))
            return
        raise MqttProtocolError(
            f"unexpected packet from MQTT broker: type {first >> 4}, flags {first & 0xF:#x}, "
            f"{len(body)} bytes"
        )

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            if exc is None:
                error = MqttConnectionLost(f"MQTT broker {self._where} closed the connection")
            else:
                error = MqttConnectionLost(f"connection to MQTT broker {self._where} lost: {exc}")
                error.__cause__ = exc
            self._error = error
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        # Whoever awaits a handshake answer learns why it will not come.
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(self._error)
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(self._error)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
