"""MQTT topic names of wire schema v1, and node-id validation."""

from __future__ import annotations

import re
from typing import Final

from shared.errors import ConfigError

__all__ = [
    "LEGACY_SUBSCRIPTIONS",
    "LIVE_SUBSCRIPTION",
    "MAX_NODE_ID_LEN",
    "NODE_ID_RE",
    "NODE_ID_RULE",
    "PREFIX",
    "SHARE_GROUP_RE",
    "SHARE_GROUP_RULE",
    "SUBSCRIPTIONS",
    "WATERMARK_PREFIX",
    "collector_subscriptions",
    "inventory_topic",
    "parse_topic",
    "sample_topic",
    "status_topic",
    "validate_node_id",
    "watermark_topic",
]

PREFIX: Final = "capwatch/v1/nodes"
WATERMARK_PREFIX: Final = "capwatch/v1/watermarks"
"""Where the collector tells each node what its store holds (:func:`watermark_topic`).

Not below :data:`PREFIX`: there every topic is a node's own (agents write theirs, the
collector reads them all); this tree is the other way round (the collector writes, each
node reads only its own), so the broker's ACL grants the two trees separately and the
collector's subscription never brings its own messages back.
"""
MAX_NODE_ID_LEN: Final = 63
NODE_ID_RE: Final = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NODE_ID_LEN - 1}}}\Z")
r"""A node id: one safe topic level. ``\Z``, not ``$``: ``$`` also matches before a final
newline, so ``"n1\n"`` would pass. The wire schema's :data:`shared.schema.NODE_ID_PATTERN`,
and the rule of pool, tenant and cohort names."""
NODE_ID_RULE: Final = (
    f"1-{MAX_NODE_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit"
)
""":data:`NODE_ID_RE` in words, for the error that refuses a name."""
SUBSCRIPTIONS: Final = (f"{PREFIX}/#",)
"""What the collector subscribes to: one filter for every message kind.

One filter, not one per kind: NATS serves each subscription of an MQTT session from its own
JetStream consumer (each allowed ``max_ack_pending`` = 1,024 unacknowledged messages) but caps
the whole session at the same 1,024 pending; a message a consumer delivers past the session's
cap is not sent and comes back only after the consumer's AckWait (30 s). With three filters,
a resumed session's backlog lost its middle for 30 s (nats-server ``server/mqtt.go``,
``trackPending``/``trackPublish``: "We have reached max pending, don't send the message now").
With one filter the consumer's own limit is reached first. Topics of unknown kinds are
rejected and quarantined by the ingestor like any bad message.
"""
LEGACY_SUBSCRIPTIONS: Final = (
    f"{PREFIX}/+/sample",
    f"{PREFIX}/+/inventory",
    f"{PREFIX}/+/status",
)
"""The filters of a session made by earlier collectors (one per kind): retired on upgrade."""


SHARE_GROUP_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
"""A share group name (``mqtt.share_group``): one topic level, no wildcards (MQTT 5.0
section 4.8.2: a ShareName must not contain ``/``, ``+`` or ``#``)."""
SHARE_GROUP_RULE: Final = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
""":data:`SHARE_GROUP_RE` in words."""


def collector_subscriptions(share_group: str | None) -> tuple[str, ...]:
    """The filters a collector subscribes to: :data:`SUBSCRIPTIONS` when it is alone
    (``share_group`` unset), else samples through the shared subscription
    ``$share/<group>/capwatch/v1/nodes/+/sample`` and the retained inventory and status
    through plain ones.

    With a group, the broker hands each sample to one member of the group (Mosquitto 2:
    round-robin), and every member gets every inventory and status (each stores them; the
    store keeps one row per node). Not ``capwatch/v1/nodes/#`` beside the shared filter:
    that would match the samples too, and each member would get all of them again. Only
    the three kinds of wire schema v1 are received (a kind added later needs its filter
    here). The shared filter is MQTT 5.0's syntax, which Mosquitto 2 also accepts from MQTT
    3.1.1 clients; NATS' MQTT grants it and then delivers nothing (deploy/README.md).
    """
    if share_group is None:
        return SUBSCRIPTIONS
    if not SHARE_GROUP_RE.match(share_group):
        raise ConfigError(
            f"share group {share_group!r} is not usable in a topic filter: use "
            f"{SHARE_GROUP_RULE} (--share-group)",
            field="mqtt.share_group",
        )
    return (
        f"$share/{share_group}/{PREFIX}/+/sample",
        f"{PREFIX}/+/inventory",
        f"{PREFIX}/+/status",
    )


LIVE_SUBSCRIPTION: Final = f"{PREFIX}/+/sample"
"""The leader's live feed in a share group: every node's samples at QoS 0, for its live
view only (the members store them through the shared filter), on a connection of its own
with a clean session (nothing kept for it while it is away) and its own client id.

Not on the collector's own connection: Mosquitto 2.0 sends a client one copy of a message
that matches both its shared and a plain subscription, at the plain one's QoS, so the
leader's share would arrive at QoS 0 only, and never be stored (measured:
tests/integration/test_share_group.py)."""


def validate_node_id(node: str) -> str:
    """Return ``node`` if it is safe as one MQTT topic level, else raise :class:`ConfigError`.

    Allowed: letters, digits, ``.``, ``_``, ``-``; 1-63 characters, starting alphanumeric.
    MQTT wildcards (``+``, ``#``), ``/`` and spaces would let one node write another's topics.
    """
    if not NODE_ID_RE.match(node):
        raise ConfigError(
            f"node id {node!r} is not usable in a topic: use {NODE_ID_RULE} (set "
            "CAPWATCH_NODE_ID or --node-id)",
            field="node_id",
        )
    return node


def sample_topic(node: str) -> str:
    """Topic of a node's periodic samples (QoS 1, not retained)."""
    return f"{PREFIX}/{node}/sample"


def inventory_topic(node: str) -> str:
    """Topic of a node's inventory (QoS 1, retained)."""
    return f"{PREFIX}/{node}/inventory"


def status_topic(node: str) -> str:
    """Topic of a node's online/offline status (QoS 1, retained; the will sets offline)."""
    return f"{PREFIX}/{node}/status"


def watermark_topic(node: str) -> str:
    """Topic of a node's store watermark (retained, QoS 0; only the collector writes it and
    only that node reads it): payload :class:`shared.schema.Watermark`."""
    return f"{WATERMARK_PREFIX}/{node}"


_PREFIX_PARTS: Final = PREFIX.count("/") + 1


def parse_topic(topic: str) -> tuple[str, str] | None:
    """Split ``capwatch/v1/nodes/<node>/<kind>`` into ``(node, kind)``.

    ``None`` if the topic is foreign or the node level is not a valid node id.
    """
    parts = topic.split("/")
    if len(parts) != _PREFIX_PARTS + 2 or "/".join(parts[:_PREFIX_PARTS]) != PREFIX:
        return None
    node = parts[_PREFIX_PARTS]
    if not NODE_ID_RE.match(node):
        return None
    return node, parts[_PREFIX_PARTS + 1]
