"""The fleet as the store last saw it, as live-view node states: what ``--now`` computes on.

Each node's newest sample (decoded and validated again, as the collector did when it
stored it), its status and inventory, and when the sample arrived (collector clock); its
input power is the newer of what that sample reports and what the collector last polled from
its BMC (``polled_power``); each rack's draw last read from its PDUs (:func:`racks_from_store`).
A row
that no longer decodes (written by an older version, damaged) leaves that part out (the
input power a sample reports comes with it): the node
then counts as stale, never as a crash.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection

from collector.live import NodeState
from collector.nodefacts import PowerReading, sample_power
from collector.store.capacity import latest_node_rows
from collector.store.power import PolledRow, polled_power
from collector.store.reader import StoreReader
from shared.errors import SchemaError, StoreError
from shared.schema import decode_inventory, decode_sample

__all__ = ["nodes_from_store", "racks_from_store"]


def nodes_from_store(
    reader: StoreReader, *, nodes: Collection[str] | None = None
) -> list[NodeState]:
    """One :class:`NodeState` per node in the ``nodes`` table (those of ``nodes`` only, when
    given: only they are decoded), newest sample included."""
    out = []
    polled = {r.name: _reading(r) for r in polled_power(reader, "node")}
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
        bmc = polled.get(node)
        if bmc is not None and (st.node_power is None or bmc.received > st.node_power.received):
            st.node_power = bmc
        out.append(st)
    return out


def racks_from_store(reader: StoreReader) -> dict[str, PowerReading]:
    """Each rack's newest draw read from its PDUs, by rack name (fresh or not: the caller's
    :meth:`~collector.nodefacts.Staleness.fresh` decides)."""
    return {r.name: _reading(r) for r in polled_power(reader, "rack")}


def _reading(row: PolledRow) -> PowerReading:
    return PowerReading(row.watts, row.source, row.received, row.interval_s)
