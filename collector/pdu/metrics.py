"""What the PDU poller counts, on the collector's registry: polls by outcome, one poll's
duration, PDUs in backoff (a handful of series whatever the number of PDUs)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collector.counters import labelled_values

__all__ = ["OUTCOMES", "PduMetrics"]

OUTCOMES: Final = (
    "ok",  # a reading
    "timeout",  # no answer within timeout_s after the retries (down, wrong community)
    "unreachable",  # the host name does not resolve, the network refuses
    "snmp_error",  # an SNMP error status (noSuchName, genErr, ...)
    "no_reading",  # the OID has no instance on this PDU (noSuchObject/noSuchInstance)
    "invalid",  # not a number, or outside [0, MAX_NODE_POWER_W x 1000] W
)
"""The ``outcome`` label's values."""

_NS: Final = "capwatch_collector"


class PduMetrics:
    """The poller's counter, histogram and gauge."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.polls = Counter(
            "pdu_polls",
            "SNMP polls of rack PDUs, by outcome (all PDUs).",
            ("outcome",),
            namespace=_NS,
            registry=registry,
        )
        self.poll_by: Final = {o: self.polls.labels(o) for o in OUTCOMES}
        self.poll_seconds = Histogram(
            "pdu_poll_duration_seconds",
            "One PDU poll, from its turn to its reading or failure.",
            namespace=_NS,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.backoff = Gauge(
            "pdu_in_backoff",
            "PDUs whose last poll failed: retried later than the interval, with jitter.",
            namespace=_NS,
            registry=registry,
        )

    def counter_rows(self) -> dict[str, int]:
        """``pdu_<outcome>``."""
        return {f"pdu_{o}": n for o, n in labelled_values(self.polls).items()}
