"""The ingest path's metrics: validation, the reader's connection, the writer's commits.

One object per component, created on the registry the collector hands down (as
prometheus_client and Alertmanager's ``NewMetrics(registerer)`` do); the component
increments its own typed counters. Labelled counters have their children bound here, once:
a message on the hot path costs an ``inc()``, never a ``labels()`` lookup, and a label value
never comes from the wire (a reject reason is one of :data:`REJECT_REASONS`, whatever a
hostile message says).

``counter_rows()`` names each counter as the ``counters`` table has it
(:mod:`collector.counters`).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from collector.counters import LoopCounter, labelled_values, value

__all__ = [
    "COMMIT_BUCKETS_S",
    "CYCLE_BUCKETS_S",
    "OTHER_REASON",
    "REJECT_REASONS",
    "IngestMetrics",
    "ReaderMetrics",
    "WriterMetrics",
]

REJECT_REASONS: Final = (
    "bad_topic",  # not capwatch/v1/nodes/<node>/<kind>, or an unknown kind
    "too_large",  # payload over MAX_PAYLOAD_BYTES
    "not_json",  # shared.schema: not JSON, or nested too deeply
    "version",  # shared.schema: a `v` this collector does not know
    "invalid",  # shared.schema: a field missing, of the wrong type or out of bounds
    "undecodable",  # the decoder raised something else
    "topic_mismatch",  # the payload's node is not the topic's
    "clock_skew",  # stamped too far ahead of the collector's clock
    "too_old",  # older than the retention window
    "forgotten",  # a decommissioned node's, stamped before its forget (inventory forget)
    "fleet_full",  # a new node when the collector already tracks max_nodes
    "rate_limited",  # the node is over its ingest budget (shared.budget), refused undecoded
    "store_refused",  # valid, but SQLite refused the row (the writer's bisection found it)
)
"""Why a message is rejected: the ``reason`` label's values, and the quarantine's."""
OTHER_REASON: Final = "other"
"""Where a reason outside :data:`REJECT_REASONS` is counted (a new one someone forgot here)."""

COMMIT_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CYCLE_BUCKETS_S: Final = (*COMMIT_BUCKETS_S, 10.0, 30.0, 60.0, 120.0, 300.0)
"""An evaluator cycle's: a commit's, then up to minutes (a ledger run catching up on 48 hours
takes seconds, and /readyz calls a cycle late past ``metrics_ready_commit_s``, 30 s)."""

_NS: Final = "capwatch_collector"


class IngestMetrics:
    """What validation counts (:class:`~collector.ingest.validate.Ingestor`).

    The unlabelled counters are :class:`~collector.counters.LoopCounter`: the validator counts
    every message on the event loop, and prometheus_client's mutex was ~1.6 us of each
    sample's (issue 14); scraped, they are the counters they were."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> LoopCounter:
            return LoopCounter(name, doc, namespace=_NS, registry=registry)

        self.received = counter("messages_received", "MQTT messages received (all topics).")
        self.samples = counter("samples_valid", "Sample messages that passed validation.")
        self.status = counter("status_valid", "Status messages that passed validation.")
        self.inventory = counter("inventory_valid", "Inventory messages that passed validation.")
        self.retained_cleared = counter(
            "retained_cleared",
            "Empty status or inventory messages: a retained message cleared (decommission).",
        )
        self.rejected = Counter(
            "messages_rejected",
            "Messages rejected, by reason.",
            ("reason",),
            namespace=_NS,
            registry=registry,
        )
        self.rejected_by: Final = {
            reason: self.rejected.labels(reason) for reason in (*REJECT_REASONS, OTHER_REASON)
        }
        """The ``rejected`` children, bound once, by reason."""

    def counter_rows(self) -> dict[str, int]:
        """``received``, ``samples``, ``status``, ``inventory``, ``retained_cleared``,
        ``rejected`` and ``rejected_<reason>``."""
        by_reason = labelled_values(self.rejected)
        return {
            "received": value(self.received),
            "samples": value(self.samples),
            "status": value(self.status),
            "inventory": value(self.inventory),
            "retained_cleared": value(self.retained_cleared),
            "rejected": sum(by_reason.values()),
            **{f"rejected_{reason}": n for reason, n in by_reason.items()},
        }


class ReaderMetrics:
    """The broker connection's events (:class:`~collector.ingest.reader.Reader`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, namespace=_NS, registry=registry)

        self.disconnects = counter("mqtt_disconnects", "Connections to the broker lost.")
        self.not_authorized = counter(
            "mqtt_not_authorized", "Connections the broker refused (bad credentials, no right)."
        )
        self.session_contested = counter(
            "mqtt_session_contested",
            "Times the broker kept closing new connections (another client with our id).",
        )
        self.sessions_lost = counter(
            "mqtt_sessions_lost",
            "Connections where the broker had lost our persistent session (messages lost).",
        )
        self.waits = counter(
            "reader_waits", "Reads that waited for room in the writer's queue (back-pressure)."
        )

    def counter_rows(self) -> dict[str, int]:
        """``mqtt_disconnects``, ``mqtt_not_authorized``, ``mqtt_session_contested``,
        ``mqtt_sessions_lost``, ``reader_waits``."""
        return {
            "mqtt_disconnects": value(self.disconnects),
            "mqtt_not_authorized": value(self.not_authorized),
            "mqtt_session_contested": value(self.session_contested),
            "mqtt_sessions_lost": value(self.sessions_lost),
            "reader_waits": value(self.waits),
        }


class WriterMetrics:
    """What the writer stores, drops and refuses (:class:`~collector.ingest.writer.Writer`).

    ``job_failures`` is shared with the evaluator: a job fails either in its cycle or when
    the store refuses its record, and both count under its name. ``cycle_seconds`` is the
    evaluator's (:class:`~collector.evaluate.PeriodicEvaluator`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=_NS, registry=registry)

        self.stored = counter("samples_stored", "Sample rows stored (duplicates not counted).")
        self.duplicates = counter(
            "samples_duplicate", "Samples already stored (redeliveries), dropped."
        )
        self.quarantined = counter("messages_quarantined", "Rejected messages kept in quarantine.")
        self.bisections = counter(
            "store_bisections", "Batches split in two to find a row the store refused."
        )
        self.store_unavailable = counter(
            "store_unavailable",
            "Writes that found the store unavailable (PostgreSQL restarting, failing over) "
            "and were retried after a reconnect.",
        )
        self.quarantine_trimmed = counter(
            "quarantine_trimmed_rows", "Quarantine rows deleted to keep it bounded (oldest first)."
        )
        self.retention_deleted = counter(
            "retention_deleted_rows", "Sample rows deleted by retention."
        )
        self.rollups_over_reported = counter(
            "rollup_buckets_over_reported",
            "Rollup buckets whose node's samples reported more seconds (interval_s) than "
            "the bucket spans plus the longest interval a sample may claim: held to what "
            "the bucket may hold (a node over-reporting; the fold logs which).",
        )
        self.rollups_taken_over = counter(
            "rollup_samples_taken_over",
            "Staged samples of another collector of the store, gone quiet (no fold for "
            "rollups.fold_interval_s x 10), folded by this one.",
        )
        self.job_failures = counter("job_failures", "Periodic jobs that failed, by job.", ("job",))
        self.cycle_seconds = Histogram(
            "cycle_duration_seconds",
            "Time one evaluator cycle took, by job (alerts, governance, capacity, ledger): "
            "from its snapshot of the live view to its record queued for the writer (a cycle "
            "that failed is counted in job_failures instead). Labelled cycle, not job: "
            "Prometheus gives every target a job label.",
            ("cycle",),
            namespace=_NS,
            buckets=CYCLE_BUCKETS_S,
            registry=registry,
        )
        self.watermarks_published = counter(
            "watermarks_published",
            "Watermark messages published (one per node whose store watermark changed, at "
            "most once per watermark_interval_s).",
        )
        self.watermarks_refused = counter(
            "watermarks_refused",
            "Times watermark publishing was paused for an hour: the broker closed three "
            "connections in a row right after a watermark publish (its ACL refuses them).",
        )
        self.watermark_seconds = Histogram(
            "watermark_flush_seconds",
            "Time to write the changed watermarks (one transaction) and publish them.",
            namespace=_NS,
            buckets=COMMIT_BUCKETS_S,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "batch_commit_seconds",
            "Time to store one batch (one transaction) and learn it is durable.",
            namespace=_NS,
            buckets=COMMIT_BUCKETS_S,
            registry=registry,
        )

    def counter_rows(self) -> dict[str, int]:
        """``stored``, ``duplicates``, ``quarantined``, ``store_bisections``,
        ``store_unavailable``, ``quarantine_trimmed``, ``retention_deleted``,
        ``watermarks_published``, ``watermarks_refused`` and ``job_failed_<job>``."""
        return {
            "stored": value(self.stored),
            "duplicates": value(self.duplicates),
            "quarantined": value(self.quarantined),
            "store_bisections": value(self.bisections),
            "store_unavailable": value(self.store_unavailable),
            "quarantine_trimmed": value(self.quarantine_trimmed),
            "retention_deleted": value(self.retention_deleted),
            "watermarks_published": value(self.watermarks_published),
            "watermarks_refused": value(self.watermarks_refused),
            **{f"job_failed_{job}": n for job, n in labelled_values(self.job_failures).items()},
        }
