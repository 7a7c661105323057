"""The fleet as the store last saw it, as live-view node states: what ``--now`` computes on.

Each node's newest sample (decoded and validated again, as the collector did when it
stored it), its status and inventory, and when the sample arrived (collector clock). A row
that no longer decodes (written by an older version, damaged) leaves that part out (the
input power a sample reports comes with it): the node
then counts as stale, never as a crash.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection

from collector.live import NodeState
from collector.nodefacts import sample_power
from collector.store.capacity import latest_node_rows
from collector.store.reader import StoreReader
from shared.errors import SchemaError, StoreError
from shared.schema import decode_inventory, decode_sample

__all__ = ["nodes_from_store"]


def nodes_from_store(
    reader: StoreReader, *, nodes: Collection[str] | None = None
) -> list[NodeState]:
    """One :class:`NodeState` per node in the ``nodes`` table (those of ``nodes`` only, when
    given: only they are decoded), newest sample included."""
    out = []
    for row in latest_node_rows(reader):
        node, status, status_ts, inventory, inventory_ts, received, dict_id, payload = row
        if nodes is not None and node not in nodes:
            continue
        st = NodeState(node)
        if status in ("online", "offline"):
            st.status = status  # type: ignore[assignment]
            st.status_ts = status_ts
        if inventory is not None:
            with contextlib.suppress(SchemaError):
                st.inventory = decode_inventory(bytes(inventory))
                st.inventory_ts = inventory_ts
        if payload is not None:
            try:
                st.sample = decode_sample(reader.payload(bytes(payload), dict_id))
                st.sample_received = received
                if received is not None:
                    st.node_power = sample_power(st.sample, received)
            except (SchemaError, StoreError):
                pass
        out.append(st)
    return out
