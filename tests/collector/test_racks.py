"""Racks: one answer per node, given alike by every consumer.

Six nodes in a real store and a site plan whose ``[[capacity.racks]]`` name some of them; the
capacity picture (with a PDU reading for one rack), ``/sd``'s labels, ``collector inventory``,
``pool apply``'s fewest racks and the PDU settings must all put each node in the same rack:
the operator's rack where a rule names the node, else its xname cabinet spelled one way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.capacity.compute import compute_picture
from collector.capacity.config import load_capacity_plan
from collector.capacity.fromstore import nodes_from_store
from collector.live import LiveView
from collector.metrics import CollectorMetrics
from collector.nodefacts import PowerReading, rack_name, rack_of
from collector.settings import CollectorSettings
from collector.store.db import Store
from collector.store.reader import StoreReader
from shared.clock import FakeClock
from shared.settings import load_settings
from tests.collector.capacity.helpers import PLAN
from tests.collector.governance.hw_fleet import A100, H100, Spec, cli, make_store

EXPECTED: dict[str, str | None] = {
    "x101c0s0b0n0": "x101",  # its xname cabinet
    "X0101c0s1b0n0": "x101",  # the same cabinet, spelled otherwise
    "x2000c0s0b0n0": "row-b",  # a rule names it: the operator's rack wins over x2000
    "gpu-01": "row-b",
    "util-1": "x103",  # a rule's name spelled as a cabinet ("X0103")
    "login-1": None,  # no rule, no xname
}
RACKS = """
[[capacity.racks]]
name = "row-b"
nodes = ["x2000c0*", "gpu-*"]
limit_kw = 50

[[capacity.racks]]
name = "X0103"
nodes = ["util-*"]
"""


@pytest.fixture
async def site(tmp_path: Path) -> tuple[Path, Path]:
    """(store, collector.toml): the nodes (H100 x 8 only in row-b), the plan with its
    racks, and one PDU feeding cabinet ``X0101``."""
    specs = [
        Spec(
            node,
            gpu=H100 if rack == "row-b" else A100,
            gpus=8,
            metrics_address=f"{node.lower()}.example:9400",
        )
        for node, rack in EXPECTED.items()
    ]
    db = await make_store(tmp_path, specs)
    assert isinstance(db, Path)
    plan = tmp_path / "site.toml"
    plan.write_text(PLAN.read_text() + RACKS)
    config = tmp_path / "collector.toml"
    config.write_text(
        f'db_path = "{db}"\n[capacity]\nplan = "{plan}"\n'
        '[[pdus.units]]\nrack = "X0101"\nhost = "pdu-a"\n'
        'oid = "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"\n'
    )
    return db, config


async def test_every_consumer_puts_each_node_in_the_same_rack(site: tuple[Path, Path]) -> None:
    """The picture, a PDU's rack, /sd, the inventory and pool apply agree on every node."""
    db, config = site
    settings = load_settings(CollectorSettings, config_file=config)
    cplan = load_capacity_plan(settings.capacity.plan or Path())
    assert {node: rack_of(node, cplan.racks) for node in EXPECTED} == EXPECTED

    now = time.time()
    (pdu,) = settings.pdus.units
    assert pdu.rack == "x101"
    with StoreReader(db) as reader:
        states = nodes_from_store(reader)
    reading = PowerReading(9_000.0, "pdu", now, 10.0)
    picture = compute_picture(cplan, states, now, keep_nodes=True, rack_power={pdu.rack: reading})
    assert picture.node_draws is not None
    in_picture = {d.node: None if d.rack == "-" else d.rack for d in picture.node_draws}
    assert in_picture == EXPECTED
    by_pdu = {r.rack: (r.nodes, r.by_pdu, r.limit_w) for r in picture.racks}
    assert by_pdu["x101"] == (2, True, 2_700_000.0)  # both spellings, the PDU's reading
    assert by_pdu["row-b"] == (2, False, 50_000.0)

    async with Store(db) as store:
        metrics = CollectorMetrics(
            CollectorRegistry(),
            store,
            settings,
            clock=FakeClock(start_wall=now),
            live=LiveView(),
            alert_states=list,
        )
        _, body = metrics.service_discovery()()
    in_sd = {g["labels"]["node"]: g["labels"].get("rack") for g in json.loads(body)}
    assert in_sd == EXPECTED

    code, out, err = cli("inventory", "--config", str(config), "--json")
    assert (code, err) == (0, "")
    in_inventory = {n["node"]: n["rack"] for n in json.loads(out)["nodes"]}
    assert in_inventory == EXPECTED

    code, out, err = cli("pool", "apply", "-p", "train:h100:16", "--config", str(config),
                         "--json", "--dry-run")  # fmt: skip
    assert (code, err) == (0, "")
    plan = json.loads(out)
    assert sorted(plan["nodes"]) == ["gpu-01", "x2000c0s0b0n0"]
    assert plan["racks"] == 1  # row-b, not x2000 and gpu-01 apart


def test_a_rack_name_is_spelled_one_way() -> None:
    """An xname cabinet in any case, with leading zeros, is one rack; other names stay as
    given; a node that is no xname (chassis 0-7) has no cabinet."""
    assert rack_name("X0101") == rack_name("x101") == "x101"
    assert rack_name("Row-A") == "Row-A"
    assert rack_of("x1001c1s5b0n0") == "x1001"
    assert rack_of("X0101C1S05B0N0") == "x101"
    assert rack_of("gpu-node-07") is None
    assert rack_of("x1001c8s5b0n0") is None  # chassis 0-7
