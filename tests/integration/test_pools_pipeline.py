"""Inventory and pools through the real system: Mosquitto, the collector, the CLI on its store."""

from __future__ import annotations

import asyncio
import json
import time

import aiomqtt
import msgspec

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from shared.schema import AcceleratorInfo, NodeStatus, encode
from shared.topics import inventory_topic, sample_topic, status_topic
from tests.collector.governance.hw_fleet import A100, Spec, inventory
from tests.collector.governance.hw_fleet import cli as _cli
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner


async def cli(*args: str) -> tuple[int, str, str]:
    """The command in a thread: the collector runs on this event loop, and a command waiting
    on the store's lock must not stop the loop that would release it."""
    return await asyncio.to_thread(_cli, *args)


async def _publish_fleet(broker: MosquittoBroker, sim: FleetSimulator) -> None:
    """Each node's retained inventory and status, then one sample, as agents send them."""
    now = time.time()
    async with aiomqtt.Client(broker.host, broker.port, identifier="fleet") as client:
        for i, node in enumerate(sim.node_ids):
            inv = sim.inventory(i, now)
            if i == 3:  # this one also carries an accelerator NVML does not see
                inv = msgspec.structs.replace(
                    inv,
                    accelerators=[
                        AcceleratorInfo(vendor_id=0x1002, device_id=0x74A1, name="AMD MI300X")
                    ],
                )
            await client.publish(inventory_topic(node), encode(inv), qos=1, retain=True)
            status = NodeStatus(v=1, node=node, status="online", ts=now)
            await client.publish(status_topic(node), encode(status), qos=1, retain=True)
            await client.publish(sample_topic(node), encode(sim.sample(i, now, 0)), qos=1)


async def test_declared_then_agent_inventory_and_a_pool_that_survives_a_restart(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """A declared node is replaced by its agent's inventory; `pool apply` moves nodes the
    collector reported; the pool is still there after the collector restarts."""
    db = collector_runner.db
    await collector_runner.start()
    sim = FleetSimulator(4, gpus_per_node=8, seed=3, interval_s=1)
    declared = db.parent / "racked.jsonl"
    declared.write_bytes(
        encode(inventory(Spec(sim.node_ids[0], gpu=A100, gpus=4)))
        + b"\n"
        + encode(inventory(Spec("x9000c0s0b0n0", gpu=A100, gpus=4)))
    )
    code, _, err = await cli("inventory", "import", str(declared), "--db", str(db))
    assert code == 0, err
    await _publish_fleet(mosquitto, sim)
    await wait_until(
        lambda: (
            db_rows(db, "SELECT count(*) FROM nodes WHERE inventory IS NOT NULL")[0][0] == 4
            and db_rows(db, "SELECT count(DISTINCT node) FROM samples")[0][0] == 4
        ),
        what="four inventories and samples stored",
    )
    code, out, err = await cli("inventory", "--db", str(db), "--json")
    assert code == 0, err
    nodes = {n["node"]: n for n in json.loads(out)["nodes"]}
    first = nodes[sim.node_ids[0]]
    assert first["state"] == "online"
    assert first["components"]["gpu NVIDIA H100 80GB HBM3"] == 8  # the agent's, not declared
    assert f"gpu {A100}" not in first["components"]
    assert nodes["x9000c0s0b0n0"]["state"] == "declared"
    assert nodes[sim.node_ids[3]]["components"]["accelerator AMD MI300X"] == 1
    # Declared nodes run no agent: never online, never taken.
    code, out, err = await cli(
        "pool", "apply", "-p", "team:h100:16:mi300x:1", "--db", str(db), "--json"
    )
    assert code == 0, err
    plan = json.loads(out)
    assert len(plan["nodes"]) == 2
    assert sim.node_ids[3] in plan["nodes"]
    await collector_runner.stop()
    await collector_runner.start()  # a new daemon on the same store
    code, out, _ = await cli("pool", "list", "--db", str(db), "--json")
    pools = {p["name"]: p["nodes"] for p in json.loads(out)["pools"]}
    assert pools["team"] == 2
