"""Prometheus HTTP service discovery of the agents: ``/sd`` on the collector's metrics server.

Prometheus' ``http_sd_configs`` fetches a JSON list of target groups::

    [{"targets": ["gpu-node-017.cluster.example:9400"],
      "labels": {"node": "gpu-node-017", "rack": "x1001", "pool": "training",
                 "tenant": "acme"}}]

One group per node whose agent announced a ``metrics_address`` in its inventory (``agent
run --metrics-advertise``; the default is the node's FQDN and the listen port), whatever its
status: an offline node stays a target, so ``up == 0`` shows it. Labels:

* ``node``: the node id;
* ``rack``: the node's rack as every consumer names it (:func:`collector.nodefacts.rack_of`:
  the capacity plan's ``[[capacity.racks]]`` rule, else the xname cabinet ``x1001``); absent
  when neither names one;
* ``pool``: the node's pool (``free`` when in none), as ``collector pool`` lists it;
* ``tenant``: the tenant of the lease in force that holds the node; absent when none.

**Which targets.** A node names its own target, and Prometheus scrapes what ``/sd`` lists:
so an announced address is listed only when its host is one the setting
``sd_target_hosts`` allows for that node (:class:`collector.sdtargets.TargetHosts`; by
default the node's own name or a DNS name under it, any port; an IP address only inside a
network the operator lists). A refused target is left out, counted
(``capwatch_collector_sd_targets_refused``: nodes refused in the last answer) and logged
once per node and address (``sd_target_refused``), not at every request.

Everything is read from the store through a read-only connection of its own in the HTTP
thread (the functions ``collector inventory`` and ``collector lease`` use), never on the
event loop or the writer's connection. Answers are reused for ``min_interval_s`` so a
scraper gone wild costs the store one read per interval.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry, Gauge

from collector.paths import StoreTarget
from collector.sdtargets import TargetHosts
from collector.store.governance import governance
from collector.store.pools import NodeRecord, node_records
from collector.store.reader import StoreReader
from shared.logging import get_logger

__all__ = [
    "SD_CONTENT_TYPE",
    "ServiceDiscovery",
    "target_groups",
]

log = get_logger("sd")

SD_CONTENT_TYPE: Final = "application/json"


class _Advertised(msgspec.Struct):
    """The one inventory field /sd needs (the stored inventory was validated on arrival)."""

    metrics_address: str | None = None


_decoder = msgspec.json.Decoder(_Advertised)


def target_groups(
    records: Iterable[NodeRecord],
    tenants: Mapping[str, str],
    rack_of: Callable[[str], str | None],
    hosts: TargetHosts | None = None,
    refused: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The http_sd target groups of ``records`` (by node), ``tenants`` (node: tenant), of
    the addresses ``hosts`` allows (default: :data:`DEFAULT_SD_TARGET_HOSTS`); each node whose
    address it refuses goes into ``refused`` (node: address)."""
    hosts = TargetHosts() if hosts is None else hosts
    announced: list[tuple[NodeRecord, str]] = []
    for r in records:
        if r.source != "agent":
            continue
        try:
            address = _decoder.decode(r.inventory).metrics_address
        except msgspec.DecodeError:
            continue
        if address is not None:
            announced.append((r, address))
    # Node ids that differ only in case name one host (DNS ignores case, RFC 4343), and
    # hosts.allows() compares them so: 'Node-A' could list 'node-a:9400', and Prometheus
    # scraped node-a's agent a second time as Node-A's, in Node-A's pool and tenant.
    folded = Counter(r.node.lower() for r, _ in announced)
    groups: list[dict[str, Any]] = []
    for r, address in announced:
        if folded[r.node.lower()] > 1 or not hosts.allows(r.node, address):
            if refused is not None:
                refused[r.node] = address
            continue
        labels = {"node": r.node, "pool": r.pool}
        if (rack := rack_of(r.node)) is not None:
            labels["rack"] = rack
        if (tenant := tenants.get(r.node)) is not None:
            labels["tenant"] = tenant
        groups.append({"targets": [address], "labels": labels})
    return groups


class ServiceDiscovery:
    """``/sd``'s answer, computed from the store at ``db_path`` (in the caller's thread)."""

    def __init__(
        self,
        db_path: StoreTarget,
        rack_of: Callable[[str], str | None],
        now: Callable[[], float],
        *,
        hosts: TargetHosts | None = None,
        registry: CollectorRegistry | None = None,
        min_interval_s: float = 5.0,
    ) -> None:
        self._db_path = db_path
        self._rack_of = rack_of
        self._now = now
        self._hosts = TargetHosts() if hosts is None else hosts
        self._min_interval_s = min_interval_s
        self._logged: dict[str, str] = {}
        """Node -> the refused address last logged (logged again only when it changes)."""
        self.refused = Gauge(
            "sd_targets_refused",
            "Nodes whose announced metrics_address /sd left out (its host is none that "
            "sd_target_hosts allows), as of the last answer.",
            namespace="capwatch_collector",
            registry=CollectorRegistry() if registry is None else registry,
        )
        self._lock = threading.Lock()
        self._body = b"[]"
        self._at = float("-inf")
        self.reads = 0
        """Store reads so far (a test counts them)."""

    def __call__(self) -> tuple[str, bytes]:
        """(content type, body): the target groups as JSON."""
        with self._lock:
            if time.monotonic() - self._at >= self._min_interval_s:
                self._body = json.dumps(self._groups()).encode()
                self._at = time.monotonic()
                self.reads += 1
            return SD_CONTENT_TYPE, self._body

    def _groups(self) -> list[dict[str, Any]]:
        now = self._now()
        with StoreReader(self._db_path) as store:
            records = node_records(store)
            try:
                gov = store.run(governance())
            except ValueError as exc:  # a hand-edited governance row: still list the targets
                log.warning("sd_governance_unreadable", error=str(exc))
                tenants: dict[str, str] = {}
            else:
                tenants = {}
                for lease in sorted(gov.holding(now), key=lambda lease: lease.id):
                    for node in lease.nodes:
                        tenants.setdefault(node, lease.tenant)
        refused: dict[str, str] = {}
        groups = target_groups(records, tenants, self._rack_of, self._hosts, refused)
        self.refused.set(len(refused))
        for node, address in refused.items():
            if self._logged.get(node) != address:
                log.warning(
                    "sd_target_refused",
                    node=node,
                    metrics_address=address,
                    hint="its host is none that the setting sd_target_hosts allows: the "
                    "node's own name by default; list the network or name pattern if it "
                    "is right; or another node's id differs from its own only in case (one "
                    "host name to DNS): rename one",
                )
        self._logged = refused  # a node allowed again, then refused again, is logged again
        return groups
