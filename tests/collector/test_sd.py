"""Prometheus HTTP service discovery (``/sd``): the target groups from stored nodes."""

from __future__ import annotations

from collector.sd import target_groups
from collector.store.pools import NodeRecord


def _record(
    node: str, inventory: bytes, *, source: str = "agent", pool: str = "free"
) -> NodeRecord:
    return NodeRecord(node, "online", 1.0, inventory, 1.0, source, 1.0, 5.0, 8, pool)


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
    groups = target_groups(records, {"x1000c0s0b0n0": "acme"}, racks.get)
    assert groups == [
        {
            "targets": ["x1000c0s0b0n0.example:9400"],
            "labels": {"node": "x1000c0s0b0n0", "pool": "a", "rack": "x1000", "tenant": "acme"},
        },
        {"targets": ["[fd00::7]:9400"], "labels": {"node": "plain", "pool": "free"}},
    ]
