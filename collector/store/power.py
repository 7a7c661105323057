"""The ``polled_power`` table: the newest reading polled out of band, per node and per rack.

The collector's pollers (a node's BMC over Redfish, a rack's PDUs over SNMP) hand their
readings to the live view at once; every poll interval the ones that changed reach the writer
as one record (:class:`collector.polled.PolledPowerRecord`), written here in one
transaction. Commands that recompute from the store (``collector capacity --now``,
``--explain``) read them back (:func:`polled_power`) and apply the same freshness rule as the
collector (:meth:`collector.nodefacts.Staleness.fresh`).

Portable SQL: an upsert with ``ON CONFLICT ... DO UPDATE`` that keeps the newer reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from collector.store.db import Store
    from collector.store.reader import StoreReader

__all__ = ["PolledRow", "Scope", "polled_power", "write_polled_power"]

Scope = Literal["node", "rack"]


class PolledRow(NamedTuple):
    """One row of ``polled_power``, in column order."""

    scope: Scope
    name: str
    """The node id (scope ``node``) or the rack's name in the plan (scope ``rack``)."""
    watts: float
    source: str
    """``redfish`` (a BMC), ``pdu`` (the sum of a rack's PDUs)."""
    received: float
    """When it was read (collector clock, Unix seconds)."""
    interval_s: float
    """The poll interval: the reading is fresh for ``stale_intervals`` of these."""


_UPSERT: Final = (
    "INSERT INTO polled_power (scope, name, watts, source, received, interval_s)",
    6,
    " ON CONFLICT (scope, name) DO UPDATE SET watts = excluded.watts,"
    " source = excluded.source, received = excluded.received,"
    " interval_s = excluded.interval_s"
    " WHERE excluded.received >= polled_power.received",
)


async def write_polled_power(store: Store, rows: Sequence[PolledRow]) -> None:
    """Upsert ``rows`` in one transaction of the writer's store (an older reading than the
    one stored is left out: a record delayed in the queue never goes back in time)."""
    if not rows:
        return
    async with store.transaction(f"writing {len(rows)} polled power readings"):
        await store.insert_many(_UPSERT, [tuple(r) for r in rows])


def polled_power(reader: StoreReader, scope: Scope) -> list[PolledRow]:
    """Every stored reading of ``scope`` (none from a store not yet migrated to hold them)."""
    if not reader.has_table("polled_power"):
        return []
    rows = reader.fetchall(
        "SELECT name, watts, source, received, interval_s FROM polled_power WHERE scope = ?",
        (scope,),
    )
    return [
        PolledRow(
            scope,
            str(r["name"]),
            float(r["watts"]),
            str(r["source"]),
            float(r["received"]),
            float(r["interval_s"]),
        )
        for r in rows
    ]
