"""Topics and node ids, unit formatting. (Durations: test_durations.py; settings:
test_settings.py.)"""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.topics import parse_topic, sample_topic, validate_node_id
from shared.units import format_bytes, format_duration, format_pct, format_watts


@pytest.mark.parametrize("node", ["x1000c0s0b0n0", "gpu-node.17", "A_1"])
def test_valid_node_ids_pass(node: str) -> None:
    """Letters, digits, dot, dash and underscore are topic-safe."""
    assert validate_node_id(node) == node
    assert parse_topic(sample_topic(node)) == (node, "sample")


@pytest.mark.parametrize("node", ["", "a/b", "a+b", "#", "has space", "-lead", "x" * 64])
def test_unsafe_node_ids_are_refused_with_the_fix(node: str) -> None:
    """Wildcards, slashes, spaces and overlong ids would let a node write others' topics."""
    with pytest.raises(ConfigError, match="CAPWATCH_NODE_ID or --node-id"):
        validate_node_id(node)


def test_parse_topic_rejects_foreign_topics() -> None:
    """Only capwatch/v1/nodes/<node>/<kind> is ours."""
    assert parse_topic("capwatch/v2/nodes/n/sample") is None
    assert parse_topic("capwatch/v1/nodes/n/sample/extra") is None
    assert parse_topic("capwatch/v1/nodes/has space/sample") is None


def test_formatters() -> None:
    """Human formats pick sensible units."""
    assert format_duration(754) == "12m34s"
    assert format_duration(None) == "-"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_watts(4_996_066) == "5.00 MW"
    assert format_watts(3700) == "3.7 kW"
    # -0.0 passes the schema's ge=0 and PostgreSQL keeps it (SQLite stores 0.0): the same
    # sample read "-0 W" on one backend and "0 W" on the other.
    assert format_watts(-0.0) == "0 W"
    assert format_pct(-0.0) == "0.0%"
    assert format_pct(47.04) == "47.0%"
