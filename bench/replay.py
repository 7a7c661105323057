"""A cheap load generator for the benches: each node's sample made once, sent again and again.

:func:`agent.simulate.publish_fleet` makes every sample (Python objects, then msgspec) and
publishes it through aiomqtt: ~110 us of its process's CPU a message (``--measure`` below), so
on a 2-core machine beside the broker and the collector it offers ~3,600 samples/s, not the
10,000 that issue 14's stall target is stated at. Here each node's sample is made and encoded
once, with a placeholder time and sequence number; a send joins its pieces around the time now
and the node's next ``seq`` (so a sample is still taken when it is sent, and each node's
``seq`` runs on in one epoch, as an agent's) and writes one MQTT 3.1.1 PUBLISH (QoS 1, as
agents publish) built with the collector's own encoder (:mod:`collector.ingest.packets`) on a
plain asyncio connection. PUBACKs are counted; at most ``window`` wait, as agents bound their
in-flight messages.

What stays the same from tick to tick: every value but ``ts`` and ``seq`` (GPU power, energy
counters, temperatures), which is what a stall bench needs (ingest, storage, evaluation), not
what a rule or ledger bench needs.

Usage (as a library): ``await replay_fleet(host, port, sim, ticks=..., spread=True)``;
``python bench/replay.py --measure`` prints this process's CPU a message for both generators.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator, SimStats, publish_fleet
from collector.ingest.packets import encode_packet, encode_string
from collector.localbroker import MosquittoBroker
from shared.schema import NodeStatus, encode
from shared.settings import MqttSettings
from shared.topics import inventory_topic, sample_topic, status_topic

__all__ = ["SamplePieces", "replay_fleet"]

_TS: Final = 1_234_567_890.25
_SEQ: Final = 987_654_321
_PACE_S: Final = 0.005
"""Nodes are sent in groups due within this much of each other (one sleep a group)."""
_CONNECT: Final = 0x10
_PUBLISH_QOS1: Final = 0x32
_RETAIN: Final = 0x01


class SamplePieces:
    """One node's sample JSON cut around its ``ts`` and ``seq``: :meth:`make` joins them."""

    __slots__ = ("_pieces", "_ts_first")

    def __init__(self, payload: bytes) -> None:
        spans = []
        for key, value in ((b'"ts":', repr(_TS).encode()), (b'"seq":', str(_SEQ).encode())):
            if payload.count(key + value) != 1:
                raise ValueError(f"{key + value!r} is not once in the sample: cannot cut it")
            at = payload.index(key + value) + len(key)
            spans.append((at, at + len(value)))
        self._ts_first = spans[0] < spans[1]
        (f0, f1), (s0, s1) = sorted(spans)
        self._pieces = (payload[:f0], payload[f1:s0], payload[s1:])

    def make(self, ts: float, seq: int) -> bytes:
        """The sample taken at ``ts`` with ``seq``."""
        head, mid, tail = self._pieces
        t, s = repr(ts).encode(), str(seq).encode()
        return b"".join((head, t, mid, s, tail) if self._ts_first else (head, s, mid, t, tail))


class _Publisher(asyncio.Protocol):
    """A QoS 1 publisher on one connection: PUBACKs counted, at most ``window`` in flight."""

    def __init__(self, window: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.connack = asyncio.get_running_loop().create_future()
        self._window = window
        self._next_id = 0
        self.inflight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._writable = asyncio.Event()
        self._writable.set()
        self._buf = b""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data
        if not self.connack.done():
            if len(buf) < 4:
                self._buf = buf
                return
            if buf[0] != 0x20 or buf[3] != 0:
                self.connack.set_exception(RuntimeError(f"CONNACK refused: {buf[:4].hex()}"))
                return
            self.connack.set_result(None)
            buf = buf[4:]
        whole = len(buf) // 4 * 4  # only PUBACKs come: 40 02 id id
        self.inflight -= whole // 4
        self._buf = buf[whole:]
        if self.inflight < self._window:
            self._room.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._room.set()  # no PUBACK comes now: wake publish() and drain() to raise
        self._writable.set()
        if not self.connack.done():
            self.connack.set_exception(exc or ConnectionError("closed before CONNACK"))

    async def publish(self, topic: bytes, payload: bytes, *, retain: bool = False) -> None:
        """Write one PUBLISH, waiting for room in the window and the socket buffer."""
        while self.inflight >= self._window and not self.lost.done():
            self._room.clear()
            await self._room.wait()
        if not self._writable.is_set():
            await self._writable.wait()
        self._check_open()
        self._next_id = self._next_id % 0xFFFF + 1
        self.inflight += 1
        body = b"".join((topic, self._next_id.to_bytes(2, "big"), payload))
        assert self.transport is not None
        self.transport.write(encode_packet(_PUBLISH_QOS1 | (_RETAIN if retain else 0), body))

    async def drain(self) -> None:
        """Wait until every PUBLISH written is acknowledged."""
        while self.inflight > 0:
            self._check_open()
            self._room.clear()
            await asyncio.wait_for(self._room.wait(), 30.0)

    def _check_open(self) -> None:
        if self.lost.done():
            raise ConnectionError(
                f"the broker closed the connection ({self.inflight} PUBLISH unacknowledged)"
            )


async def replay_fleet(
    host: str,
    port: int,
    sim: FleetSimulator,
    *,
    ticks: int,
    spread: bool = True,
    window: int = 20_000,
    client_id: str = "capwatch-replay",
) -> SimStats:
    """Announce the fleet (retained inventories, ``online``), then send ``ticks`` ticks of
    samples every ``sim.interval_s``; node ``i`` at ``i / nodes`` of the interval with
    ``spread`` (as agents started at different times), else all at each tick's start. Then
    ``offline`` statuses. ``extra["max_late_s"]``: how far behind its node's phase the
    generator sent a sample, at most (the generator, not the collector, fell behind)."""
    loop = asyncio.get_running_loop()
    _, pub = await loop.create_connection(lambda: _Publisher(window), host, port)
    body = encode_string("MQTT", "protocol") + bytes((4, 0x02)) + (0).to_bytes(2, "big")
    assert pub.transport is not None
    pub.transport.write(encode_packet(_CONNECT, body + encode_string(client_id, "client id")))
    await asyncio.wait_for(pub.connack, 10.0)
    stats = SimStats()
    nodes = sim.node_ids
    now = time.time()
    for i, node in enumerate(nodes):
        await pub.publish(
            encode_string(inventory_topic(node), "topic"),
            encode(sim.inventory(i, now)),
            retain=True,
        )
        status = NodeStatus(v=1, node=node, status="online", ts=now)
        await pub.publish(encode_string(status_topic(node), "topic"), encode(status), retain=True)
    topics = [encode_string(sample_topic(n), "topic") for n in nodes]
    pieces = [SamplePieces(encode(sim.sample(i, _TS, _SEQ))) for i in range(len(nodes))]
    seq0 = sim.next_seq()
    step = sim.interval_s / max(len(nodes), 1) if spread else 0.0
    every = max(1, math.ceil(_PACE_S / step)) if step else len(nodes)
    start = time.time()
    t0 = time.monotonic()
    max_late = 0.0
    for tick in range(ticks):
        due0 = start + tick * sim.interval_s
        seq = seq0 + tick
        for i in range(len(nodes)):
            if i % every == 0:
                delay = due0 + i * step - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    max_late = max(max_late, -delay)
                    stats.late_ticks += i == 0  # the tick itself started late
            await pub.publish(topics[i], pieces[i].make(time.time(), seq))
            stats.published += 1
        stats.ticks += 1
    for node in nodes:
        status = NodeStatus(v=1, node=node, status="offline", ts=time.time())
        await pub.publish(encode_string(status_topic(node), "topic"), encode(status), retain=True)
    await pub.drain()
    stats.elapsed_s = time.monotonic() - t0
    stats.extra["max_late_s"] = max_late
    pub.transport.write(b"\xe0\x00")  # DISCONNECT
    pub.transport.close()
    return stats


def _measure(nodes: int, ticks: int) -> None:
    """This process's CPU a message, for both generators, against a local Mosquitto."""
    with MosquittoBroker(Path(tempfile.mkdtemp(prefix="capwatch-replay-"))) as b:
        for name in ("simulator", "replay"):
            sim = FleetSimulator(nodes, gpus_per_node=8, seed=3, interval_s=0.01, epoch=1)
            c0 = time.process_time()
            if name == "replay":
                st = asyncio.run(replay_fleet(b.host, b.port, sim, ticks=ticks, spread=False))
            else:
                mqtt = MqttSettings(host=b.host, port=b.port)
                st = asyncio.run(publish_fleet(mqtt, sim, ticks=ticks, burst=True))
            cpu = time.process_time() - c0
            n = st.published + 3 * nodes  # samples, inventories and two statuses a node
            print(f"{name:<10} {cpu / n * 1e6:8.1f} us CPU a message ({n:,} messages)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", action="store_true", help="CPU a message, both generators")
    p.add_argument("--nodes", type=int, default=2_000)
    p.add_argument("--ticks", type=int, default=5)
    args = p.parse_args()
    if not args.measure:
        p.error("nothing to do: --measure (or import replay_fleet)")
    _measure(args.nodes, args.ticks)


if __name__ == "__main__":
    main()
