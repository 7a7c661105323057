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

The subscriber is injectable (``connect``): tests drive batching, ack order, stop and
poison handling without a broker; the real one is :class:`MqttSubscriber`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from collector.alerts.builtin import builtin_rules
from collector.alerts.delivery import Delivery, DeliveryMetrics, read_pending
from collector.alerts.job import AlertJob, AlertJobMetrics
from collector.alerts.rule import Evaluator
from collector.capacity.job import CapacityJob, CapacityJobMetrics
from collector.capacity.rules import capacity_rules
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
    Subscriber,
    load_session,
)
from collector.ingest.validate import Ingestor
from collector.ingest.watermark import Watermarks
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView, NodeState
from collector.polled import PolledPower
from collector.role import Election, Fence, FencedRecords, RecordQueue, Role, RoleMetrics
from collector.settings import CollectorSettings
from collector.store.db import Store
from collector.store.rollups import HOUR, MINUTE, RollupConfig
from collector.store.watermarks import load_watermarks, stored_above
from shared.clock import Clock, SystemClock
from shared.errors import ConfigError, MqttWireError, PlanError
from shared.logging import get_logger
from shared.topics import LIVE_SUBSCRIPTION, collector_subscriptions

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from collector.alerts.ampush import AlertmanagerPush, PushMetrics
    from collector.metrics import CollectorMetrics
    from collector.paths import StoreTarget
    from collector.pdu.poller import PduPoller
    from collector.redfish.poller import RedfishPoller
    from shared.schema import Inventory
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
        self._counted: list[CounterRows] = [
            self.ingest_metrics,
            self.reader_metrics,
            self.writer_metrics,
            self.delivery_metrics,
            self.alert_metrics,
        ]
        self.live = LiveView()
        """The fleet as the alert rules see it: latest sample, status, inventory per node."""
        self.watermarks = Watermarks(hole_s=settings.watermark_hole_s)
        """Per node, what the store holds: published for the agents (``watermark_interval_s``)."""
        self.ingestor = Ingestor(
            self.clock,
            max_skew_s=settings.max_clock_skew_s,
            max_age_s=settings.retention_s,
            live=self.live,
            metrics=self.ingest_metrics,
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
            capacity_metrics = CapacityJobMetrics(self.registry)
            self._counted.append(capacity_metrics)
            self.capacity = _capacity_job(settings, self.clock, capacity_metrics)
            rules += capacity_rules(self.capacity.state, settings.capacity)
        rules += governance_rules(lambda: self.governance.view, settings.governance)
        self._rules = rules
        self.ledger: LedgerJob | None = None
        """The usage ledger's job (with rollups on): recomputes the hours the rollups moved."""
        if settings.rollups.enabled:
            self.ledger = self._ledger_job(settings)
        self.evaluator = Evaluator(rules)
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
            self.redfish = self._redfish_poller(settings)
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

    def _redfish_poller(self, settings: CollectorSettings) -> RedfishPoller:
        """The poller for ``[redfish]`` (credentials read and checked now: exit 2 if bad)."""
        from collector.redfish.credentials import load_credentials  # noqa: PLC0415 (when on)
        from collector.redfish.metrics import RedfishMetrics  # noqa: PLC0415
        from collector.redfish.poller import RedfishPoller  # noqa: PLC0415

        r = settings.redfish
        assert r.credentials_file is not None  # RedfishSettings requires it with bmcs
        _raise_open_files(len(r.bmcs) + 1024)  # a kept-alive socket per BMC
        metrics = RedfishMetrics(self.registry)
        self._counted.append(metrics)
        return RedfishPoller(
            r, load_credentials(r.credentials_file), self.polled.on_node, self.clock, metrics
        )

    def _ledger_job(self, settings: CollectorSettings) -> LedgerJob:
        model = None
        if self.capacity is not None:
            from collector.capacity.compute import node_model_of  # noqa: PLC0415

            live = self.live

            def inventory_of(node: str) -> Inventory | None:
                st = live.get(node)
                return None if st is None else st.inventory

            model = node_model_of(self.capacity.cplan, inventory_of)
        governance = self.governance
        return LedgerJob(
            self.clock,
            interval_s=settings.rollups.ledger_interval_s,
            # Soon after a start: the hours a crash or an outage left dirty are recomputed
            # before the quotas' measured basis has to bridge them.
            first_interval_s=min(settings.rollups.ledger_interval_s, 10.0),
            governance=lambda: governance.view.gov,
            model=model,
        )

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
        connect = self._connect or self._mqtt_connect(s.mqtt.tls_context())  # once, up front
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
        only = _only_collector(target) if isinstance(target, Path) else contextlib.nullcontext()
        with only:
            await self._run(connect, session_key)
        log.info("collector_stopped", **self.counter_values())

    async def _run(self, connect: Connect, session_key: str) -> None:
        s = self.settings
        rollups = (
            RollupConfig(busy_util_pct=s.governance.busy_util_pct) if s.rollups.enabled else None
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
            if (url := s.election_url()) is not None:
                from collector.paths import PgTarget  # noqa: PLC0415
                from collector.store.leader import LeaderLease  # noqa: PLC0415 (psycopg)

                target = s.store_target
                password = (
                    target.password()
                    if s.election.url is None and isinstance(target, PgTarget)
                    else None
                )
                election = await stack.enter_async_context(LeaderLease(url, password=password))
            await self._run_on(store, election, connect, session_key)

    async def _run_on(
        self, store: Store, election: Election | None, connect: Connect, session_key: str
    ) -> None:
        s = self.settings
        had_session, held = await load_session(store.meta, session_key)
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
        alone: _LeaderJobs | None = None
        if election is None:
            # One collector: it leads from the start, and takes back its alerts before
            # anything runs, as it always did. Firing alerts stay firing while the live view
            # refills after a restart: until a node that does not sample again could be
            # called stale, and two evaluations.
            alone = self._leader_jobs(queue, None)
            await alone.alerts.restore(store, hold_s=hold_s)
        metrics = None
        if s.metrics_listen is not None:
            metrics = self.metrics = self.exposition(store)
            if self.capacity is not None:
                from collector.capacity.metrics import (  # noqa: PLC0415
                    capacity_families,
                    threshold_families,
                )

                state = self.capacity.state
                thresholds = threshold_families(s.capacity.warn_pct, s.capacity.critical_pct)

                async def capacity_source() -> list[Metric]:
                    return capacity_families(state.picture) + thresholds

                metrics.add(capacity_source)
            from collector.governance.metrics import (  # noqa: PLC0415
                cohort_families,
                quota_families,
            )

            governance = self.governance

            async def quota_source() -> list[Metric]:
                v = governance.view
                return quota_families(v.standings) + cohort_families(v.standings, v.cohorts)

            metrics.add(quota_source)
            if self.redfish is not None:
                from collector.redfish.metrics import bmc_families  # noqa: PLC0415

                bmcs = self.redfish.bmcs

                async def redfish_source() -> list[Metric]:
                    return bmc_families(bmcs)

                metrics.add(redfish_source)
        if self.capacity is not None and election is None:
            await self.capacity.restore(store, window_s=s.capacity.rising_window_s)
        writer = Writer(
            store,
            queue,
            self.ingestor,
            self.clock,
            batch_max_rows=s.batch_max_rows,
            retention_s=s.retention_s,
            retention_check_s=s.retention_check_s,
            retention_chunk_rows=s.retention_chunk_rows,
            rollup_retention_s=(
                {MINUTE: s.rollups.retention_1m_s, HOUR: s.rollups.retention_1h_s}
                if s.rollups.enabled
                else None
            ),
            rollup_fold_s=s.rollups.fold_interval_s,
            quarantine_max_rows=s.quarantine_max_rows,
            counter_values=self.counter_values,
            metrics=self.writer_metrics,
            watermarks=self.watermarks if self._marking else None,
            watermark_interval_s=s.watermark_interval_s,
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
                job_failures=self.writer_metrics.job_failures,
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

    def _leader_jobs(self, queue: RecordQueue, token: int | None) -> _LeaderJobs:
        """The leader's jobs for one term (a new term starts from what the store holds)."""
        s = self.settings
        delivery = None
        if s.receivers:
            delivery = Delivery(
                s.receivers,
                queue.put,
                self.clock,
                load_pending=read_pending(s.store_target, token),
                rescan_s=self.delivery_rescan_s,
                poll_s=self.delivery_poll_s,
                metrics=self.delivery_metrics,
            )
        push = None
        if s.alertmanagers:
            from collector.alerts.ampush import AlertmanagerPush  # noqa: PLC0415

            push = AlertmanagerPush(
                s.alertmanagers,
                self.clock,
                eval_interval_s=s.alerts.eval_interval_s,
                external_url=s.alerts.external_url,
                metrics=self.push_metrics,
                poll_s=self.delivery_poll_s,
            )
        self.evaluator = Evaluator(self._rules)
        alerts = AlertJob(
            self.evaluator,
            self.clock,
            interval_s=s.alerts.eval_interval_s,
            metrics=self.alert_metrics,
            receivers=s.receivers,
            external_url=s.alerts.external_url,
            notify=None if delivery is None else delivery.offer,
            routes=s.alert_routes(),
            inhibit_rules=s.alert_inhibit_rules(),
            push=None if push is None else push.update,
        )
        return _LeaderJobs(alerts, delivery, push)

    async def _take_over(self, reads: Store, fence: Fence, health: Health, hold_s: float) -> None:
        """A new term of an elected leader: the live view filled from the store, the
        alerts and capacity history taken back, then the leader's jobs."""
        s = self.settings
        records = FencedRecords(_put_record(self._queue), fence)
        started = self.clock.monotonic()
        merged = self.live.merge(await asyncio.to_thread(_stored_nodes, s.store_target))
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

    async def _lead(self, jobs: _LeaderJobs, reads: Store, fence: Fence, health: Health) -> None:
        """Run the leader's cycles, delivery and push until cancelled (the term ended)."""
        records = FencedRecords(_put_record(self._queue), fence)
        cycles: list[Cycle] = [
            self.governance,  # first: the governance rules read its view
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
            job_failures=self.writer_metrics.job_failures,
        )
        self.leader_evaluator = evaluator
        with health.watching(evaluator):
            async with asyncio.TaskGroup() as tg:
                if self.settings.mqtt.share_group is not None and self._live_connect is not None:
                    tg.create_task(self._live_feed(self._live_connect), name="mqtt-live-feed")
                tg.create_task(evaluator.run(), name="leader-evaluator")
                if jobs.delivery is not None:
                    tg.create_task(jobs.delivery.run(), name="webhook-delivery")
                if jobs.push is not None:
                    tg.create_task(jobs.push.run(), name="alertmanager-push")
                if self.redfish is not None:
                    tg.create_task(self.redfish.run(self._stop), name="redfish-poller")
                if self.pdus is not None:
                    tg.create_task(self.pdus.run(), name="pdu-poller")
                if (every := self._polled_interval_s) is not None:
                    tg.create_task(self.polled.run(records, every), name="polled-power")

    async def _live_feed(self, connect: Connect) -> None:
        """The leader's view of every node's samples in a share group (it stores only its
        share): QoS 0 on a clean session of its own, into the live view only. Reconnects
        with the reader's backoff; ends when the term is cancelled."""
        s = self.settings
        delay = s.mqtt.reconnect_min_s
        while True:
            try:
                async with connect() as sub:
                    await sub.subscribe([(LIVE_SUBSCRIPTION, 0)])
                    log.info("mqtt_live_feed_on", topic=LIVE_SUBSCRIPTION)
                    delay = s.mqtt.reconnect_min_s
                    observe = self.ingestor.observe
                    while True:
                        for m in await sub.next_batch():
                            observe(m.topic, m.payload)
            except MqttWireError as exc:
                log.warning("mqtt_live_feed_lost", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
            delay = min(s.mqtt.reconnect_max_s, delay * 2) * random.uniform(0.5, 1.0)

    @property
    def _polled_interval_s(self) -> float | None:
        """How often polled readings are stored: the shortest poll interval (``None``: no
        poller)."""
        s = self.settings
        every = [s.redfish.interval_s] if self.redfish is not None else []
        every += [s.pdus.interval_s] if self.pdus is not None else []
        return min(every) if every else None

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

    def _mqtt_connect(self, ssl_context: ssl.SSLContext | None) -> Connect:
        from collector.ingest.subscriber import MqttSubscriber  # noqa: PLC0415 (not for tests)

        s = self.settings

        def live() -> Subscriber:
            return MqttSubscriber(
                s.mqtt.host,
                s.mqtt.port,
                client_id=f"{s.session_client_id}-live",
                username=s.mqtt.live_username,
                password=s.mqtt.live_password_value(),
                keepalive_s=s.mqtt.keepalive_s,
                clean_session=True,
                ssl_context=ssl_context,
                max_buffered=s.batch_max_rows,
                max_buffered_bytes=self.unit_bytes,
            )

        self._live_connect = live

        def connect() -> Subscriber:
            return MqttSubscriber(
                s.mqtt.host,
                s.mqtt.port,
                client_id=s.session_client_id,
                username=s.mqtt.username,
                password=s.mqtt.password_value(),
                keepalive_s=s.mqtt.keepalive_s,
                clean_session=False,
                ssl_context=ssl_context,
                max_buffered=s.batch_max_rows,
                max_buffered_bytes=self.unit_bytes,
            )

        return connect


def _capacity_job(
    settings: CollectorSettings, clock: Clock, metrics: CapacityJobMetrics
) -> CapacityJob:
    """The capacity job for ``capacity.plan`` (read and checked now: a bad plan is exit 2)."""
    from collector.capacity.config import load_capacity_plan  # noqa: PLC0415

    c = settings.capacity
    assert c.plan is not None
    try:
        cplan = load_capacity_plan(c.plan)
    except (PlanError, ConfigError) as exc:  # ConfigError: unreadable, not .toml/.json
        raise ConfigError(
            f"setting 'capacity.plan' ({c.plan}): {exc}", field="capacity.plan"
        ) from exc
    return CapacityJob(
        cplan,
        clock,
        interval_s=c.interval_s,
        keep_s=c.keep_s,
        staleness=settings.staleness(),
        stale_basis=c.stale_basis,
        rest_basis=c.rest_basis,
        metrics=metrics,
    )


def _raise_open_files(wanted: int) -> None:
    """Raise the soft limit on open files towards ``wanted`` (up to the hard limit, as Go
    programs do at start): systemd's default soft limit, 1,024, is less than a socket per
    BMC of a large fleet beside the store and the broker."""
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open_files_limited",
            limit=target,
            wanted=wanted,
            hint="raise LimitNOFILE= in the unit: each polled BMC keeps a socket open",
        )


async def _write_then(writer: Writer, until: asyncio.Event, evaluating: asyncio.Task[None]) -> None:
    """Run the writer; once it has stopped, end the leader's jobs (their records have no
    taker; the role releases the lease) and the /metrics statistics."""
    try:
        await writer.run()
    finally:
        until.set()
        evaluating.cancel()


def _put_record(queue: asyncio.Queue[WriterItem] | None) -> RecordQueue:
    assert queue is not None
    return queue


def _stored_nodes(db: StoreTarget) -> list[NodeState]:
    """Each node's newest stored sample, status and inventory (a new leader's live view)."""
    from collector.capacity.fromstore import nodes_from_store  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(db) as reader:
        return nodes_from_store(reader)


@dataclass(slots=True)
class _LeaderJobs:
    """What one term of leadership runs beside the cycles."""

    alerts: AlertJob
    delivery: Delivery | None
    push: AlertmanagerPush | None


@contextlib.contextmanager
def _only_collector(db: Path) -> Iterator[None]:
    """Refuse to run beside another collector on the same database.

    Two would share one broker session (same client id): each connect takes the session from
    the other, and the broker's backlog goes wherever the last one connected.
    """
    lock = db.with_name(db.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {str(lock)!r} next to the database: {exc.strerror}: "
            "set db_path (--db / CAPWATCH_DB_PATH) to a writable folder",
            field="db_path",
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"another collector (pid {holder}) is using the database {str(db)!r}: stop "
                "it first, or give this one its own db_path (--db) and its own MQTT user",
                field="db_path",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
