"""The collector daemon's lifecycle: MQTT reader, store writer, retention, counters.

Data path::

    broker --(QoS 1, persistent session)--> reader --> Ingestor.handle --> pending rows
        --> writer (one task, one aiosqlite connection, batched commits) --> SQLite (WAL)
        --> PUBACK for every message of the committed batch

Messages are acknowledged only after the batch that holds them is committed, so a crash or
a kill at any point loses nothing: the broker redelivers whatever was not acknowledged to
the next collector with the same client id, and the store drops the duplicates. (aiomqtt,
which the agents use, acknowledges on receipt and reads one packet per event-loop wakeup;
see :mod:`collector.ingest.subscriber` for why the collector has its own subscriber.)

When ``queue_max`` rows wait for the writer, the reader stops taking messages; the
subscriber then stops reading the socket, and TCP pushes back on the broker.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Final

from collector.ingest.subscriber import Message, MqttSubscriber, MqttWireError
from collector.ingest.validate import Ingestor
from collector.settings import CollectorSettings
from collector.store.db import NodeUpdate, SampleRow, Store
from shared.clock import Clock, SystemClock
from shared.logging import get_logger
from shared.topics import SUBSCRIPTIONS

__all__ = ["Collector"]

log = get_logger("collector")

_COUNTER_FLUSH_S: Final = 2.0
_QUIET_COMMIT_S: Final = 0.02


class Collector:
    """One collector process. ``await Collector(settings).run()`` until :meth:`stop`."""

    def __init__(self, settings: CollectorSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ingestor = Ingestor(self.clock)
        self._rows: list[SampleRow] = []
        self._acks: list[int] = []
        # (rows, acks) lengths after each MQTT read was ingested: the writer cuts batches
        # there, so the acks it sends belong exactly to the rows it committed.
        self._marks: list[tuple[int, int]] = []
        self._known_nodes: set[str] = set()
        self._new_nodes: list[str] = []
        self._sub: MqttSubscriber | None = None
        self._updates: dict[str, NodeUpdate] = {}
        self._have_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._writing = False
        """Set by the writer when nothing is waiting to be committed or acknowledged."""
        self._space = asyncio.Event()
        self._space.set()
        self._stop = asyncio.Event()
        self._reader_done = asyncio.Event()
        self.connected = asyncio.Event()
        """Set while subscribed to the broker (tests and the demo wait on it)."""
        self.stored_total = 0

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of all counters."""
        out = dict(self.ingestor.counters)
        out["stored"] = self.stored_total
        out["pending"] = len(self._rows)
        out["unacked"] = len(self._acks)
        return out

    def stop(self) -> None:
        """Ask :meth:`run` to finish: drain, commit, close. Safe to call from a signal handler."""
        self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`stop` is called; raise on a fatal store error."""
        s = self.settings
        log.info(
            "collector_starting",
            db=str(s.db_path),
            broker=f"{s.mqtt.host}:{s.mqtt.port}",
            client_id=s.client_id,
        )
        async with Store(s.db_path, compress=s.compress_payloads) as store:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(), name="mqtt-reader")
                tg.create_task(self._writer(store), name="store-writer")
                tg.create_task(
                    self._every(s.retention_check_s, lambda: self._retention(store)),
                    name="retention",
                )
                tg.create_task(
                    self._every(_COUNTER_FLUSH_S, lambda: self._flush_counters(store)),
                    name="counters",
                )
            await self._flush_counters(store)  # the final batch's figures too
        log.info("collector_stopped", **self.counters)

    # -- reader ---------------------------------------------------------------------------

    async def _reader(self) -> None:
        s = self.settings.mqtt
        delay = s.reconnect_min_s
        try:
            while not self._stop.is_set():
                sub = MqttSubscriber(
                    s.host,
                    s.port,
                    client_id=self.settings.client_id,
                    username=s.username,
                    password=s.password,
                    keepalive_s=s.keepalive_s,
                    clean_session=False,
                    ssl_context=s.tls_context(),
                )
                try:
                    async with sub:
                        # A resumed session keeps its subscriptions. Subscribing again would
                        # make the broker resend every retained inventory and status (two
                        # per node: 25,000 messages for a 12,500-node fleet) on each restart.
                        if not sub.session_present:
                            await sub.subscribe([(t, 1) for t in SUBSCRIPTIONS])
                        # Ids of an earlier connection mean nothing now (their rows stay).
                        self._acks, self._marks = [], []
                        self._sub = sub
                        self.connected.set()
                        log.info(
                            "mqtt_subscribed",
                            topics=list(SUBSCRIPTIONS),
                            session_present=sub.session_present,
                        )
                        delay = s.reconnect_min_s
                        await self._consume(sub)
                        await self._commit_and_ack()
                except MqttWireError as exc:
                    self.ingestor.counters["mqtt_disconnects"] += 1
                    log.warning("mqtt_disconnected", error=str(exc), retry_in_s=round(delay, 2))
                    self._sub = None
                    self.connected.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                    jitter = random.uniform(0.5, 1.0)
                    delay = max(s.reconnect_min_s, min(s.reconnect_max_s, delay * 2) * jitter)
                finally:
                    self._sub = None
                    self.connected.clear()
        finally:
            self._reader_done.set()
            self._have_work.set()

    async def _consume(self, sub: MqttSubscriber) -> None:
        """Ingest batches until stop. Raises MqttWireError when the connection ends."""
        stop = asyncio.ensure_future(self._stop.wait())
        nxt: asyncio.Future[list[Message]] | None = None
        try:
            while True:
                if not self._space.is_set():
                    self.ingestor.counters["reader_paused"] += 1
                    space = asyncio.ensure_future(self._space.wait())
                    await asyncio.wait((space, stop), return_when=asyncio.FIRST_COMPLETED)
                    space.cancel()
                if stop.done():
                    return
                if nxt is None:
                    nxt = asyncio.ensure_future(sub.next_batch())
                # With acknowledgements pending, a quiet moment may mean the broker has hit
                # its in-flight limit and waits for them: commit now rather than later.
                quiet_s = _QUIET_COMMIT_S if self._acks else None
                done, _ = await asyncio.wait(
                    (nxt, stop), timeout=quiet_s, return_when=asyncio.FIRST_COMPLETED
                )
                if nxt in done:
                    batch, nxt = nxt.result(), None  # raises MqttWireError on disconnect
                    for message in batch:
                        self._ingest(message)
                    self._marks.append((len(self._rows), len(self._acks)))
                elif not done:
                    self._have_work.set()
                if stop in done:
                    return
        finally:
            stop.cancel()
            if nxt is not None:
                nxt.cancel()  # next_batch() takes messages only when it returns: nothing lost

    def _ingest(self, message: Message) -> None:
        if message.packet_id is not None:
            self._acks.append(message.packet_id)
        result = self.ingestor.handle(message.topic, message.payload)
        if result is None:
            return
        row, update = result
        if row is not None:
            self._rows.append(row)
            if row.node not in self._known_nodes:
                self._known_nodes.add(row.node)
                self._new_nodes.append(row.node)
            if len(self._rows) >= self.settings.queue_max:
                self._space.clear()
            if len(self._rows) >= self.settings.batch_max_rows:
                self._have_work.set()
        if update is not None:
            prev = self._updates.get(update.node)
            self._updates[update.node] = update if prev is None else _merge(prev, update)
            self._have_work.set()

    async def _commit_and_ack(self) -> None:
        """On stop: let the writer commit what we hold, so it is acknowledged before we go."""
        if self._rows or self._updates or self._acks or self._writing:
            self._idle.clear()
            self._have_work.set()
            await self._idle.wait()

    # -- writer ---------------------------------------------------------------------------

    async def _writer(self, store: Store) -> None:
        s = self.settings
        while True:
            if not self._reader_done.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(s.batch_max_delay_s):
                        await self._have_work.wait()
            self._have_work.clear()
            await self._write_pending(store)
            if not (self._rows or self._updates or self._acks or self._writing):
                self._idle.set()
            if self._reader_done.is_set() and not self._rows and not self._updates:
                return

    async def _write_pending(self, store: Store) -> None:
        if not self._rows and not self._updates and not self._acks:
            return
        self._writing = True  # a stop waits for this batch's acks too
        try:
            await self._write_one_batch(store)
        finally:
            self._writing = False

    async def _write_one_batch(self, store: Store) -> None:
        rows, acks = self._take_batch()
        updates = list(self._updates.values())
        self._updates = {}
        new_nodes, self._new_nodes = self._new_nodes, []
        sub = self._sub
        t0 = self.clock.monotonic()
        inserted = await store.write_batch(rows, updates, new_nodes)
        self.stored_total += inserted
        self.ingestor.counters["duplicates"] += len(rows) - inserted
        if len(self._rows) < self.settings.queue_max:
            self._space.set()
        if sub is self._sub and sub is not None:
            # The same connection: acknowledge. After a reconnect these ids are stale, and
            # the broker redelivers those messages anyway (then stored once, by the key).
            with contextlib.suppress(MqttWireError):
                sub.ack(acks)
        log.debug(
            "batch_stored",
            rows=len(rows),
            new=inserted,
            nodes=len(updates),
            acked=len(acks),
            ms=round((self.clock.monotonic() - t0) * 1000, 2),
        )

    def _take_batch(self) -> tuple[list[SampleRow], list[int]]:
        """Rows and acks up to the first read boundary at or past ``batch_max_rows``."""
        limit = self.settings.batch_max_rows
        if len(self._rows) <= limit or not self._marks:
            rows, acks = self._rows, self._acks
            self._rows, self._acks, self._marks = [], [], []
            return rows, acks
        # The reader marks every read as soon as it is ingested (no await in between), so the
        # last mark is len(self._rows) > limit and bisect always finds one.
        i = bisect.bisect_left(self._marks, (limit, 0))
        r, a = self._marks[i]
        rows, acks = self._rows[:r], self._acks[:a]
        self._rows, self._acks = self._rows[r:], self._acks[a:]
        self._marks = [(mr - r, ma - a) for mr, ma in self._marks[i + 1 :]]
        self._have_work.set()  # more is waiting
        return rows, acks

    # -- periodic -------------------------------------------------------------------------

    async def _every(self, period_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._reader_done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await self._reader_done.wait()
            await job()

    async def _retention(self, store: Store) -> None:
        cutoff_ms = round((self.clock.time() - self.settings.retention_s) * 1000)
        total = 0
        while True:
            deleted = await store.delete_older_than(cutoff_ms, self.settings.retention_chunk_rows)
            total += deleted
            if deleted < self.settings.retention_chunk_rows or self._reader_done.is_set():
                break
            await asyncio.sleep(0)  # let the writer in between chunks
        if total:
            self.ingestor.counters["retention_deleted"] += total
            log.info("retention_deleted", rows=total, cutoff_ms=cutoff_ms)

    async def _flush_counters(self, store: Store) -> None:
        await store.write_counters(self.counters, self.clock.time())


def _merge(old: NodeUpdate, new: NodeUpdate) -> NodeUpdate:
    """Fold two pending updates of one node; the later message wins field by field."""
    if new.status is not None:
        old.status, old.status_ts = new.status, new.status_ts
    if new.inventory is not None:
        old.inventory, old.inventory_ts = new.inventory, new.inventory_ts
    return old
