"""The writer: the one task that owns the store's connection. It only writes and acknowledges.

It takes units off the reader's bounded queue, commits as many as are waiting (up to
``batch_max_rows`` sample rows) in one transaction, and only then acknowledges their
messages, on the connection each came from. Between batches it does its own small upkeep:
retention (one small chunk at a time, so ingestion never waits long; then the payload
templates no stored sample names, their uses written back first), the ``counters`` table
(:func:`~collector.counters.counter_values`, every ~2 s) and the quarantine bound. One
owner, so no locks.

The store's watermarks (:mod:`collector.ingest.watermark`): each committed batch's sample
rows move them; every ``watermark_interval_s`` the writer writes the changed ones to the
``watermarks`` table and, after that commit, publishes them retained on the connection the
last unit came from (QoS 0: one that is lost with the connection is offered again at the
next interval). One message per changed node per interval, whatever the sample rate; at
most :data:`WATERMARKS_PER_FLUSH` per transaction, the rest of the round after the next
batch (12,500 at once held the writer for ~40 ms of CPU, the loop for ~20 ms of it).
A broker whose ACL does not let the collector write there closes the connection at the
first one (Mosquitto 2.0 does so even at QoS 0): the first publish on each connection is
a probe, judged at the next interval (the rest of its round waits for it); three
connections in a row lost right after one, and
watermarks stop for an hour (``watermarks_refused``, logged as an error naming the ACL
line), so an old ACL costs three reconnects, not a reconnect every second.

Batches are what waited, bounded by time: while a commit runs, the next units queue up, and
an idle collector commits each unit at once (no timer to wait for before acknowledging). A
batch takes at most as many rows as the last batches say fit in :data:`BATCH_TARGET_S`
(:class:`BatchLimit`): after a pause (a collection, an evaluation's record)
the backlog is committed in several short batches, each acknowledged at once, rather than one
long one that every message behind it waits for. Only while batches at that limit leave rows
waiting for :data:`BEHIND_S` in a row (a backlog to drain) are they as large as
``batch_max_rows``, the most rows a second (fewer commits a row).

Other tasks' results: the webhook delivery's outcomes and the evaluator's (alert changes,
governance usage, capacity snapshots) arrive on this same queue as :class:`Record` items.
Their work is done before they are queued; the writer only awaits :meth:`Record.write`, in
queue order, after the units gathered with them. A large record writes itself in parts, one
short transaction per call: :meth:`Record.write` returns true while parts remain, and the
writer calls it again after the next batch, so samples are committed between its parts
instead of waiting behind all of them. Between batches the writer writes records' parts
(at least one) until :data:`RECORD_BUDGET_S` is spent or units wait, the one at the head of
the line first: a record's parts, and records, stay in order. A record the store refuses (not a
broken store) is logged and counted in ``job_failures{job=<name>}``, the rest of its parts
dropped; ingestion goes on.

The rollups' fold (every ``rollup_fold_s``, or once ``rollup_fold_samples`` are staged) is
such a record too, queued by the writer itself behind the records waiting, one at a time:
a part per shard of the staged samples (:mod:`collector.store.fold`), so a fold of 100,000
samples no longer holds every batch behind it for most of a second. At a stop the writer
finishes it and folds what is left.

Poison containment: when a batch cannot be written and the store says the fault is in the
data (not the disk), the batch is bisected until the message(s) at fault are found; those
are quarantined and acknowledged like any rejected message, and the rest is stored. A store
that cannot be written at all raises :class:`StoreError` out of :meth:`Writer.run`, and the
unstored messages are never acknowledged.

Forgotten nodes (``collector inventory forget``, :mod:`collector.store.forget`): every
``forget_check_s`` the writer reads the ``forgotten_nodes`` rows past the last it saw (one
primary-key range read, almost always empty) and stops tracking those nodes: out of the
live view (:meth:`~collector.live.LiveView.forget`, freeing their place under
``max_nodes``; the rules then resolve their alerts), the watermarks (none published for them
again) and the nodes it knows the ``nodes`` row of (a later sample writes it again: a new
node). The one other task that changes the live view, besides the reader validating: both
run on the event loop and a forget is one synchronous call, so no evaluation's snapshot
sees half of it. The view dropped what the reader validated of them before, so the store
keeps none of it either: the rows written of them since the command's commit go at the
pickup (:func:`~collector.store.forget.drop_written`: a status stored meanwhile wrote their
``nodes`` row again), and of the items validated before it and written after (queued, or
held by the reader waiting for room), a node still forgotten in the view
(:meth:`~collector.live.LiveView.was_forgotten`) has its samples stored as history only: no
``nodes`` row, status, inventory or watermark. A message validated after the pickup and
stamped after the forget makes a new node in both (:mod:`collector.ingest.validate`).

A store that is only unavailable (PostgreSQL restarting or failing over: ``StoreError.
unavailable``) is waited for: the writer reconnects with capped, randomised backoff and
writes the same batch again (nothing of it was committed, nothing acknowledged; a sample
the server did commit before the connection broke comes back as a duplicate and is
dropped). Meanwhile the queue fills and the reader stops reading: the broker keeps the
rest. A stop asked for while it waits ends the wait with the error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Final, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from collector import counters, heap
from collector.ingest.metrics import WriterMetrics
from collector.ingest.reader import Acker, MetaItem, StopUnit, Unit
from collector.ingest.validate import Ingestor, Item, Rejected
from collector.ingest.watermark import Watermarks
from collector.store.db import NodeUpdate, QuarantineRow, SampleRow, Store
from collector.store.fold import Fold
from collector.store.forget import drop_written, forgotten_after
from collector.store.watermarks import WatermarkRow, write_watermarks
from shared.clock import Clock
from shared.errors import MqttWireError, StoreError
from shared.logging import get_logger
from shared.schema import Watermark, encode
from shared.topics import inventory_topic, sample_topic, status_topic, watermark_topic

__all__ = [
    "BATCH_TARGET_S",
    "BEHIND_S",
    "FOLD_EVERY_S",
    "FOLD_SAMPLES",
    "FORGET_CHECK_S",
    "RECORD_BUDGET_S",
    "WATERMARKS_PER_FLUSH",
    "BatchLimit",
    "Record",
    "Writer",
    "WriterItem",
]

log = get_logger("writer")

_COUNTERS_EVERY_S: Final = 2.0
_REFUSALS: Final = 3
"""Connections in a row lost right after their first watermark publish: the broker refuses."""
_REFUSED_PAUSE_S: Final = 3600.0
_RETRY_MIN_S: Final = 0.2
_RETRY_MAX_S: Final = 10.0
"""Backoff between reconnects to an unavailable store (randomised, doubling up to this)."""

T = TypeVar("T")
BATCH_TARGET_S: Final = 0.008
"""How long a batch (store and acknowledgements) should take while the writer keeps up."""
BEHIND_S: Final = 0.5
"""Batches at the time limit leaving rows waiting this long: a backlog, drained at full size."""
_BATCH_MIN_ROWS: Final = 32
RECORD_BUDGET_S: Final = 0.008
"""Between two batches, records' parts are written until this much time is spent (at least
one part): as long as a batch should take."""
FORGET_CHECK_S: Final = 2.0
"""How often the writer looks for nodes ``collector inventory forget`` forgot."""
WATERMARKS_PER_FLUSH: Final = 1_000
"""Watermarks written (and published) in one transaction at most."""
FOLD_EVERY_S: Final = 60.0
FOLD_SAMPLES: Final = 100_000
"""Staged samples are folded into the rollups every minute, or sooner once this many wait
(~40 MB of columns): a fold writes one row per node and bucket it touched, so the rarer,
the cheaper per sample (collector/store/rollups.py); in parts, between batches."""


class Record(Protocol):
    """Another task's finished result for the store (delivery outcomes, an evaluation's).

    ``write`` only writes (and, once committed, hands on what waited for the commit, such as
    notifications to send): whatever takes time was done before the record was queued.
    """

    @property
    def name(self) -> str:
        """What it records, for logs and the ``job_failures{job}`` label (code-defined)."""
        ...

    async def write(self, store: Store) -> bool | None:
        """Write it (or its next part), in the writer's task; return true while parts remain
        (called again after the next batch); raise :class:`StoreError` if the store refuses."""
        ...


class BatchLimit:
    """How many rows the next batch may take (see the module docstring).

    ``rows`` starts at ``max_rows``; each batch that reached it, or took longer than
    ``target_s``, moves it towards the rows that would have taken ``target_s`` at that
    batch's pace (at most halved or doubled per batch, against the noise of a shared
    machine; never below :data:`_BATCH_MIN_ROWS`). While batches stopped at it with more
    waiting for ``behind_s`` in a row, :meth:`now` is ``max_rows``; only a batch under half
    the limit that left nothing waiting ends that (the writer keeps up again). A drain
    through the broker's in-flight window (Mosquitto's ``max_inflight_messages``, 1,000 in
    deploy/) empties the queue at every window, with batches the size of the limit: that
    is still a backlog.
    """

    def __init__(
        self, max_rows: int, *, target_s: float = BATCH_TARGET_S, behind_s: float = BEHIND_S
    ) -> None:
        self.max_rows = max_rows
        self.rows = max_rows
        self._min_rows = min(_BATCH_MIN_ROWS, max_rows)
        self._target_s = target_s
        self._behind_s = behind_s
        self._capped_since: float | None = None

    def now(self, t: float) -> int:
        """The limit for a batch gathered at monotonic time ``t``."""
        since = self._capped_since
        if since is not None and t - since >= self._behind_s:
            return self.max_rows
        return self.rows

    def observe(self, rows: int, took_s: float, *, capped: bool, t: float) -> None:
        """A batch of ``rows`` took ``took_s``; ``capped``: it stopped at the limit with more
        waiting."""
        if capped:
            if self._capped_since is None:
                self._capped_since = t
        elif rows < self.rows / 2:
            self._capped_since = None
        if rows >= self.rows or took_s > self._target_s:
            fits = rows * self._target_s / max(took_s, 1e-6)  # rows that take target_s
            moved = min(2 * self.rows, max(self.rows / 2, fits))
            self.rows = round(min(self.max_rows, max(self._min_rows, moved)))


WriterItem = Unit | StopUnit | Record
"""What the writer's queue carries: the reader's units and stop, other tasks' records."""


class Writer:
    """Stores units from ``queue``, then acks them; see the module docstring."""

    def __init__(
        self,
        store: Store,
        queue: asyncio.Queue[WriterItem],
        ingestor: Ingestor,
        clock: Clock,
        *,
        batch_max_rows: int = 4_000,
        retention_s: float = 86_400.0,
        retention_check_s: float = 30.0,
        retention_chunk_rows: int = 5_000,
        rollup_retention_s: Mapping[int, float] | None = None,
        rollup_fold_s: float = FOLD_EVERY_S,
        rollup_fold_samples: int = FOLD_SAMPLES,
        quarantine_max_rows: int = 10_000,
        counters_every_s: float = _COUNTERS_EVERY_S,
        counter_values: Callable[[], dict[str, int]] | None = None,
        metrics: WriterMetrics | None = None,
        watermarks: Watermarks | None = None,
        watermark_interval_s: float = 1.0,
        forgotten_id: int | None = None,
        forget_check_s: float = FORGET_CHECK_S,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._store = store
        self._stopping = stopping
        self._queue = queue
        self._ingestor = ingestor
        self._clock = clock
        self.batch_limit = BatchLimit(batch_max_rows)
        self._retention_s = retention_s
        self._retention_check_s = retention_check_s
        self._retention_chunk_rows = retention_chunk_rows
        self._rollup_retention_s = dict(rollup_retention_s or {})
        """Rollup resolution (s) -> how long its buckets are kept (none: rollups are off)."""
        self._fold_s = rollup_fold_s
        self._fold_samples = rollup_fold_samples
        """Staged samples are folded into the rollups every ``rollup_fold_s``, or sooner
        once this many wait."""
        self._quarantine_max_rows = quarantine_max_rows
        self._counters_every_s = counters_every_s
        self.metrics = WriterMetrics(CollectorRegistry()) if metrics is None else metrics
        self._counter_values = counter_values or functools.partial(
            counters.counter_values, (ingestor.metrics, self.metrics)
        )
        """What the ``counters`` table gets: by default validation's and the writer's own."""
        self._known_nodes: set[str] = set()
        self.watermarks = watermarks
        """Per node, what the store holds (``None``: none published)."""
        self._watermark_interval_s = watermark_interval_s
        self._link: Acker | None = None
        """The connection of the last unit stored: where watermarks are published."""
        self._verified: Acker | None = None
        """The connection known to take watermarks (it outlived a publish)."""
        self._probe: tuple[Acker, list[WatermarkRow]] | None = None
        """The first publish on a connection not yet verified, judged at the next flush."""
        self._riding: list[WatermarkRow] | None = None
        """Watermarks due while units waited: written in the next batch's transaction and
        published after its commit (see :meth:`flush_watermarks`)."""
        self._refusals = 0
        self._marks_paused_until = 0.0
        self._forgotten_id = forgotten_id
        """The last ``forgotten_nodes`` row taken in (``None``: forgotten nodes are not
        looked for); the collector reads it before it fills the live view and watermarks."""
        self._forget_check_s = forget_check_s
        self._records: collections.deque[Record] = collections.deque()
        """Records gathered and not (completely) written, in queue order."""
        self.last_commit: float | None = None
        """Clock monotonic time of the last commit (a batch or the counters); the collector's
        :class:`~collector.health.Health` reads it."""

    async def run(self) -> None:
        """Store until a :class:`StopUnit` arrives; raise :class:`StoreError` if the store fails."""
        mono = self._clock.monotonic
        next_retention = mono()
        next_counters = mono() + self._counters_every_s
        # At once: what a crash left staged (never, with rollups off).
        next_fold = mono() if self._store.rollups is not None else math.inf
        marking = self.watermarks is not None and self._watermark_interval_s > 0
        next_marks = mono() + self._watermark_interval_s if marking else float("inf")
        forgetting = self._forgotten_id is not None
        next_forget = mono() + self._forget_check_s if forgetting else math.inf
        while True:
            due = min(next_retention, next_counters, next_fold, next_marks, next_forget)
            first = await self._next(0.0 if self._records else due - mono())
            if first is not None:
                limit = self.batch_limit
                t0 = mono()
                units, records, stop, capped = self._gather(first, limit.now(t0))
                if units:
                    rows = await self._write_units(units)
                    limit.observe(rows, mono() - t0, capped=capped, t=t0)
                self._records.extend(records)
                if stop is not None:
                    while self._records:
                        await self._write_records(budget_s=math.inf)
                    await self.fold_rollups()
                    await self.flush_counters()
                    if marking:
                        while await self.flush_watermarks():
                            pass
                    stop.done.set_result(None)
                    return
            if self._records:
                await self._write_records(budget_s=RECORD_BUDGET_S)
            now = mono()
            due_fold = now >= next_fold or self._store.pending_rollups >= self._fold_samples
            if due_fold and self._queue_fold():
                next_fold = now + self._fold_s
            if now >= next_marks:
                more = await self._upkeep("watermarks", self.flush_watermarks())
                next_marks = now if more else now + self._watermark_interval_s
            if now >= next_forget:
                await self._upkeep("forget", self.forget_nodes())
                next_forget = now + self._forget_check_s
            if now >= next_counters:
                await self._upkeep("counters", self.flush_counters())
                next_counters = now + self._counters_every_s
            if now >= next_retention:
                more = await self._upkeep("retention", self._retention_chunk())
                next_retention = now if more else now + self._retention_check_s

    async def _upkeep(self, job: str, work: Awaitable[T]) -> T:
        """``work``, one of the writer's own periodic jobs, logged (debug) with its ms: the
        stall bench names what the writer did in a gap."""
        t0 = self._clock.monotonic()
        out = await work
        log.debug("upkeep_done", job=job, ms=round((self._clock.monotonic() - t0) * 1e3, 2))
        return out

    async def _write_records(self, budget_s: float) -> None:
        """Write the waiting records' parts, in order (at least one part), until none is
        left, ``budget_s`` is spent or units wait to be stored."""
        t0 = self._clock.monotonic()
        while self._records:
            if not await self._write_record(self._records[0]):
                self._records.popleft()
            if self._clock.monotonic() - t0 >= budget_s or not self._queue.empty():
                return

    async def _write_record(self, record: Record) -> bool:
        """Write one record's next part; return whether parts remain. One the store refuses
        is logged and counted (the rest of its parts dropped), ingestion goes on (refused
        delivery outcomes leave their outbox rows pending: they are sent again)."""
        t0 = self._clock.monotonic()
        try:
            more = await self._durably(lambda: record.write(self._store))
        except StoreError as exc:
            if exc.fatal:
                raise
            log.error("job_failed", job=record.name, error=str(exc))
            self.metrics.job_failures.labels(record.name).inc()
            return False
        self.last_commit = self._clock.monotonic()
        log.debug(
            "record_stored",
            job=record.name,
            ms=round((self.last_commit - t0) * 1e3, 2),
            more=bool(more),
        )
        return bool(more)

    async def _next(self, wait_s: float) -> WriterItem | None:
        """The next unit, waiting at most ``wait_s``; ``None`` when a periodic job is due."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if wait_s <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                return await self._queue.get()
        return None

    def _gather(
        self, first: WriterItem, most: int
    ) -> tuple[list[Unit], list[Record], StopUnit | None, bool]:
        """``first`` and the items already waiting behind it, up to ``most`` items; and
        whether it stopped there with more waiting."""
        units: list[Unit] = []
        records: list[Record] = []
        item: WriterItem = first
        size = 0
        while True:
            if isinstance(item, StopUnit):
                return units, records, item, False
            if isinstance(item, Unit):
                units.append(item)
                size += len(item.items)
            else:
                records.append(item)
            if self._queue.empty():
                return units, records, None, False
            if size >= most:
                return units, records, None, True
            item = self._queue.get_nowait()

    async def _write_units(self, units: list[Unit]) -> int:
        """Store the units' items in one batch, then acknowledge them; return how many.
        Watermarks riding this batch (:meth:`flush_watermarks`) are written in its
        transaction and published after its commit."""
        items = [item for unit in units for item in unit.items]
        t0 = self._clock.monotonic()
        riding, self._riding = self._riding, None
        marked = await self._store_items(items, riding or ())
        done = self._clock.monotonic()
        self.last_commit = done
        self.metrics.commit_seconds.observe(done - t0)
        acked = 0
        for unit in units:
            if unit.link is not None:
                self._link = unit.link
            if unit.acks and unit.link is not None:
                # After a reconnect the old link is closed: the broker redelivers those
                # messages to the new one, and the store drops the duplicates.
                with contextlib.suppress(MqttWireError):
                    unit.link.ack(unit.acks)
                    acked += len(unit.acks)
        if riding and marked and self.watermarks is not None:
            link = self._link
            if link is None or link.closed:
                self.watermarks.retry(riding)  # stored; published once connected
            else:
                self._publish_marks(self.watermarks, riding, link, t0)
        # age_ms: how long before this commit its oldest sample was taken, by the node's
        # clock (end-to-end latency; bench/bench_ingest_stall.py reads it).
        oldest = min((i.ts_ms for i in items if type(i) is SampleRow), default=None)
        log.debug(
            "batch_stored",
            items=len(items),
            acked=acked,
            ms=round((self._clock.monotonic() - t0) * 1000, 2),
            age_ms=None if oldest is None else round(self._clock.time() * 1000) - oldest,
        )
        return len(items)

    async def _store_items(
        self, items: Sequence[Item | MetaItem], marks: Sequence[WatermarkRow] = ()
    ) -> bool:
        """Write ``items`` (and watermark rows ``marks``) in one transaction; bisect around
        data SQLite refuses (``marks`` then go again at the next round, alone). Returns
        whether ``marks`` were committed with them."""
        rows: list[SampleRow] = []
        updates: dict[str, NodeUpdate] = {}
        quarantine: list[QuarantineRow] = []
        unkept: Counter[str] = Counter()
        meta: list[tuple[str, str]] = []
        for item in items:
            if isinstance(item, SampleRow):
                rows.append(item)
            elif isinstance(item, Rejected):
                if item.kept:
                    quarantine.append(item.quarantine)
                else:
                    unkept[item.quarantine.reason] += 1
            elif isinstance(item, NodeUpdate):
                prev = updates.get(item.node)
                updates[item.node] = item if prev is None else _merge(prev, item)
            else:
                meta.append((item.key, item.value))
        new_nodes = {r.node for r in rows} - self._known_nodes
        noted = rows
        live = self._ingestor.live
        if live is not None and (new_nodes or updates):
            # Validated before the pickup of their forget (see the module docstring); a
            # forgotten node is out of the known nodes, so its samples make it new here.
            gone = {n for n in new_nodes | updates.keys() if live.was_forgotten(n)}
            if gone:
                new_nodes -= gone
                updates = {n: u for n, u in updates.items() if n not in gone}
                noted = [r for r in rows if r.node not in gone]
        nodes, news = sorted(new_nodes), list(updates.values())
        try:
            inserted = await self._durably(
                lambda: self._store.write_batch(
                    rows, news, nodes, quarantine, meta, marks=marks, unkept=unkept
                )
            )
        except StoreError as exc:
            if exc.fatal:
                log.error("store_failed", error=str(exc))
                raise
            if marks and self.watermarks is not None:
                self.watermarks.retry(marks)
            if len(items) > 1:
                self.metrics.bisections.inc()
                half = len(items) // 2
                await self._store_items(items[:half])
                await self._store_items(items[half:])
                return False
            await self._quarantine_poison(items[0], exc)
            return False
        self._known_nodes |= new_nodes
        if self.watermarks is not None and noted:
            self.watermarks.note(noted, self._clock.time())
        m = self.metrics
        m.stored.inc(inserted)
        m.duplicates.inc(len(rows) - inserted)
        m.quarantined.inc(len(quarantine))
        return bool(marks)

    async def _quarantine_poison(self, item: Item | MetaItem, exc: StoreError) -> None:
        """One message the store refused: keep what we can of it in quarantine, ack it."""
        if isinstance(item, SampleRow):
            topic, payload = sample_topic(item.node), item.payload
        elif isinstance(item, NodeUpdate):
            topic = (
                status_topic(item.node) if item.inventory is None else inventory_topic(item.node)
            )
            payload = item.inventory or (item.status or "").encode()
        elif isinstance(item, Rejected):
            q = item.quarantine
            topic, payload = q.topic, q.payload_head
        else:
            topic, payload = f"meta/{item.key}", item.value.encode()
        rejected = self._ingestor.reject("store_refused", topic, payload, str(exc))
        try:
            await self._store.write_batch([], quarantine=[rejected.quarantine])
        except StoreError as again:
            # Not even a quarantine row can be written: the store is broken, not the message.
            log.error("store_failed", error=str(again), after=str(exc))
            raise StoreError(str(again), fatal=True, exit_code=1) from again
        self.metrics.quarantined.inc()

    def _queue_fold(self) -> bool:
        """Queue the rollups' fold behind the records waiting (its parts are written as a
        record's, between batches); false while one is in the line already."""
        if any(isinstance(r, _FoldRecord) for r in self._records):
            return False
        fold = self._store.rollup_fold()
        if fold is None:
            return False
        self._records.append(_FoldRecord(fold, self.metrics, self._clock))
        return True

    async def fold_rollups(self) -> None:
        """Fold the samples staged for the rollups into them, all of them before it returns
        (with rollups on; the stop, and tests)."""
        if self._store.rollups is None:
            return
        t0 = self._clock.monotonic()
        with _folding(self._store, self.metrics):
            folded = await self._store.fold_rollups()
        if folded:
            self.last_commit = self._clock.monotonic()
            log.debug("rollups_folded", samples=folded, ms=round((self.last_commit - t0) * 1e3, 2))

    async def forget_nodes(self) -> list[str]:
        """Stop tracking the nodes forgotten since the last look (see the module
        docstring); return them."""
        after = self._forgotten_id
        if after is None:
            return []
        rows = await self._durably(lambda: self._store.run(forgotten_after(after)))
        if not rows:
            return []
        self._forgotten_id = rows[-1].id
        nodes = list(dict.fromkeys(r.node for r in rows))
        self._known_nodes.difference_update(nodes)
        if self._ingestor.live is not None:
            self._ingestor.live.forget_at({r.node: r.at for r in rows})
        if self.watermarks is not None:
            for node in nodes:
                self.watermarks.forget(node)
        if self._riding is not None:
            gone = set(nodes)
            self._riding = [r for r in self._riding if r.node not in gone] or None
        await self._durably(lambda: drop_written(self._store, nodes))
        log.info("nodes_forgotten", nodes=len(nodes), first=nodes[:10])
        return nodes

    async def flush_counters(self) -> None:
        """Write the counters and per-node rejects; keep the quarantine bounded."""
        store, keep = self._store, self._quarantine_max_rows
        values, rejects = self._counter_values(), self._ingestor.take_node_rejects()
        trimmed = await self._durably(
            lambda: store.write_counters(
                values,
                self._clock.time(),
                rejects,
                keep_quarantine=keep,
                keep_node_rejects=keep,
            )
        )
        self.last_commit = self._clock.monotonic()
        if trimmed:
            self.metrics.quarantine_trimmed.inc(trimmed)

    async def flush_watermarks(self) -> bool:
        """Write changed watermarks (at most :data:`WATERMARKS_PER_FLUSH`), then (after that
        commit) publish them retained; return whether more of the round may go now.

        While units wait, the round rides the next batch instead: its rows are written in
        that batch's transaction and published after its commit (:meth:`_write_units`). A
        transaction of their own cost 30-60 ms between two sample batches at 5,000
        samples/s, a fixed cost whatever the rows (250 or 1,000: ``bench_ingest_stall.py``)."""
        marks = self.watermarks
        t0 = self._clock.monotonic()
        if marks is None or t0 < self._marks_paused_until or not self._judge_probe(marks, t0):
            return False
        link = self._link
        if link is None or link.closed:
            return False  # what changed stays due until there is a connection
        rows, self._riding = self._riding, None  # a batch did not come for them: alone
        if rows is None:
            rows = marks.due(self._clock.time(), WATERMARKS_PER_FLUSH)
            if not rows:
                return marks.pending > 0
            if not self._queue.empty():
                self._riding = rows
                return marks.pending > 0  # the rest of the round: with the batches after
        await write_watermarks(self._store, rows)
        self.last_commit = self._clock.monotonic()
        return self._publish_marks(marks, rows, link, t0)

    def _publish_marks(
        self, marks: Watermarks, rows: list[WatermarkRow], link: Acker, t0: float
    ) -> bool:
        """Publish committed watermark ``rows`` on ``link``; return whether more may go."""
        try:
            link.publish_retained([_watermark_message(r) for r in rows])
        except MqttWireError as exc:
            marks.retry(rows)
            log.debug("watermarks_not_published", nodes=len(rows), error=str(exc))
            return False
        self.metrics.watermarks_published.inc(len(rows))
        self.metrics.watermark_seconds.observe(self._clock.monotonic() - t0)
        if link is not self._verified:
            self._probe = (link, rows)
            return False  # a probe: judged at the next interval, before the rest goes
        return marks.pending > 0

    def _judge_probe(self, marks: Watermarks, now: float) -> bool:
        """Whether watermarks may be published: the last connection's first publish did not
        end it, or not three connections in a row (see the module docstring)."""
        probe, self._probe = self._probe, None
        if probe is None:
            return True
        link, rows = probe
        if not link.closed:
            self._verified, self._refusals = link, 0
            return True
        marks.retry(rows)
        self._refusals += 1
        if self._refusals < _REFUSALS:
            return True
        self._refusals = 0
        self._marks_paused_until = now + _REFUSED_PAUSE_S
        self.metrics.watermarks_refused.inc()
        log.error(
            "watermarks_refused",
            connections_lost=_REFUSALS,
            paused_s=_REFUSED_PAUSE_S,
            hint="the broker closed the connection right after each watermark publish: let "
            "the collector's user write them (deploy/mosquitto.acl: 'topic write "
            "capwatch/v1/watermarks/#'), or set watermark_interval_s = 0. Meanwhile agents "
            "forget samples at the broker's PUBACK",
        )
        return False

    async def _retention_chunk(self) -> bool:
        """Delete one chunk of samples that arrived before the window; True if more remain."""
        cutoff_ms = round((self._clock.time() - self._retention_s) * 1000)
        deleted = await self._durably(
            lambda: self._store.delete_older_than(cutoff_ms, self._retention_chunk_rows)
        )
        if deleted:
            self.metrics.retention_deleted.inc(deleted)
            log.info("retention_deleted", rows=deleted, cutoff_ms=cutoff_ms)
        more = deleted >= self._retention_chunk_rows
        store, now_ms = self._store, round(self._clock.time() * 1000)
        await self._durably(lambda: store.write_template_uses(now_ms))
        if not more:  # the samples past the window are gone: then the templates they named
            gone = await self._durably(
                lambda: store.delete_unused_templates(cutoff_ms, self._retention_chunk_rows)
            )
            if gone:
                log.info("templates_deleted", rows=gone, cutoff_ms=cutoff_ms)
            more = gone >= self._retention_chunk_rows
        for res, keep_s in self._rollup_retention_s.items():
            cutoff_s = self._clock.time() - keep_s
            gone = await self._store.delete_rollups_older_than(
                res, cutoff_s, self._retention_chunk_rows
            )
            if gone:
                log.info("rollup_retention_deleted", res_s=res, rows=gone, cutoff_s=cutoff_s)
            more = more or gone >= self._retention_chunk_rows
        return more

    async def _durably(self, write: Callable[[], Awaitable[T]]) -> T:
        """``write()``; while the store is unavailable, reconnect with backoff and write
        again (see the module docstring)."""
        delay = _RETRY_MIN_S
        while True:
            try:
                return await write()
            except StoreError as exc:
                if not exc.unavailable or self._stopping():
                    raise
                log.warning("store_unavailable", error=str(exc), retry_in_s=round(delay, 2))
            self.metrics.store_unavailable.inc()
            while True:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _RETRY_MAX_S)
                try:
                    await self._store.reconnect()
                except StoreError as exc:
                    if not exc.unavailable or self._stopping():
                        raise
                    log.warning("store_unreachable", error=str(exc), retry_in_s=round(delay, 2))
                    continue
                break


class _FoldRecord:
    """The rollups' fold (:class:`~collector.store.fold.Fold`) as a record: a part per
    :meth:`write`, the samples it takes over counted, the whole logged at its end."""

    name: Final = "rollups"

    def __init__(self, fold: Fold, metrics: WriterMetrics, clock: Clock) -> None:
        self._fold = fold
        self._metrics = metrics
        self._clock = clock
        self._t0 = clock.monotonic()

    async def write(self, store: Store) -> bool:
        with _folding(store, self._metrics):
            more = await self._fold.write(store)
        if not more and self._fold.samples:
            fold, wall_s = self._fold, self._clock.monotonic() - self._t0
            log.debug("rollups_folded", samples=fold.samples, parts=fold.parts, wall_s=wall_s)
        return more


@contextlib.contextmanager
def _folding(store: Store, metrics: WriterMetrics) -> Iterator[None]:
    """Around a fold's work (a part, or all of it): the heap's collections paused, and the
    samples it took over from collectors gone quiet counted, even when it then fails (what
    a committed takeover took is this collector's: a later fold does not count it again),
    and the buckets it held for a node over-reporting."""
    taken, over = store.rollups_taken_over, store.rollups_over_reported
    try:
        with heap.paused():
            yield
    finally:
        metrics.rollups_taken_over.inc(store.rollups_taken_over - taken)
        metrics.rollups_over_reported.inc(store.rollups_over_reported - over)


def _watermark_message(row: WatermarkRow) -> tuple[str, bytes]:
    mark = Watermark(v=1, node=row.node, epoch=row.epoch, seq=row.seq, top=row.top)
    return watermark_topic(row.node), encode(mark)


def _merge(old: NodeUpdate, new: NodeUpdate) -> NodeUpdate:
    """Fold two updates of one node; the later message wins field by field."""
    merged = NodeUpdate(old.node, old.status, old.status_ts, old.inventory, old.inventory_ts)
    if new.status is not None:
        merged.status, merged.status_ts = new.status, new.status_ts
    if new.inventory is not None:
        merged.inventory, merged.inventory_ts = new.inventory, new.inventory_ts
    return merged
