"""MQTT 3.1.1 bytes for tests, written from the spec independently of the module under test.

Nothing here imports :mod:`collector.ingest.packets` encoders: a test that encoded its input
with the code it checks could not see that code's mistakes. (The same two encoders were first
written in ``test_subscriber.py``; this is the copy the newer tests share.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

PINGRESP = b"\xd0\x00"
CONNACK_OK = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"


def remaining_length(n: int) -> bytes:
    """The variable-length Remaining Length field: 7 bits a byte, least significant first."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    """Any packet: fixed header byte, remaining length, body."""
    return bytes((first,)) + remaining_length(len(body)) + body


def publish_packet(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """A broker-to-client PUBLISH (``qos`` and ``packet_id`` are written as given, even 0/2/3)."""
    raw_topic = topic.encode()
    body = len(raw_topic).to_bytes(2, "big") + raw_topic
    if qos:
        assert packet_id is not None
        body += packet_id.to_bytes(2, "big")
    body += payload
    return packet(0x30 | (dup << 3) | (qos << 1) | retain, body)


def suback(packet_id: int, codes: Sequence[int]) -> bytes:
    """A SUBACK: the SUBSCRIBE's packet id, one return code per filter."""
    return packet(0x90, packet_id.to_bytes(2, "big") + bytes(codes))


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT packet (fixed header included) sent by the client."""
    header = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        header += bytes((byte,))
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return header + await reader.readexactly(length)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What a scripted broker does after the handshake, with the client's streams."""


@contextlib.asynccontextmanager
async def scripted_broker(
    script: Script, *, connack: bytes = CONNACK_OK
) -> AsyncIterator[tuple[int, asyncio.Future[None]]]:
    """A loopback server that answers CONNECT with ``connack``, then runs ``script``.

    Yields (port, a future done when the script is, with its exception if it failed).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert (await read_packet(reader))[0] == 0x10, "expected CONNECT"
            writer.write(connack)
            await script(reader, writer)
        except Exception as exc:  # reported to the test through ``done``
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(None)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], done
