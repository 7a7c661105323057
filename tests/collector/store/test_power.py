"""``polled_power``: the newest polled reading per node and rack, on both backends."""

from __future__ import annotations

from collector.capacity.fromstore import nodes_from_store, racks_from_store
from collector.nodefacts import PowerReading
from collector.paths import StoreTarget
from collector.polled import PolledPowerRecord
from collector.store.db import NodeUpdate, Store
from collector.store.power import PolledRow, polled_power
from collector.store.reader import StoreReader


async def test_the_newest_reading_is_kept_and_read_back_as_the_nodes_input_power(
    store_url: StoreTarget,
) -> None:
    """Two records for a node and a rack: the newer reading wins whatever the order they are
    written in; nodes_from_store holds it as the node's input power, racks_from_store the
    rack's."""
    async with Store(store_url) as store:
        await store.write_batch([], [NodeUpdate("n1", status="online", status_ts=1.0)])
        await PolledPowerRecord(
            (
                PolledRow("node", "n1", 374.0, "redfish", 100.0, 10.0),
                PolledRow("rack", "r1", 12_000.0, "pdu", 100.0, 10.0),
            )
        ).write(store)
        await PolledPowerRecord(
            (
                PolledRow("node", "n1", 380.0, "redfish", 90.0, 10.0),  # older: left out
                PolledRow("rack", "r1", 12_500.0, "pdu", 110.0, 10.0),
            )
        ).write(store)
    with StoreReader(store_url) as reader:
        assert polled_power(reader, "node") == [
            PolledRow("node", "n1", 374.0, "redfish", 100.0, 10.0)
        ]
        (st,) = nodes_from_store(reader)
        racks = racks_from_store(reader)
    assert st.node_power == PowerReading(374.0, "redfish", 100.0, 10.0)
    assert racks == {"r1": PowerReading(12_500.0, "pdu", 110.0, 10.0)}
