"""The reader cuts each read into units, each queued as soon as it is validated."""

from __future__ import annotations

import asyncio

import pytest

from agent.simulate import FleetSimulator
from collector.ingest.reader import UNIT_BYTES, Reader, StopUnit, Unit
from collector.ingest.validate import Ingestor
from shared.clock import FakeClock
from shared.schema import encode
from shared.topics import SUBSCRIPTIONS, sample_topic
from tests.collector.ingest.scripted import ScriptedBroker
from tests.helpers import wait_until

T0 = 1_700_000_000.0  # FakeClock's wall time: samples stamped just before it


class _Rig:
    """A reader on a scripted broker, putting onto a plain queue the test reads."""

    def __init__(self, unit_messages: int) -> None:
        self.broker = ScriptedBroker()
        self.queue: asyncio.Queue[Unit | StopUnit] = asyncio.Queue()
        self.stop = asyncio.Event()
        self.reader = Reader(
            self.broker.connect,
            Ingestor(FakeClock()),
            self.queue,
            topics=list(SUBSCRIPTIONS),
            session_key="test",
            had_session=False,
            stop=self.stop,
            connected=asyncio.Event(),
            unit_messages=unit_messages,
        )
        self.units: list[Unit] = []
        """The units of the reads (not the session's facts), in queue order."""

    async def take(self, messages: int) -> list[int]:
        """Wait until the reads' units hold ``messages`` messages; their sizes."""

        def taken() -> int:
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if isinstance(item, Unit) and item.acks:
                    self.units.append(item)
            return sum(len(u.items) for u in self.units)

        await wait_until(lambda: taken() >= messages, what=f"{messages} messages queued")
        return [len(u.items) for u in self.units]

    async def finish(self, task: asyncio.Task[None]) -> None:
        self.stop.set()
        item = await asyncio.wait_for(self.queue.get(), 10)
        while not isinstance(item, StopUnit):
            item = await asyncio.wait_for(self.queue.get(), 10)
        item.done.set_result(None)
        await asyncio.wait_for(task, 10)


async def test_a_read_is_queued_in_units_of_at_most_unit_messages_in_order() -> None:
    """150 messages in one read: units of 64, 64 and 22, in the read's order, each acking
    its own messages."""
    rig = _Rig(unit_messages=64)
    task = asyncio.create_task(rig.reader.run())
    sim = FleetSimulator(150, gpus_per_node=2, seed=5, interval_s=5)
    messages = [
        rig.broker.message(sample_topic(s.node), encode(s))
        for s in (sim.sample(i, T0 - 10, 1) for i in range(150))
    ]
    rig.broker.deliver(messages)
    assert await rig.take(150) == [64, 64, 22]
    assert [i for u in rig.units for i in u.acks] == [m.packet_id for m in messages]
    await rig.finish(task)


async def test_the_loop_runs_other_tasks_between_two_units_of_one_read() -> None:
    """While one read of 200 messages is validated, another task sees the queue grow a unit
    at a time (the writer can start on the first unit before the read is done)."""
    rig = _Rig(unit_messages=50)
    task = asyncio.create_task(rig.reader.run())
    await wait_until(lambda: rig.queue.qsize() >= 1, what="the session's facts queued")
    rig.queue.get_nowait()
    seen: list[int] = []

    async def watch() -> None:
        while rig.queue.qsize() < 4:
            seen.append(rig.queue.qsize())
            await asyncio.sleep(0)

    watching = asyncio.create_task(watch())
    sim = FleetSimulator(200, gpus_per_node=2, seed=5, interval_s=5)
    rig.broker.deliver(
        [
            rig.broker.message(sample_topic(s.node), encode(s))
            for s in (sim.sample(i, T0 - 10, 1) for i in range(200))
        ]
    )
    await asyncio.wait_for(watching, 10)
    assert {1, 2, 3} <= set(seen), seen
    assert await rig.take(200) == [50, 50, 50, 50]
    await rig.finish(task)


@pytest.mark.parametrize("kib", [300, 700])
async def test_a_unit_holds_at_most_unit_bytes_of_payload(kib: int) -> None:
    """Large messages: a unit ends before the message that would take it past UNIT_BYTES."""
    rig = _Rig(unit_messages=64)
    task = asyncio.create_task(rig.reader.run())
    payload = b"x" * (kib * 1024)  # not JSON: each one a reject, queued like any message
    rig.broker.deliver([rig.broker.message(sample_topic("n1"), payload) for _ in range(7)])
    per_unit = UNIT_BYTES // len(payload)
    sizes = await rig.take(7)
    assert sizes == [per_unit] * (7 // per_unit) + ([7 % per_unit] if 7 % per_unit else [])
    await rig.finish(task)
