"""The collector daemon's lifecycle: MQTT reader, store writer, retention, counters.

Data path::

    broker --(QoS 1, persistent session)--> reader --> Ingestor.handle --> pending rows
        --> writer (one task, one aiosqlite connection, batched commits) --> SQLite (WAL)

The reader drains aiomqtt's queue in bursts instead of awaiting one message at a time
(aiomqtt's iterator creates a task per message, which costs more than validating it).
When ``queue_max`` rows wait for the writer, the reader pauses.

Stopping (:meth:`Collector.stop`) loses nothing that reached us: the reader stops, every
message aiomqtt had already received (and acknowledged) is ingested, the connection is
closed, and the writer commits everything pending before the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Final

import aiomqtt

from collector.ingest import Ingestor
from collector.settings import CollectorSettings
from collector.store import NodeUpdate, SampleRow, Store
from shared.clock import Clock, SystemClock
from shared.logging import get_logger
from shared.topics import SUBSCRIPTIONS

__all__ = ["Collector"]

log = get_logger("collector")

_COUNTER_FLUSH_S: Final = 2.0


class Collector:
    """One collector process. ``await Collector(settings).run()`` until :meth:`stop`."""

    def __init__(self, settings: CollectorSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ingestor = Ingestor(self.clock)
        self._rows: list[SampleRow] = []
        self._updates: dict[str, NodeUpdate] = {}
        self._have_work = asyncio.Event()
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
        async with Store(s.db_path) as store, asyncio.TaskGroup() as tg:
            tg.create_task(self._reader(), name="mqtt-reader")
            tg.create_task(self._writer(store), name="store-writer")
            tg.create_task(
                self._every(s.retention_check_s, lambda: self._retention(store)), name="retention"
            )
            tg.create_task(
                self._every(_COUNTER_FLUSH_S, lambda: self._flush_counters(store)), name="counters"
            )
        log.info("collector_stopped", **self.counters)

    # -- reader ---------------------------------------------------------------------------

    async def _reader(self) -> None:
        s = self.settings.mqtt
        delay = s.reconnect_min_s
        try:
            while not self._stop.is_set():
                client = aiomqtt.Client(
                    s.host,
                    s.port,
                    username=s.username,
                    password=s.password,
                    identifier=self.settings.client_id,
                    clean_session=False,
                    keepalive=s.keepalive_s,
                    tls_context=s.tls_context(),
                    timeout=10,
                )
                try:
                    async with client:
                        await client.subscribe([(t, 1) for t in SUBSCRIPTIONS])
                        self.connected.set()
                        log.info("mqtt_subscribed", topics=list(SUBSCRIPTIONS))
                        delay = s.reconnect_min_s
                        await self._consume(client)
                    # Messages that arrived while disconnecting were acknowledged too.
                    self._drain_received(client)
                except aiomqtt.MqttError as exc:
                    self.connected.clear()
                    self._drain_received(client)
                    self.ingestor.counters["mqtt_disconnects"] += 1
                    log.warning("mqtt_disconnected", error=str(exc), retry_in_s=round(delay, 2))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                    delay = min(s.reconnect_max_s, delay * 2) * random.uniform(0.5, 1.0)
                    delay = max(delay, s.reconnect_min_s)
        finally:
            self.connected.clear()
            self._reader_done.set()
            self._have_work.set()

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Read until stop; on stop, ingest everything already received and return."""
        messages = aiter(client.messages)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait((nxt, stop), return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await nxt
                    if nxt.cancelled() or nxt.exception() is not None:
                        self._drain_received(client)
                        return
                message = nxt.result()  # raises MqttError on disconnect
                self._ingest(message)
                self._drain_received(client)
                if stop in done:
                    return
                if not self._space.is_set():
                    self.ingestor.counters["reader_paused"] += 1
                    await self._wait_for_space()
        finally:
            stop.cancel()

    def _drain_received(self, client: aiomqtt.Client) -> None:
        # aiomqtt's queue (private): draining it synchronously avoids one task per message.
        queue = client._queue
        while not queue.empty():
            self._ingest(queue.get_nowait())

    async def _wait_for_space(self) -> None:
        waiter = asyncio.ensure_future(self._space.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((waiter, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stop.cancel()

    def _ingest(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode()
        result = self.ingestor.handle(message.topic.value, bytes(payload))
        if result is None:
            return
        row, update = result
        if row is not None:
            self._rows.append(row)
            if len(self._rows) >= self.settings.queue_max:
                self._space.clear()
        prev = self._updates.get(update.node)
        self._updates[update.node] = update if prev is None else _merge(prev, update)
        if len(self._rows) >= self.settings.batch_max_rows or row is None:
            self._have_work.set()

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
            if self._reader_done.is_set() and not self._rows and not self._updates:
                return

    async def _write_pending(self, store: Store) -> None:
        if not self._rows and not self._updates:
            return
        limit = self.settings.batch_max_rows
        rows, self._rows = self._rows[:limit], self._rows[limit:]
        updates = list(self._updates.values())
        self._updates = {}
        t0 = self.clock.monotonic()
        inserted = await store.write_batch(rows, updates)
        self.stored_total += inserted
        self.ingestor.counters["duplicates"] += len(rows) - inserted
        if len(self._rows) < self.settings.queue_max // 2:
            self._space.set()
        if len(self._rows) >= limit:
            self._have_work.set()
        log.debug(
            "batch_stored",
            rows=len(rows),
            new=inserted,
            nodes=len(updates),
            ms=round((self.clock.monotonic() - t0) * 1000, 2),
        )

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
    """Fold two pending updates of one node; the newer sample wins for latest facts."""
    if new.last_ts is not None and (old.last_ts is None or new.last_ts >= old.last_ts):
        old.last_ts, old.last_received, old.interval_s = (
            new.last_ts,
            new.last_received,
            new.interval_s,
        )
        old.gpu_count, old.cpu_pct, old.gpu_util_pct = new.gpu_count, new.cpu_pct, new.gpu_util_pct
        old.gpu_power_w, old.cpu_power_w = new.gpu_power_w, new.cpu_power_w
    if new.status is not None:
        old.status, old.status_ts = new.status, new.status_ts
    if new.inventory is not None:
        old.inventory, old.inventory_ts = new.inventory, new.inventory_ts
    return old
