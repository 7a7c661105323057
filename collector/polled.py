"""Readings polled out of band (BMCs over Redfish, rack PDUs over SNMP): to the live view at
once, and to the store once per interval.

The pollers call :meth:`PolledPower.on_node` / :meth:`PolledPower.on_rack` with each reading;
the live view holds it at once (capacity counts it at its next cycle), and the newest reading
per node and per rack waits here until :meth:`PolledPower.run` puts them, every
``interval_s``, on the writer's queue as one :class:`PolledPowerRecord` (one transaction, one
row per node or rack whatever the poll rate). What waits is bounded by the BMCs and PDUs
configured: one entry each. A node decommissioned (``collector inventory forget``) whose BMC
is still listed is not held (:meth:`~collector.live.LiveView.on_node_power` holds only nodes
the view knows) nor stored until the node comes back: the command warns to remove its
``[[redfish.bmcs]]`` entry.

Why stored: commands that recompute from the store (``collector capacity --now``,
``--explain NODE``) and a new leader's view read them back
(:func:`collector.store.power.polled_power`); freshness is decided there as here, by
:meth:`collector.nodefacts.Staleness.fresh`. A reading still waiting when the term or the
collector ends is lost: the next poll reads it again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from collector.store.power import PolledRow, Scope, write_polled_power

if TYPE_CHECKING:
    from collector.live import LiveView
    from collector.nodefacts import PowerReading
    from collector.role import RecordQueue
    from collector.store.db import Store

__all__ = ["PolledPower", "PolledPowerRecord"]


@dataclass(frozen=True, slots=True)
class PolledPowerRecord:
    """The newest polled readings of one interval, for the writer."""

    rows: tuple[PolledRow, ...]
    name: str = "polled_power"

    async def write(self, store: Store) -> None:
        """Upsert the rows (an older reading never replaces a newer one)."""
        await write_polled_power(store, self.rows)


class PolledPower:
    """Where the pollers hand their readings; see the module docstring."""

    def __init__(self, live: LiveView) -> None:
        self._live = live
        self._pending: dict[tuple[Scope, str], PowerReading] = {}

    def on_node(self, node: str, reading: PowerReading) -> None:
        """A node's input power read from its BMC."""
        self._live.on_node_power(node, reading)
        self._pending[("node", node)] = reading

    def on_rack(self, rack: str, reading: PowerReading) -> None:
        """A rack's draw read from its PDUs."""
        self._live.on_rack_power(rack, reading)
        self._pending[("rack", rack)] = reading

    def take(self) -> PolledPowerRecord | None:
        """The readings waiting, as one record (``None``: none); none of a node forgotten
        (``collector inventory forget``) that has not come back: its BMC, still listed in
        ``redfish.bmcs``, would put its row back in the store."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, {}
        forgotten = self._live.was_forgotten
        rows = tuple(
            PolledRow(scope, name, r.watts, r.source, r.received, r.interval_s)
            for (scope, name), r in pending.items()
            if scope != "node" or not forgotten(name)
        )
        return PolledPowerRecord(rows) if rows else None

    async def run(self, records: RecordQueue, interval_s: float) -> None:
        """Put what waits on ``records`` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            record = self.take()
            if record is not None:
                await records.put(record)
