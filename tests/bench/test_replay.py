"""bench/replay.py: the cheap load generator sends what the simulator would have sent."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from agent.simulate import FleetSimulator
from bench.replay import SamplePieces, replay_fleet
from collector.localbroker import MosquittoBroker
from shared.schema import decode_sample, encode


@pytest.mark.parametrize(("ts", "seq"), [(1_765_160_000.123456, 0), (1_800_000_000.5, 123_456)])
def test_pieces_make_the_sample_with_the_time_and_seq_of_its_send(ts: float, seq: int) -> None:
    """Every byte but the time's and the seq's is the sample made once (values stay)."""
    sim = FleetSimulator(4, gpus_per_node=8, seed=3, interval_s=1.0, epoch=1)
    for i in range(4):
        once = encode(sim.sample(i, 1_234_567_890.25, 987_654_321))
        made = SamplePieces(once).make(ts, seq)
        assert made == once.replace(b'"ts":1234567890.25', b'"ts":' + repr(ts).encode()).replace(
            b'"seq":987654321', b'"seq":' + str(seq).encode()
        )
        got = decode_sample(made)
        assert (got.ts, got.seq, got.node) == (ts, seq, sim.node_ids[i])


def test_pieces_refuse_a_sample_they_cannot_cut() -> None:
    sim = FleetSimulator(1, gpus_per_node=1, seed=3, interval_s=1.0, epoch=1)
    with pytest.raises(ValueError, match="not once"):
        SamplePieces(encode(sim.sample(0, 1_700_000_000.0, 1)))


async def test_replay_sends_every_tick_with_its_seq(mosquitto: MosquittoBroker) -> None:
    sim = FleetSimulator(5, gpus_per_node=2, seed=3, interval_s=0.2, epoch=1)
    seen: dict[str, list[int]] = {}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="peek") as client:
        await client.subscribe("capwatch/v1/nodes/+/sample", qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                s = decode_sample(message.payload)
                seen.setdefault(s.node, []).append(s.seq)
                if sum(map(len, seen.values())) == 15:
                    return

        reader = asyncio.create_task(read())
        stats = await replay_fleet(mosquitto.host, mosquitto.port, sim, ticks=3)
        await asyncio.wait_for(reader, 10)
    assert (stats.published, stats.ticks) == (15, 3)
    assert sorted(seen) == sorted(sim.node_ids)
    assert all(seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2] for seqs in seen.values())


async def test_a_broker_that_closes_while_the_window_is_full_ends_the_replay() -> None:
    """The generator waited for room in its window, or for the socket to drain, forever once
    the broker closed the connection (no PUBACK would come): the bench hung. A loopback
    server answers CONNECT, reads, acknowledges nothing and closes."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        await writer.drain()
        await asyncio.sleep(0.3)  # the window (3) fills with the first announcements
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sim = FleetSimulator(5, gpus_per_node=2, seed=3, interval_s=0.2, epoch=1)
    async with server:
        with pytest.raises(ConnectionError, match="closed"):
            await asyncio.wait_for(replay_fleet("127.0.0.1", port, sim, ticks=3, window=3), 10)
