"""The collector's parts that its settings ask for, built and checked at start.

:class:`~collector.service.Collector` wires them together; each is built here from the
settings (a bad file or plan is one line and exit 2, before anything runs): the capacity job
(``capacity.plan``), the Redfish poller (``[[redfish.bmcs]]``), the usage ledger's job (with
rollups on), the writer, the election's lease, the leader's jobs of a term (alerts, webhook
delivery, Alertmanager push), the MQTT connections (and the share-group leader's live feed),
their families on /metrics, and the lock that keeps a second collector off a SQLite database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from collector.alerts.delivery import Delivery, DeliveryMetrics, read_pending
from collector.alerts.evaluator import Evaluator, EvaluatorMetrics
from collector.alerts.job import AlertJob, AlertJobMetrics
from collector.alerts.rule import Rule
from collector.governance.job import GovernanceJob
from collector.governance.ledger import LedgerJob
from collector.ingest.budgets import StallWatch
from collector.ingest.metrics import WriterMetrics
from collector.ingest.reader import Connect, Subscriber
from collector.ingest.validate import Ingestor
from collector.ingest.watermark import Watermarks
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView, NodeState
from collector.nodefacts import PowerReading
from collector.role import RecordQueue
from collector.settings import CollectorSettings
from collector.store.db import Store
from collector.store.rollups import HOUR, MINUTE
from shared.clock import Clock
from shared.errors import ConfigError, MqttWireError, PlanError
from shared.logging import get_logger
from shared.topics import LIVE_SUBSCRIPTION

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from collector.alerts.ampush import AlertmanagerPush, PushMetrics
    from collector.capacity.job import CapacityJob, CapacityJobMetrics
    from collector.metrics import CollectorMetrics
    from collector.paths import StoreTarget
    from collector.pdu.poller import PduPoller
    from collector.redfish.metrics import RedfishMetrics
    from collector.redfish.poller import RedfishPoller
    from collector.store.leader import LeaderLease
    from shared.schema import Inventory

__all__ = [
    "LeaderJobs",
    "add_metric_sources",
    "capacity_job",
    "leader_jobs",
    "leader_lease",
    "ledger_job",
    "live_feed",
    "mqtt_connectors",
    "only_collector",
    "polled_interval_s",
    "redfish_poller",
    "stored_nodes",
    "writer",
]

log = get_logger("collector")


def capacity_job(
    settings: CollectorSettings, clock: Clock, metrics: CapacityJobMetrics
) -> CapacityJob:
    """The capacity job for ``capacity.plan`` (read and checked now: a bad plan is exit 2)."""
    from collector.capacity.config import load_capacity_plan  # noqa: PLC0415
    from collector.capacity.job import CapacityJob  # noqa: PLC0415 (only with a plan)

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


def redfish_poller(
    settings: CollectorSettings,
    on_node: Callable[[str, PowerReading], None],
    clock: Clock,
    metrics: RedfishMetrics,
) -> RedfishPoller:
    """The poller for ``[redfish]`` (credentials read and checked now: exit 2 if bad)."""
    from collector.redfish.credentials import load_credentials  # noqa: PLC0415 (when on)
    from collector.redfish.poller import RedfishPoller  # noqa: PLC0415

    r = settings.redfish
    assert r.credentials_file is not None  # RedfishSettings requires it with bmcs
    _raise_open_files(len(r.bmcs) + 1024)  # a kept-alive socket per BMC
    return RedfishPoller(r, load_credentials(r.credentials_file), on_node, clock, metrics)


def ledger_job(
    settings: CollectorSettings,
    clock: Clock,
    governance: GovernanceJob,
    capacity: CapacityJob | None,
    live: LiveView,
) -> LedgerJob:
    """The usage ledger's job (rollups on): the capacity plan's node power model, if any."""
    model = None
    if capacity is not None:
        from collector.capacity.node import node_model_of  # noqa: PLC0415

        def inventory_of(node: str) -> Inventory | None:
            st = live.get(node)
            return None if st is None else st.inventory

        model = node_model_of(capacity.cplan, inventory_of)
    return LedgerJob(
        clock,
        retention_s=settings.rollups.retention_1h_s,
        interval_s=settings.rollups.ledger_interval_s,
        # Soon after a start: the hours a crash or an outage left dirty are recomputed
        # before the quotas' measured basis has to bridge them.
        first_interval_s=min(settings.rollups.ledger_interval_s, 10.0),
        governance=lambda: governance.view.gov,
        model=model,
    )


def mqtt_connectors(
    settings: CollectorSettings, ssl_context: ssl.SSLContext | None, unit_bytes: int
) -> tuple[Connect, Connect]:
    """New connections to the broker: the collector's persistent session, and the leader's
    live feed in a share group (a clean session of its own, ``<client id>-live``)."""
    from collector.ingest.subscriber import MqttSubscriber  # noqa: PLC0415 (not for tests)

    s, m = settings, settings.mqtt

    def connector(
        client_id: str, username: str | None, password: Callable[[], str | None], *, clean: bool
    ) -> Connect:
        def connect() -> Subscriber:
            return MqttSubscriber(
                m.host,
                m.port,
                client_id=client_id,
                username=username,
                password=password(),
                keepalive_s=m.keepalive_s,
                clean_session=clean,
                ssl_context=ssl_context,
                max_buffered=s.batch_max_rows,
                max_buffered_bytes=unit_bytes,
            )

        return connect

    client_id = s.session_client_id
    return (
        connector(client_id, m.username, m.password_value, clean=False),
        connector(f"{client_id}-live", m.live_username, m.live_password_value, clean=True),
    )


@contextlib.contextmanager
def only_collector(db: Path) -> Iterator[None]:
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


def add_metric_sources(
    metrics: CollectorMetrics,
    settings: CollectorSettings,
    capacity: CapacityJob | None,
    governance: GovernanceJob,
    redfish: RedfishPoller | None,
) -> None:
    """The parts' own families on /metrics: capacity (with a plan), quotas and cohorts, and
    the BMCs (with ``[[redfish.bmcs]]``)."""
    from collector.governance.metrics import (  # noqa: PLC0415 (only with /metrics)
        cohort_families,
        quota_families,
    )

    if capacity is not None:
        from collector.capacity.metrics import (  # noqa: PLC0415
            capacity_families,
            threshold_families,
        )

        state = capacity.state
        c = settings.capacity
        thresholds = threshold_families(c.warn_pct, c.critical_pct)

        async def capacity_source() -> list[Metric]:
            return capacity_families(state.latest.picture) + thresholds

        metrics.add(capacity_source)

    async def quota_source() -> list[Metric]:
        v = governance.view
        return quota_families(v.standings) + cohort_families(v.standings, v.cohorts)

    metrics.add(quota_source)
    if redfish is not None:
        from collector.redfish.metrics import bmc_families  # noqa: PLC0415

        bmcs = redfish.bmcs

        async def redfish_source() -> list[Metric]:
            return bmc_families(bmcs)

        metrics.add(redfish_source)


async def live_feed(
    connect: Connect,
    settings: CollectorSettings,
    observe: Callable[[str, bytes], bool],
    started: Callable[[], None],
    *,
    stalls: StallWatch | None = None,
) -> None:
    """The leader's view of every node's samples in a share group (it stores only its
    share): QoS 0 on a clean session of its own, into the live view only (``observe``).
    ``started`` is called at each subscription, before its first message: the live view
    counts gaps in ``seq`` from this stream alone, each node afresh after a (re)subscription
    (:meth:`collector.live.LiveView.feed_started`).
    ``stalls`` credits the feed's ingest budgets with the times the loop was held: what the
    broker sent meanwhile arrives at once. (A lost connection or a new term needs no credit:
    a clean session at QoS 0 gets nothing the broker held, only what is published after.)
    Reconnects with the reader's backoff; ends when the term is cancelled."""
    m = settings.mqtt
    delay = m.reconnect_min_s
    while True:
        try:
            async with (
                connect() as sub,
                contextlib.nullcontext() if stalls is None else stalls.watching(),
            ):
                await sub.subscribe([(LIVE_SUBSCRIPTION, 0)])
                started()
                log.info("mqtt_live_feed_on", topic=LIVE_SUBSCRIPTION)
                delay = m.reconnect_min_s
                while True:
                    batch = await sub.next_batch()
                    if stalls is not None:
                        stalls.seen()  # before the read: it may hold what a stall queued
                    for msg in batch:
                        observe(msg.topic, msg.payload)
        except MqttWireError as exc:
            log.warning("mqtt_live_feed_lost", error=str(exc), retry_in_s=round(delay, 2))
        await asyncio.sleep(delay)
        delay = min(m.reconnect_max_s, delay * 2) * random.uniform(0.5, 1.0)


def stored_nodes(db: StoreTarget) -> list[NodeState]:
    """Each node's newest stored sample, status and inventory (a new leader's live view)."""
    from collector.capacity.fromstore import nodes_from_store  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(db) as reader:
        return nodes_from_store(reader)


@dataclass(slots=True)
class LeaderJobs:
    """What one term of leadership runs beside the cycles."""

    alerts: AlertJob
    alerts_evaluator: Evaluator
    """The alert rules' states of this term (``/metrics`` reads them)."""
    delivery: Delivery | None
    push: AlertmanagerPush | None


def leader_jobs(
    settings: CollectorSettings,
    clock: Clock,
    rules: Iterable[Rule],
    queue: RecordQueue,
    token: int | None,
    *,
    metrics: tuple[AlertJobMetrics, DeliveryMetrics, PushMetrics | None],
    evaluator_metrics: EvaluatorMetrics,
    delivery_rescan_s: float,
    delivery_poll_s: float,
) -> LeaderJobs:
    """The leader's jobs for one term: the alert job on a new evaluator, the webhook
    delivery (with receivers) reading the outbox under ``token``, the Alertmanager push
    (with ``alertmanagers``); their records go to ``queue``."""
    s = settings
    alert_metrics, delivery_metrics, push_metrics = metrics
    delivery = None
    if s.receivers:
        delivery = Delivery(
            s.receivers,
            queue.put,
            clock,
            load_pending=read_pending(s.store_target, token),
            rescan_s=delivery_rescan_s,
            poll_s=delivery_poll_s,
            metrics=delivery_metrics,
        )
    push = None
    if s.alertmanagers:
        from collector.alerts.ampush import AlertmanagerPush  # noqa: PLC0415

        push = AlertmanagerPush(
            s.alertmanagers,
            clock,
            eval_interval_s=s.alerts.eval_interval_s,
            external_url=s.alerts.external_url,
            metrics=push_metrics,
            poll_s=delivery_poll_s,
        )
    evaluator = Evaluator(rules, metrics=evaluator_metrics)
    alerts = AlertJob(
        evaluator,
        clock,
        interval_s=s.alerts.eval_interval_s,
        metrics=alert_metrics,
        receivers=s.receivers,
        external_url=s.alerts.external_url,
        notify=None if delivery is None else delivery.offer,
        routes=s.alert_routes(),
        inhibit_rules=s.alert_inhibit_rules(),
        push=None if push is None else push.update,
    )
    return LeaderJobs(alerts, evaluator, delivery, push)


def writer(
    settings: CollectorSettings,
    store: Store,
    queue: asyncio.Queue[WriterItem],
    ingestor: Ingestor,
    clock: Clock,
    *,
    counter_values: Callable[[], dict[str, int]],
    metrics: WriterMetrics,
    watermarks: Watermarks | None,
    forgotten_id: int | None,
    stopping: Callable[[], bool],
) -> Writer:
    """The writer on ``store`` with the settings' batch, retention, rollup, quarantine and
    watermark bounds."""
    s = settings
    keep = {MINUTE: s.rollups.retention_1m_s, HOUR: s.rollups.retention_1h_s}
    return Writer(
        store,
        queue,
        ingestor,
        clock,
        batch_max_rows=s.batch_max_rows,
        retention_s=s.retention_s,
        retention_check_s=s.retention_check_s,
        retention_chunk_rows=s.retention_chunk_rows,
        rollup_retention_s=keep if s.rollups.enabled else None,
        rollup_fold_s=s.rollups.fold_interval_s,
        quarantine_max_rows=s.quarantine_max_rows,
        watermark_interval_s=s.watermark_interval_s,
        watermarks=watermarks,
        forgotten_id=forgotten_id,
        counter_values=counter_values,
        metrics=metrics,
        stopping=stopping,
    )


def leader_lease(settings: CollectorSettings) -> LeaderLease | None:
    """The election's lease (``None``: no election, a SQLite store's one collector leads):
    in the PostgreSQL store, or ``election.url``'s database."""
    if (url := settings.election_url()) is None:
        return None
    from collector.paths import PgTarget  # noqa: PLC0415
    from collector.store.leader import LeaderLease  # noqa: PLC0415 (psycopg)

    target = settings.store_target
    password = (
        target.password()
        if settings.election.url is None and isinstance(target, PgTarget)
        else None
    )
    return LeaderLease(url, password=password)


def polled_interval_s(
    settings: CollectorSettings, redfish: RedfishPoller | None, pdus: PduPoller | None
) -> float | None:
    """How often polled readings are stored: the shortest poll interval (``None``: no
    poller)."""
    every = [settings.redfish.interval_s] if redfish is not None else []
    every += [settings.pdus.interval_s] if pdus is not None else []
    return min(every) if every else None
