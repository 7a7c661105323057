"""Node ids in topics: the end of the id is the end of the string."""

from __future__ import annotations

import re

import pytest

from shared.errors import ConfigError
from shared.schema import NODE_ID_PATTERN
from shared.topics import NODE_ID_RE, parse_topic, sample_topic, validate_node_id


@pytest.mark.parametrize("node", ["n1\n", "n1\r\n", "x" * 63 + "\n"])
def test_node_with_a_trailing_newline_is_not_a_node(node: str) -> None:
    """``$`` would match before a final newline; the id rule must not."""
    assert parse_topic(sample_topic(node)) is None
    with pytest.raises(ConfigError, match="node id"):
        validate_node_id(node)


def test_topic_rule_is_the_schema_rule() -> None:
    """A node the topic parser accepts is one the payload's ``node`` field accepts, and back."""
    assert NODE_ID_RE.pattern == NODE_ID_PATTERN
    schema = re.compile(NODE_ID_PATTERN)
    for node in ("n1", "x" * 63, "x" * 64, "n1\n", "a.b_c-d", "-a", ""):
        assert bool(NODE_ID_RE.match(node)) == bool(schema.search(node)), node
