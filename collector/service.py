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

The subscriber is injectable (``connect``): tests drive batching, ack order, stop and
poison handling without a broker; the real one is :class:`MqttSubscriber`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import ssl
from collections.abc import Iterator
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
from collector.governance.rules import governance_rules
from collector.health import Health
from collector.ingest.metrics import IngestMetrics, ReaderMetrics, WriterMetrics
from collector.ingest.reader import FILTERS_META_KEY, Connect, FilterState, Reader, Subscriber
from collector.ingest.validate import Ingestor
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.settings import CollectorSettings
from collector.store.db import Store
from shared.clock import Clock, SystemClock
from shared.errors import ConfigError, PlanError
from shared.logging import get_logger
from shared.topics import collector_subscriptions

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from collector.alerts.ampush import AlertmanagerPush, PushMetrics
    from collector.metrics import CollectorMetrics
    from shared.sdnotify import SdNotifier

__all__ = ["Collector"]

log = get_logger("collector")


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
        self.evaluator = Evaluator(rules)
        self.push_metrics: PushMetrics | None = None
        if settings.alertmanagers:
            from collector.alerts.ampush import PushMetrics  # noqa: PLC0415 (only when on)

            self.push_metrics = PushMetrics(self.registry)
            self._counted.append(self.push_metrics)
        self._connect = connect
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
            alert_states=self.evaluator.states,
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
        log.info("collector_starting", db=str(s.db_path), session=session_key)
        if s.mqtt.username is not None and client_id != s.mqtt.username:
            log.warning(
                "client_id_differs_from_username",
                client_id=client_id,
                username=s.mqtt.username,
                hint="a broker with use_username_as_clientid (as shipped) keeps the session "
                "under the username; set client_id to the username or leave it unset",
            )
        with _only_collector(s.db_path):
            await self._run(connect, session_key)
        log.info("collector_stopped", **self.counter_values())

    async def _run(self, connect: Connect, session_key: str) -> None:
        s = self.settings
        async with Store(
            s.db_path, compress=s.compress_payloads, synchronous=s.sqlite_synchronous
        ) as store:
            had_session = await store.meta("mqtt_session") == session_key
            held = FilterState.from_json(await store.meta(FILTERS_META_KEY))
            # Each unit is one read: at most batch_max_rows messages or unit_bytes of payload
            # (the subscriber pauses there), so this bounds what waits in memory to about
            # queue_max messages and queue_max_bytes.
            self._queue = asyncio.Queue(
                maxsize=max(
                    2, min(s.queue_max // s.batch_max_rows, s.queue_max_bytes // self.unit_bytes)
                )
            )
            reader = Reader(
                connect,
                self.ingestor,
                self._queue,
                topics=collector_subscriptions(s.mqtt.share_group),
                session_key=session_key,
                had_session=had_session,
                held=held,
                stop=self._stop,
                connected=self.connected,
                reconnect_min_s=s.mqtt.reconnect_min_s,
                reconnect_max_s=s.mqtt.reconnect_max_s,
                metrics=self.reader_metrics,
            )
            delivery = None
            if s.receivers:
                delivery = Delivery(
                    s.receivers,
                    self._queue.put,
                    self.clock,
                    load_pending=read_pending(s.db_path),
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
            # Firing alerts stay firing while the live view refills after a restart: until a
            # node that does not sample again could be called stale, and two evaluations.
            await alerts.restore(store, hold_s=s.staleness().grace_s + 2 * alerts.interval_s)
            metrics = None
            if s.metrics_listen is not None:
                metrics = self.metrics = self.exposition(store)
                if self.capacity is not None:
                    from collector.capacity.metrics import capacity_families  # noqa: PLC0415

                    state = self.capacity.state

                    async def capacity_source() -> list[Metric]:
                        return capacity_families(state.picture)

                    metrics.add(capacity_source)
                from collector.governance.metrics import quota_families  # noqa: PLC0415

                governance = self.governance

                async def quota_source() -> list[Metric]:
                    return quota_families(governance.view.standings)

                metrics.add(quota_source)
            if self.capacity is not None:
                await self.capacity.restore(store, window_s=s.capacity.rising_window_s)
            writer = Writer(
                store,
                self._queue,
                self.ingestor,
                self.clock,
                batch_max_rows=s.batch_max_rows,
                retention_s=s.retention_s,
                retention_check_s=s.retention_check_s,
                retention_chunk_rows=s.retention_chunk_rows,
                quarantine_max_rows=s.quarantine_max_rows,
                counter_values=self.counter_values,
                metrics=self.writer_metrics,
            )
            cycles: list[Cycle] = [
                self.governance,  # first: the governance rules read its view
                alerts,
                *([] if self.capacity is None else [self.capacity]),
                *([] if metrics is None else [metrics]),
            ]
            async with Store.open_readonly(s.db_path) as reads:
                evaluator = PeriodicEvaluator(
                    cycles,
                    self.live,
                    reads,
                    self._queue,
                    self.clock,
                    job_failures=self.writer_metrics.job_failures,
                )
                health = self.health = Health(
                    self.clock,
                    limit_s=s.metrics_ready_commit_s,
                    connected=self.connected,
                    writer=writer,
                    queue=self._queue,
                    evaluator=evaluator,
                )
                serving = contextlib.nullcontext() if metrics is None else metrics.serve(health)
                async with serving, asyncio.TaskGroup() as tg:
                    if (notifier := self.notifier) is not None:
                        tg.create_task(notifier.run(health.alive, self._stop), name="sd-notify")
                    tg.create_task(reader.run(), name="mqtt-reader")
                    evaluating = tg.create_task(evaluator.run(), name="evaluator")
                    tg.create_task(
                        _write_then(writer, delivery, push, evaluating), name="store-writer"
                    )
                    if delivery is not None:
                        tg.create_task(delivery.run(), name="webhook-delivery")
                    if push is not None:
                        tg.create_task(push.run(), name="alertmanager-push")

    delivery_rescan_s: float = 10.0
    """How often the delivery re-reads the pending outbox (``--redeliver`` waits that long)."""
    delivery_poll_s: float = 1.0
    """How long a delivery worker sleeps before it looks at the clock again."""

    def _mqtt_connect(self, ssl_context: ssl.SSLContext | None) -> Connect:
        from collector.ingest.subscriber import MqttSubscriber  # noqa: PLC0415 (not for tests)

        s = self.settings

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
        metrics=metrics,
    )


async def _write_then(
    writer: Writer,
    delivery: Delivery | None,
    push: AlertmanagerPush | None,
    evaluating: asyncio.Task[None],
) -> None:
    """Run the writer; once it has stopped, stop the evaluator, the delivery (their records
    have no taker) and the Alertmanager push (no more alerts come)."""
    try:
        await writer.run()
    finally:
        evaluating.cancel()
        if delivery is not None:
            delivery.stop()
        if push is not None:
            push.stop()


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
