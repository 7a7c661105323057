"""Subscriber benchmark: CPU per message of the collector's MQTT subscriber alone.

A child process plays the broker on a loopback port: it answers CONNECT and then writes
``--messages`` QoS 1 PUBLISH packets of ``--payload`` bytes as fast as the socket takes them
(and reads the PUBACKs). The parent runs :class:`MqttSubscriber`, takes every batch and
acknowledges it, and prints its own CPU time per message (``time.process_time``: the
broker's CPU is not counted) over ``--repeat`` runs.

Usage: ``.venv/bin/python bench/bench_subscriber.py [--messages 200000] [--payload 3300]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import threading
import time

from collector.ingest.subscriber import MqttSubscriber


def _publish(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + payload
    n, length = len(body), bytearray()
    while True:
        n, byte = divmod(n, 128)
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x32" + bytes(length) + body


def _broker(listener: socket.socket, messages: int, payload_bytes: int) -> None:
    conn, _ = listener.accept()
    conn.recv(65536)  # CONNECT
    conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, no session
    payload = bytes(payload_bytes)
    chunk = b"".join(
        _publish(b"capwatch/v1/nodes/n%05d/sample" % (i % 12_500), payload, i % 0xFFFF + 1)
        for i in range(1000)
    )
    drain = threading.Thread(target=lambda: _drain(conn), daemon=True)
    drain.start()
    for _ in range(messages // 1000):
        conn.sendall(chunk)
    drain.join(timeout=60)
    conn.close()


def _drain(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


async def _subscribe(port: int, messages: int) -> tuple[float, float]:
    async with MqttSubscriber("127.0.0.1", port, client_id="bench", keepalive_s=0) as sub:
        got = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while got < messages:
            batch = await sub.next_batch()
            got += len(batch)
            sub.ack([m.packet_id for m in batch if m.packet_id is not None])
        return time.process_time() - cpu0, time.perf_counter() - wall0


def once(messages: int, payload_bytes: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the subscriber for ``messages``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = multiprocessing.get_context("fork").Process(
        target=_broker, args=(listener, messages, payload_bytes)
    )
    child.start()
    listener.close()
    try:
        return asyncio.run(_subscribe(port, messages))
    finally:
        child.join(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--payload", type=int, default=3300, help="bytes per message")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    messages = args.messages // 1000 * 1000
    us = []
    for _ in range(args.repeat):
        cpu, wall = once(messages, args.payload)
        us.append(cpu / messages * 1e6)
        print(f"{messages} messages: {us[-1]:.2f} us CPU/message, {messages / wall:,.0f} msg/s")
    print(
        json.dumps(
            {
                "messages": messages,
                "payload_bytes": args.payload,
                "us_cpu_per_message": {
                    "min": round(min(us), 2),
                    "median": round(statistics.median(us), 2),
                    "max": round(max(us), 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
