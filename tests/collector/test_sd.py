"""Prometheus HTTP service discovery (``/sd``): the target groups from stored nodes, and
only the targets a node may name."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.testing import capture_logs

from collector.paths import StoreTarget
from collector.sd import ServiceDiscovery, target_groups
from collector.sdtargets import TargetHosts
from collector.settings import CollectorSettings
from collector.store.pools import NodeRecord
from tests.collector.governance.hw_fleet import Spec, make_store

OWN_AND_V6 = TargetHosts(["{node}", "{node}.*", "fd00::/64"])


def _record(
    node: str, inventory: bytes, *, source: str = "agent", pool: str = "free"
) -> NodeRecord:
    return NodeRecord(node, "online", 1.0, inventory, 1.0, source, 1.0, 5.0, 8, pool)


def _announcing(node: str, address: str) -> NodeRecord:
    return _record(node, json.dumps({"metrics_address": address}).encode())


def test_only_agents_that_announced_an_address_are_targets_with_their_labels() -> None:
    """An announced address is a group with node, pool, rack and tenant; no address, a
    declared inventory or an undecodable one is left out; rack and tenant only when known."""
    records = [
        _record("x1000c0s0b0n0", b'{"metrics_address": "x1000c0s0b0n0.example:9400"}', pool="a"),
        _record("plain", b'{"metrics_address": "[fd00::7]:9400"}'),
        _record("quiet", b'{"host": "quiet"}'),
        _record("declared", b'{"metrics_address": "declared:9400"}', source="declared"),
        _record("broken", b"{not json"),
    ]
    racks = {"x1000c0s0b0n0": "x1000"}
    groups = target_groups(records, {"x1000c0s0b0n0": "acme"}, racks.get, OWN_AND_V6)
    assert groups == [
        {
            "targets": ["x1000c0s0b0n0.example:9400"],
            "labels": {"node": "x1000c0s0b0n0", "pool": "a", "rack": "x1000", "tenant": "acme"},
        },
        {"targets": ["[fd00::7]:9400"], "labels": {"node": "plain", "pool": "free"}},
    ]


def test_by_default_a_node_may_name_only_itself_or_a_name_under_it() -> None:
    """The node's name, its FQDN (any case, any port) are targets; another node's name,
    an internal service, an IP address and a name that only starts like the node are not,
    and each is reported in ``refused``."""
    records = [
        _announcing("gpu-017", "gpu-017:9400"),
        _announcing("gpu-018", "GPU-018.Cluster.Example:9100"),
        _announcing("gpu-019", "gpu-017.cluster.example:9400"),
        _announcing("gpu-020", "vault.internal:8200"),
        _announcing("gpu-021", "169.254.169.254:80"),
        _announcing("gpu-022", "gpu-022x.cluster.example:9400"),
        _announcing("10", "10.0.0.5:22"),  # a node named like an address's first octet
        _announcing("gpu-023", "[fd00::7]:9400"),
        _announcing("127", "127.1:22"),  # inet_aton's short forms of 127.0.0.1
        _announcing("2130706433", "2130706433:22"),
        _announcing("0x7f", "0x7f.1:22"),
    ]
    refused: dict[str, str] = {}
    groups = target_groups(records, {}, lambda _: None, None, refused)
    assert [g["targets"] for g in groups] == [["gpu-017:9400"], ["GPU-018.Cluster.Example:9100"]]
    assert refused == {
        "gpu-019": "gpu-017.cluster.example:9400",
        "gpu-020": "vault.internal:8200",
        "gpu-021": "169.254.169.254:80",
        "gpu-022": "gpu-022x.cluster.example:9400",
        "10": "10.0.0.5:22",
        "gpu-023": "[fd00::7]:9400",
        "127": "127.1:22",
        "2130706433": "2130706433:22",
        "0x7f": "0x7f.1:22",
    }


def test_node_ids_that_differ_only_in_case_are_not_listed() -> None:
    """'Node-A' and 'node-a' name one host (DNS ignores case, RFC 4343) and the patterns
    compare so: 'Node-A' listed 'node-a:9400' and Prometheus scraped node-a's agent a second
    time as Node-A's, in Node-A's pool and tenant. Neither is listed; each is refused."""
    records = [
        _announcing("node-a", "node-a:9400"),
        _announcing("Node-A", "node-a:9400"),
        _announcing("NODE-b", "NODE-b.cluster:9400"),
        _announcing("node-c", "node-c:9400"),
    ]
    refused: dict[str, str] = {}
    groups = target_groups(records, {}, lambda _: None, None, refused)
    assert [g["labels"]["node"] for g in groups] == ["NODE-b", "node-c"]
    assert refused == {"node-a": "node-a:9400", "Node-A": "node-a:9400"}


@pytest.mark.parametrize(
    "hosts", [None, TargetHosts(["{node}", "{node}.*", "*.localhost", "localhost"])]
)
def test_no_node_may_name_a_loopback_name(hosts: TargetHosts | None) -> None:
    """``localhost`` and every name under it are the loopback (RFC 6761 section 6.3; what
    systemd-resolved answers for them): ``gpu-1.localhost:9090``, which the default
    ``{node}.*`` matched, pointed the site's Prometheus at its own host's loopback-only
    services, as ``127.1`` would. Refused whatever the patterns say, as ``127.1`` is."""
    records = [
        _announcing("gpu-1", "gpu-1.localhost:9090"),
        _announcing("gpu-2", "GPU-2.LocalHost.:9090"),
        _announcing("localhost", "localhost:9400"),  # a node left with the name localhost
        _announcing("gpu-3", "gpu-3.localhost.cluster.example:9400"),  # a real name: kept
    ]
    refused: dict[str, str] = {}
    groups = target_groups(records, {}, lambda _: None, hosts, refused)
    assert [g["targets"] for g in groups] == [["gpu-3.localhost.cluster.example:9400"]]
    assert sorted(refused) == ["gpu-1", "gpu-2", "localhost"]


def test_an_operator_narrows_names_and_lists_networks() -> None:
    """``{node}.cluster.example`` refuses another domain; a listed network allows its
    addresses (IPv4 and IPv6) and no others."""
    hosts = TargetHosts(["{node}.cluster.example", "10.1.0.0/16", "fd00::/64"])
    assert hosts.allows("gpu-1", "gpu-1.cluster.example:9400")
    assert not hosts.allows("gpu-1", "gpu-1.evil.example:9400")
    assert not hosts.allows("gpu-1", "gpu-1:9400")
    assert hosts.allows("gpu-1", "10.1.2.3:9400")
    assert not hosts.allows("gpu-1", "10.2.2.3:9400")
    assert hosts.allows("gpu-1", "[fd00::7]:9400")
    assert not hosts.allows("gpu-1", "[fd01::7]:9400")


@pytest.mark.parametrize(
    ("entry", "says"),
    [("10.1.0.0/33", "is not an IP network"), ("{node}:9400", "is not a host pattern")],
)
def test_a_bad_sd_target_hosts_entry_is_one_clear_error(entry: str, says: str) -> None:
    """A network that does not parse, or a pattern with a port, names the entry and the fix."""
    with pytest.raises(ValidationError, match=says) as caught:
        CollectorSettings.model_validate({"sd_target_hosts": ["{node}", entry]})
    assert "sd_target_hosts" in str(caught.value)


async def test_refused_targets_are_counted_and_logged_once_per_node(
    store_url: StoreTarget,
) -> None:
    """Two nodes naming hosts not theirs: left out of every answer, the gauge says 2, and
    each is logged once however often Prometheus asks; a new address is logged again."""
    specs = [
        Spec("gpu-1", metrics_address="gpu-1.cluster.example:9400"),
        Spec("gpu-2", metrics_address="vault.internal:8200"),
        Spec("gpu-3", metrics_address="127.0.0.1:22"),
    ]
    db = await make_store(store_url, specs)
    registry = CollectorRegistry()
    sd = ServiceDiscovery(db, lambda _: None, lambda: 0.0, registry=registry, min_interval_s=0)
    with capture_logs() as logs:
        bodies = [json.loads(sd()[1]) for _ in range(3)]
    assert (
        bodies
        == [
            [
                {
                    "targets": ["gpu-1.cluster.example:9400"],
                    "labels": {"node": "gpu-1", "pool": "free"},
                }
            ]
        ]
        * 3
    )
    assert registry.get_sample_value("capwatch_collector_sd_targets_refused") == 2
    lines = [(e["node"], e["metrics_address"]) for e in logs if e["event"] == "sd_target_refused"]
    assert lines == [("gpu-2", "vault.internal:8200"), ("gpu-3", "127.0.0.1:22")]

    await make_store(store_url, [Spec("gpu-2", metrics_address="db.internal:5432")])
    with capture_logs() as logs:
        sd(), sd()
    lines = [(e["node"], e["metrics_address"]) for e in logs if e["event"] == "sd_target_refused"]
    assert lines == [("gpu-2", "db.internal:5432")]
