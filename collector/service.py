"""The collector daemon's lifecycle.

Data path (one way, through bounded queues)::

    broker --(QoS 1, persistent session)--> Reader --Unit--> bounded queue --> Writer
        --> SQLite (WAL, synchronous=FULL), then PUBACK for every message of the batch

:class:`Collector` builds what must be right before anything runs (the TLS context, the
store and its migrations), then runs the reader, the writer and the evaluator as named tasks
of one ``TaskGroup`` until :meth:`Collector.stop`. Messages are acknowledged only after the commit
that stored (or quarantined) them, so a crash, a kill or a power cut at any point loses
nothing the broker was told is stored: the broker redelivers the rest to the next collector
with the same client id, and the store drops the duplicates.

With ``[[redfish.bmcs]]``, the Redfish poller (:mod:`collector.redfish.poller`) is one more
task: it reads BMCs over the management network and hands each node's input power to the
live view, so capacity counts it; the newest reading per node reaches the store once per poll
interval (:mod:`collector.polled`), so commands that recompute from the store count it too.

Alert notifications leave through a third task, the webhook delivery (only when receivers
are configured): it reads the outbox over its own read-only connection, sends, and puts the
outcomes on the writer's queue; it never writes the store and the writer never waits for it.

The evaluator (:mod:`collector.evaluate`) runs the periodic cycles beside the writer:
governance, the alert rules and, with ``capacity.plan`` set, the capacity job (the live power
picture against the site's cap; the capacity rules join the alert rules). It reads a
snapshot of the live view and the store through its own read-only connection, and puts
what they make for the store on the writer's queue: the writer only writes and acknowledges.
Once the writer has stopped, the evaluator is cancelled (a record it still had queued is
dropped, as if that cycle had not run).

The leader's jobs (the alert, governance and capacity cycles, webhook delivery, the
Alertmanager push) run in a term of the collector's :class:`~collector.role.Role`: on a
SQLite store the one collector leads from the start; with an election (a PostgreSQL store),
only the elected collector runs them, after taking back the live view and the alert state
from the store, and they are cancelled the moment its term ends. The /metrics statistics
cycle runs on every collector.

The parts the settings ask for are built in :mod:`collector.parts`. The subscriber is
injectable (``connect``): tests drive batching, ack order, stop and poison handling without a
broker; the real one is :class:`MqttSubscriber`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from collector import parts
from collector.alerts.builtin import builtin_rules
from collector.alerts.delivery import DeliveryMetrics
from collector.alerts.evaluator import Evaluator, EvaluatorMetrics
from collector.alerts.job import AlertJobMetrics
from collector.counters import CounterRows, counter_values, value
from collector.evaluate import Cycle, PeriodicEvaluator
from collector.governance.job import GovernanceJob
from collector.governance.ledger import LedgerJob
from collector.governance.rules import governance_rules
from collector.health import Health
from collector.ingest.metrics import IngestMetrics, ReaderMetrics, WriterMetrics
from collector.ingest.reader import (
    UNIT_BYTES,
    UNIT_MESSAGES,
    Connect,
    Reader,
    load_last_read,
    load_session,
)
from collector.ingest.validate import Ingestor
from collector.ingest.watermark import Watermarks
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.polled import PolledPower
from collector.role import Election, Fence, FencedRecords, RecordQueue, Role, RoleMetrics
from collector.settings import CollectorSettings
from collector.store.db import Store
from collector.store.forget import last_forgotten, remembered_at_start
from collector.store.migrations import SCHEMA_CHECK_S, refuse_newest
from collector.store.rollups import TAKEOVER_FOLDS, RollupConfig
from collector.store.watermarks import load_watermarks, stored_above
from shared.clock import Clock, SystemClock
from shared.errors import StoreError
from shared.logging import get_logger
from shared.topics import collector_subscriptions

if TYPE_CHECKING:
    from collector.alerts.ampush import PushMetrics
    from collector.capacity.job import CapacityJob
    from collector.metrics import CollectorMetrics
    from collector.pdu.poller import PduPoller
    from collector.redfish.poller import RedfishPoller
    from shared.sdnotify import SdNotifier

__all__ = ["Collector"]

log = get_logger("collector")

_RESTORE_ABOVE_ROWS = 1_000_000
"""At most this many stored seqs above watermark holes are read back at start (a few per
node that has a hole; the bound keeps a pathological store from delaying the start)."""


class Collector:
    """One collector process. ``await Collector(settings).run()`` until :meth:`stop`."""

    def __init__(
        self,
        settings: CollectorSettings,
        *,
        clock: Clock | None = None,
        connect: Connect | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        """systemd's notify socket (``READY=1``, watchdog) when run by systemd."""
        self.clock: Clock = clock or SystemClock()
        self.registry = CollectorRegistry(auto_describe=False)
        """The one registry: each component registers its own metrics on it; ``/metrics``
        serves it. (No auto_describe: the scrape-time collector must not run at register.)"""
        ProcessCollector(registry=self.registry)
        self.ingest_metrics = IngestMetrics(self.registry)
        self.reader_metrics = ReaderMetrics(self.registry)
        self.writer_metrics = WriterMetrics(self.registry)
        self.delivery_metrics = DeliveryMetrics(self.registry)
        self.alert_metrics = AlertJobMetrics(self.registry)
        self.evaluator_metrics = EvaluatorMetrics(self.registry)
        self._counted: list[CounterRows] = [
            self.ingest_metrics,
            self.reader_metrics,
            self.writer_metrics,
            self.delivery_metrics,
            self.alert_metrics,
            self.evaluator_metrics,
        ]
        self.live = LiveView(
            max_nodes=settings.max_nodes, from_feed=settings.mqtt.share_group is not None
        )
        """The fleet as the alert rules see it: latest sample, status, inventory per node (in
        a share group its gaps counted from the leader's live feed only)."""
        self.watermarks = Watermarks(hole_s=settings.watermark_hole_s, max_nodes=settings.max_nodes)
        """Per node, what the store holds: published for the agents (``watermark_interval_s``)."""
        self.ingestor = Ingestor(
            self.clock,
            max_skew_s=settings.max_clock_skew_s,
            max_age_s=settings.retention_s,
            live=self.live,
            metrics=self.ingest_metrics,
            rollups=settings.rollups.enabled,
            budget=settings.ingest_budget,
        )
        self.governance = GovernanceJob(
            self.clock,
            interval_s=settings.governance.eval_interval_s,
            first_interval_s=settings.alerts.eval_interval_s,
            busy_util_pct=settings.governance.busy_util_pct,
            staleness=settings.staleness(),
        )
        """Tenants, quotas and leases from the store, and their usage from the live view."""
        self.capacity: CapacityJob | None = None
        """The capacity job (only with ``capacity.plan``): its ``state`` holds the picture."""
        rules = builtin_rules(settings.alerts, settings.staleness())
        if settings.capacity.plan is not None:
            # Imported only with a plan: the capacity job and the power model it loads were
            # ~0.1 s of every start's CPU without one (issue 14).
            from collector.capacity.job import CapacityJobMetrics  # noqa: PLC0415
            from collector.capacity.rules import capacity_rules  # noqa: PLC0415

            capacity_metrics = CapacityJobMetrics(self.registry)
            self._counted.append(capacity_metrics)
            self.capacity = parts.capacity_job(settings, self.clock, capacity_metrics)
            rules += capacity_rules(self.capacity.state, settings.capacity)
        rules += governance_rules(lambda: self.governance.view, settings.governance)
        self._rules = rules
        self.ledger: LedgerJob | None = None
        """The usage ledger's job (with rollups on): recomputes the hours the rollups moved."""
        if settings.rollups.enabled:
            self.ledger = parts.ledger_job(
                settings, self.clock, self.governance, self.capacity, self.live
            )
        self.evaluator = Evaluator(rules, metrics=self.evaluator_metrics)
        """The alert rules' states: the current term's (a new term takes them back anew)."""
        self.role_metrics = RoleMetrics(self.registry)
        self.role: Role | None = None
        """Leader or standby, once running (:mod:`collector.role`)."""
        self.leader_evaluator: PeriodicEvaluator | None = None
        """The evaluator of the current or last term (tests and benches watch its cycles)."""
        self.push_metrics: PushMetrics | None = None
        if settings.alertmanagers:
            from collector.alerts.ampush import PushMetrics  # noqa: PLC0415 (only when on)

            self.push_metrics = PushMetrics(self.registry)
            self._counted.append(self.push_metrics)
        self.polled = PolledPower(self.live)
        """Where the pollers hand their readings: the live view, and the store each interval."""
        self.redfish: RedfishPoller | None = None
        """The Redfish poller (only with ``[[redfish.bmcs]]``): BMC readings into the live view."""
        if settings.redfish.enabled:
            from collector.redfish.metrics import RedfishMetrics  # noqa: PLC0415 (when on)

            redfish_metrics = RedfishMetrics(self.registry)
            self._counted.append(redfish_metrics)
            self.redfish = parts.redfish_poller(
                settings, self.polled.on_node, self.clock, redfish_metrics
            )
        self.pdus: PduPoller | None = None
        """The PDU poller (only with ``[[pdus.units]]``): racks' draw into the live view."""
        if settings.pdus.enabled:
            from collector.pdu.metrics import PduMetrics  # noqa: PLC0415 (only when on)
            from collector.pdu.poller import PduPoller  # noqa: PLC0415

            pdu_metrics = PduMetrics(self.registry)
            self._counted.append(pdu_metrics)
            self.pdus = PduPoller(settings.pdus, self.polled.on_rack, self.clock, pdu_metrics)
        self._connect = connect
        self._live_connect: Connect | None = None
        """The leader's live feed in a share group (the real broker only, not for tests that
        inject ``connect``)."""
        self.unit_bytes = max(1 << 20, settings.queue_max_bytes // 16)
        """Payload bytes after which the subscriber stops reading until the reader takes them."""
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[WriterItem] | None = None
        self.connected = asyncio.Event()
        """Set while subscribed to the broker (tests and the demo wait on it)."""
        self.metrics: CollectorMetrics | None = None
        """The /metrics endpoint while running with ``metrics_listen`` (its ``port``)."""
        self.health: Health | None = None
        """Liveness (the watchdog) and readiness (``/readyz``), once running."""

    def exposition(self, store: Store) -> CollectorMetrics:
        """The /metrics sources over this collector's registry, live view and alerts."""
        from collector.metrics import CollectorMetrics  # noqa: PLC0415 (only when on)

        return CollectorMetrics(
            self.registry,
            store,
            self.settings,
            clock=self.clock,
            live=self.live,
            alert_states=lambda: self.evaluator.states(),  # noqa: PLW0108 (a new term replaces it)
        )

    def counter_values(self) -> dict[str, int]:
        """Every component's counters by their ``counters``-table names, and the queue's
        depth: what the table holds and ``collector_stopped`` logs (this process's)."""
        return {**counter_values(self._counted), "queue_units": self.queue_units[0]}

    @property
    def stored_total(self) -> int:
        """Sample rows this process stored (duplicates not counted)."""
        return value(self.writer_metrics.stored)

    def stop(self) -> None:
        """Ask :meth:`run` to finish: commit and ack what was received, close. Signal-safe."""
        self._stop.set()

    @property
    def queue_units(self) -> tuple[int, int]:
        """Units waiting in the writer's queue, and its size (0, 0 before it exists)."""
        q = self._queue
        return (0, 0) if q is None else (q.qsize(), q.maxsize)

    async def run(self) -> None:
        """Run until :meth:`stop`; raise :class:`StoreError` if the store cannot be written."""
        s = self.settings
        connect = self._connect
        if connect is None:  # the real broker (tests inject connect); TLS context once
            connect, self._live_connect = parts.mqtt_connectors(
                s, s.mqtt.tls_context(), self.unit_bytes
            )
        client_id = s.session_client_id
        session_key = f"{s.mqtt.host}:{s.mqtt.port}/{client_id}"
        log.info("collector_starting", db=str(s.store_target), session=session_key)
        if s.mqtt.username is not None and client_id != s.mqtt.username:
            log.warning(
                "client_id_differs_from_username",
                client_id=client_id,
                username=s.mqtt.username,
                hint="a broker with use_username_as_clientid (as shipped) keeps the session "
                "under the username; set client_id to the username or leave it unset",
            )
        target = s.store_target
        # SQLite: one collector per file. PostgreSQL takes several (each its own MQTT user).
        only = (
            parts.only_collector(target) if isinstance(target, Path) else contextlib.nullcontext()
        )
        with only:
            await self._run(connect, session_key)
        log.info("collector_stopped", **self.counter_values())

    async def _run(self, connect: Connect, session_key: str) -> None:
        s = self.settings
        rollups = None
        if s.rollups.enabled:
            rollups = RollupConfig(
                busy_util_pct=s.governance.busy_util_pct,
                takeover_after_s=TAKEOVER_FOLDS * s.rollups.fold_interval_s,
                stage_shards=s.rollups.fold_shards,
            )
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                Store(
                    s.store_target,
                    compress=s.compress_payloads,
                    synchronous=s.sqlite_synchronous,
                    rollups=rollups,
                    stage_owner=s.session_client_id,
                )
            )
            election = None
            if (lease := parts.leader_lease(s)) is not None:
                election = await stack.enter_async_context(lease)
            await self._run_on(store, election, connect, session_key)

    async def _run_on(
        self, store: Store, election: Election | None, connect: Connect, session_key: str
    ) -> None:
        s = self.settings
        # Before the live view and the watermarks are filled from the store: a node forgotten
        # after this read is forgotten by the writer, whatever they were filled with.
        forgotten_id = await store.run(last_forgotten())
        # Before the reader: what the broker queued for this session while no collector ran
        # may hold their messages from before their forget (dropped: collector.ingest.validate).
        # (A row of theirs written before a pickup that never came, the last collector
        # stopped in between, goes first: remembered_at_start.)
        forgotten, dropped = await remembered_at_start(
            store, s.max_nodes, max_skew_s=s.max_clock_skew_s
        )
        if dropped:
            log.warning("forgotten_nodes_rows_dropped", nodes=len(dropped), first=dropped[:10])
        self.live.forget_at({f.node: f.at for f in forgotten if f.node not in self.live})
        had_session, held = await load_session(store.meta, session_key)
        last_read = await load_last_read(store.meta, session_key)
        if self._marking:
            self.watermarks.restore(
                await load_watermarks(store),
                await stored_above(store, _RESTORE_ABOVE_ROWS),
                self.clock.time(),
            )
        # Each unit is at most unit_messages messages and UNIT_BYTES of payload (the
        # reader cuts each read into such units), so this bounds what waits in memory to
        # queue_max messages and queue_max_bytes, whichever is reached first.
        unit_messages = min(UNIT_MESSAGES, s.batch_max_rows)
        queue = self._queue = asyncio.Queue(
            maxsize=max(2, min(s.queue_max // unit_messages, s.queue_max_bytes // UNIT_BYTES))
        )
        reader = Reader(
            connect,
            self.ingestor,
            queue,
            topics=collector_subscriptions(s.mqtt.share_group),
            session_key=session_key,
            had_session=had_session,
            held=held,
            stop=self._stop,
            connected=self.connected,
            reconnect_min_s=s.mqtt.reconnect_min_s,
            reconnect_max_s=s.mqtt.reconnect_max_s,
            unit_messages=unit_messages,
            metrics=self.reader_metrics,
            last_read=last_read,
        )
        role = self.role = Role(
            s.session_client_id,
            self.clock,
            election=election,
            lease_s=s.election.lease_s,
            poll_s=s.election.poll_interval_s,
            metrics=self.role_metrics,
            lease_in_store=s.election.url is None,
        )
        hold_s = s.staleness().grace_s + 2 * s.alerts.eval_interval_s
        alone: parts.LeaderJobs | None = None
        if election is None:
            # One collector: it leads from the start, and takes back its alerts before
            # anything runs, as it always did. Firing alerts stay firing while the live view
            # refills after a restart: until a node that does not sample again could be
            # called stale, and two evaluations. The view starts from the store, as an
            # elected leader's does (_take_over): a node that stays silent through the
            # restart is stale since its last stored sample, not "never sampled".
            await self._live_from_store()
            alone = self._leader_jobs(queue, None)
            await alone.alerts.restore(store, hold_s=hold_s)
        metrics = None
        if s.metrics_listen is not None:
            metrics = self.metrics = self.exposition(store)
            parts.add_metric_sources(metrics, s, self.capacity, self.governance, self.redfish)
        if self.capacity is not None and election is None:
            await self.capacity.restore(store, window_s=s.capacity.rising_window_s)
        writer = parts.writer(
            s,
            store,
            queue,
            self.ingestor,
            self.clock,
            counter_values=self.counter_values,
            metrics=self.writer_metrics,
            watermarks=self.watermarks if self._marking else None,
            forgotten_id=forgotten_id,
            stopping=self._stop.is_set,
        )
        async with Store.open_readonly(s.store_target) as reads:
            # Every collector keeps its own /metrics statistics; the leader's cycles run in
            # its term (_lead).
            evaluator = PeriodicEvaluator(
                [] if metrics is None else [metrics],
                self.live,
                reads,
                queue,
                self.clock,
                metrics=self.writer_metrics,
            )
            health = self.health = Health(
                self.clock,
                limit_s=s.metrics_ready_commit_s,
                connected=self.connected,
                writer=writer,
                queue=queue,
                evaluator=evaluator,
                role=None if election is None else role.describe,
            )

            async def lead(fence: Fence) -> None:
                if alone is not None:
                    await self._lead(alone, reads, fence, health)
                    return
                await self._take_over(reads, fence, health, hold_s)

            until = asyncio.Event()
            serving = contextlib.nullcontext() if metrics is None else metrics.serve(health)
            async with serving, asyncio.TaskGroup() as tg:
                if (notifier := self.notifier) is not None:
                    tg.create_task(notifier.run(health.alive, self._stop), name="sd-notify")
                tg.create_task(reader.run(), name="mqtt-reader")
                evaluating = tg.create_task(evaluator.run(), name="evaluator")
                tg.create_task(role.run(lead, until), name="role")
                tg.create_task(_write_then(writer, until, evaluating), name="store-writer")
                tg.create_task(_watch_schema(reads, until), name="schema-watch")

    def _leader_jobs(self, queue: RecordQueue, token: int | None) -> parts.LeaderJobs:
        """The leader's jobs for one term (a new term starts from what the store holds)."""
        jobs = parts.leader_jobs(
            self.settings,
            self.clock,
            self._rules,
            queue,
            token,
            metrics=(self.alert_metrics, self.delivery_metrics, self.push_metrics),
            evaluator_metrics=self.evaluator_metrics,
            delivery_rescan_s=self.delivery_rescan_s,
            delivery_poll_s=self.delivery_poll_s,
        )
        self.evaluator = jobs.alerts_evaluator
        return jobs

    async def _live_from_store(self) -> int:
        """Fill the live view from the store (each node's newest stored sample, status and
        inventory), keeping what it already holds that is newer; return how many nodes.
        (The nodes forgotten that the store has not heard of since are not in it: the view
        knows them from the start, :meth:`_run_on`, and their restored alerts resolve at
        once.)"""
        stored = await asyncio.to_thread(parts.stored_nodes, self.settings.store_target)
        return self.live.merge(stored)

    async def _take_over(self, reads: Store, fence: Fence, health: Health, hold_s: float) -> None:
        """A new term of an elected leader: the live view filled from the store, the
        alerts and capacity history taken back, then the leader's jobs."""
        s = self.settings
        records = FencedRecords(_put_record(self._queue), fence)
        started = self.clock.monotonic()
        merged = await self._live_from_store()
        jobs = self._leader_jobs(records, fence.store_token)
        await records.put(await jobs.alerts.take_back(reads, hold_s=hold_s))
        if self.capacity is not None:
            await self.capacity.restore(reads, window_s=s.capacity.rising_window_s)
        log.info(
            "leader_took_over",
            token=fence.token,
            nodes=merged,
            ms=round((self.clock.monotonic() - started) * 1000),
        )
        await self._lead(jobs, reads, fence, health)

    async def _lead(
        self, jobs: parts.LeaderJobs, reads: Store, fence: Fence, health: Health
    ) -> None:
        """Run the leader's cycles, delivery and push until cancelled (the term ended)."""
        records = FencedRecords(_put_record(self._queue), fence)
        # The governance job starts each term from the store (another leader's usage
        # snapshot included), never from its own last term's; the ledger's too.
        self.governance.new_term()
        if self.ledger is not None:
            self.ledger.new_term()
        cycles: list[Cycle] = [
            # First: the governance rules and the ledger read its newest view, and the
            # others' first cycles wait for its first (collector.evaluate).
            self.governance,
            jobs.alerts,
            *([] if self.capacity is None else [self.capacity]),
            *([] if self.ledger is None else [self.ledger]),
        ]
        evaluator = PeriodicEvaluator(
            cycles,
            self.live,
            reads,
            records,
            self.clock,
            metrics=self.writer_metrics,
        )
        self.leader_evaluator = evaluator
        with health.watching(evaluator):
            async with asyncio.TaskGroup() as tg:
                if self.settings.mqtt.share_group is not None and self._live_connect is not None:
                    feed = parts.live_feed(
                        self._live_connect,
                        self.settings,
                        self.ingestor.observe,
                        self.live.feed_started,
                        stalls=self.ingestor.feed_stalls,
                    )
                    tg.create_task(feed, name="mqtt-live-feed")
                tg.create_task(evaluator.run(), name="leader-evaluator")
                if jobs.delivery is not None:
                    tg.create_task(jobs.delivery.run(), name="webhook-delivery")
                if jobs.push is not None:
                    tg.create_task(jobs.push.run(), name="alertmanager-push")
                if self.redfish is not None:
                    tg.create_task(self.redfish.run(self._stop), name="redfish-poller")
                if self.pdus is not None:
                    tg.create_task(self.pdus.run(), name="pdu-poller")
                if (
                    every := parts.polled_interval_s(self.settings, self.redfish, self.pdus)
                ) is not None:
                    tg.create_task(self.polled.run(records, every), name="polled-power")

    @property
    def _marking(self) -> bool:
        """Whether this collector publishes the store's watermarks. Not in a share group:
        each member stores only its share of a node's samples, so its own count of what is
        stored would show holes that another member filled (a watermark from the shared
        store's truth is not built yet); agents then forget samples at the PUBACK."""
        s = self.settings
        return s.watermark_interval_s > 0 and s.mqtt.share_group is None

    delivery_rescan_s: float = 10.0
    """How often the delivery re-reads the pending outbox (``--redeliver`` waits that long)."""
    delivery_poll_s: float = 1.0
    """How long a delivery worker sleeps before it looks at the clock again."""


async def _write_then(writer: Writer, until: asyncio.Event, evaluating: asyncio.Task[None]) -> None:
    """Run the writer; once it has stopped, end the leader's jobs (their records have no
    taker; the role releases the lease) and the /metrics statistics."""
    try:
        await writer.run()
    finally:
        until.set()
        evaluating.cancel()


async def _watch_schema(reads: Store, until: asyncio.Event) -> None:
    """Every :data:`~collector.store.migrations.SCHEMA_CHECK_S` until the writer has
    stopped: whether a newer capwatch migrated the store since this one started (its start
    refused one migrated before). Found, the :class:`StoreError` (exit 2) ends the collector,
    which would write it by the older schema's rules. A question the store cannot answer
    now (the server away: the writer waits for it) is asked again next time."""
    while not until.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SCHEMA_CHECK_S):
                await until.wait()
                return
        try:
            newest = await reads.newest_migration()
        except StoreError as exc:
            log.debug("schema_check_failed", error=str(exc))
            continue
        refuse_newest(reads.path, newest)


def _put_record(queue: asyncio.Queue[WriterItem] | None) -> RecordQueue:
    assert queue is not None
    return queue
