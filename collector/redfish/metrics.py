"""What the Redfish poller counts, on the collector's registry.

Fleet-wide, a handful of series whatever the fleet: polls by outcome, the duration of one
poll and of one round over every BMC, BMCs in backoff. Per BMC, one counter per outcome it
has had (:func:`bmc_families`, built at scrape time from the poller's own counts): about one
series per BMC while all is well, one more per kind of failure a BMC has shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from collector.counters import labelled_values, value

__all__ = ["OUTCOMES", "RedfishMetrics", "bmc_families"]

OUTCOMES: Final = (
    "ok",  # a reading, held for the node
    "unreachable",  # TCP connect refused, no route, name not resolved
    "tls",  # the BMC's certificate did not verify (ca_file / insecure)
    "timeout",  # the poll took longer than redfish.timeout_s
    "transport",  # the connection broke mid-answer
    "auth",  # 401/403: user or password refused
    "not_found",  # 404 on the chassis or its power resource
    "http_error",  # any other status
    "invalid",  # not JSON, not the resource's shape, a link off /redfish/v1, too large
    "out_of_range",  # a reading outside [0, MAX_NODE_POWER_W]
    "no_reading",  # the chassis has no power reading (null, absent, no power resource)
)
"""The ``outcome`` label's values."""

_NS: Final = "capwatch_collector"
_POLL_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROUND_BUCKETS_S: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class RedfishMetrics:
    """The poller's counters, histograms and gauge."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.polls = Counter(
            "redfish_polls",
            "Redfish polls of BMCs, by outcome (all BMCs).",
            ("outcome",),
            namespace=_NS,
            registry=registry,
        )
        self.poll_by: Final = {o: self.polls.labels(o) for o in OUTCOMES}
        self.poll_seconds = Histogram(
            "redfish_poll_duration_seconds",
            "One BMC poll, from its turn to its reading or failure.",
            namespace=_NS,
            registry=registry,
            buckets=_POLL_BUCKETS_S,
        )
        self.round_seconds = Histogram(
            "redfish_round_duration_seconds",
            "One round: from its start until every BMC polled in it has answered or failed.",
            namespace=_NS,
            registry=registry,
            buckets=_ROUND_BUCKETS_S,
        )
        self.backoff = Gauge(
            "redfish_bmcs_in_backoff",
            "BMCs whose last poll failed: retried later than the interval, with jitter.",
            namespace=_NS,
            registry=registry,
        )
        self.skipped = Counter(
            "redfish_polls_skipped",
            "Rounds a BMC missed because its previous poll was still running.",
            namespace=_NS,
            registry=registry,
        )

    def counter_rows(self) -> dict[str, int]:
        """``redfish_<outcome>`` and ``redfish_skipped``."""
        return {
            **{f"redfish_{o}": n for o, n in labelled_values(self.polls).items()},
            "redfish_skipped": value(self.skipped),
        }


class _BmcCounts(Protocol):
    @property
    def node(self) -> str: ...
    @property
    def counts(self) -> dict[str, int]: ...


def bmc_families(bmcs: Iterable[_BmcCounts]) -> list[Metric]:
    """``capwatch_collector_redfish_bmc_polls_total{bmc, outcome}``: each BMC's polls by the
    outcomes it has had (labelled by its node)."""
    family = CounterMetricFamily(
        f"{_NS}_redfish_bmc_polls",
        "Redfish polls of one BMC (labelled by its node), by outcome.",
        labels=("bmc", "outcome"),
    )
    for bmc in bmcs:
        for outcome, n in bmc.counts.items():
            family.add_metric((bmc.node, outcome), n)
    return [family]
