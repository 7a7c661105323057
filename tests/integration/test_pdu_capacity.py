"""Rack PDUs end to end: simulated agents through Mosquitto, snmpsimd serving APC PDU walks;
the rack counts at its two PDUs' sum, in the collector's snapshot and in `--now`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from collector.pdu.settings import PduSettings, PdusSettings
from collector.settings import CapacitySettings
from tests.collector.capacity.helpers import PLAN
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import (
    CollectorRunner,
    capacity_ok,
    latest_capacity,
    publishing,
)
from tests.snmpsim import PDU_DATA, SnmpSim, skip_without_snmpsim

pytestmark = pytest.mark.integration

APC_POWER = "1.3.6.1.4.1.318.1.1.26.4.3.1.5.1"  # PowerNet-MIB rPDU2DeviceStatusPower.1
RACK_W = 12_340.0 + 11_110.0


async def test_a_rack_fed_by_two_pdus_counts_at_their_sum(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """20 simulated DGX nodes in rack x1000, fed by two APC PDUs read over SNMP (12,340 W +
    11,110 W) and a third PDU, of rack x1001, whose community is refused: x1000 counts at
    23,450 W, 'measured (pdu)' for its 20 nodes, in the snapshot and recomputed by --now."""
    skip_without_snmpsim()
    sim = FleetSimulator(20, seed=5, interval_s=600)
    with SnmpSim(
        {"rack-a": PDU_DATA / "rack-a.snmprec", "rack-b": PDU_DATA / "rack-b.snmprec"}
    ) as agent:
        units = [
            PduSettings(
                rack="x1000",
                host="127.0.0.1",
                port=agent.port,
                name="a",
                oid=APC_POWER,
                scale=10,
                community=SecretStr("rack-a"),
            ),
            PduSettings(
                rack="x1000",
                host="127.0.0.1",
                port=agent.port,
                name="b",
                oid=APC_POWER,
                scale=10,
                community=SecretStr("rack-b"),
            ),
            PduSettings(
                rack="x1001",
                host="127.0.0.1",
                port=agent.port,
                name="c",
                oid=APC_POWER,
                scale=10,
                community=SecretStr("nope"),
            ),
        ]
        s = collector_runner.settings
        collector_runner.settings = s.model_copy(
            update={
                "capacity": CapacitySettings(plan=PLAN, interval_s=0.5),
                "pdus": PdusSettings(interval_s=0.5, timeout_s=0.3, retries=0, units=units),
            }
        )
        collector = await collector_runner.start()
        try:
            async with publishing(mosquitto, sim, workers=8):
                db = collector_runner.db

                def settled() -> bool:
                    p = latest_capacity(db)
                    return bool(p.get("nodes") == 20 and p["nodes_by"].get("measured (pdu)") == 20)

                await wait_until(
                    settled, timeout_s=60, what="a snapshot with x1000 read by its PDUs"
                )
                p = capacity_ok("--db", str(db))["capacity"]
                (rack,) = [r for r in p["racks"] if r["rack"] == "x1000"]
                assert rack["draw_w"] == RACK_W
                assert rack["nodes_w"] is not None
                assert rack["nodes_w"] != RACK_W
                assert p["draw_by"]["measured (pdu)"] == RACK_W
                assert p["nodes_w"] == pytest.approx(RACK_W)
                await wait_until(
                    lambda: bool(db_rows(db, "SELECT 1 FROM polled_power WHERE scope = 'rack'")),
                    timeout_s=30,
                    what="the rack's reading stored",
                )
                now = capacity_ok("--db", str(db), "--now", "--plan", str(PLAN))["capacity"]
                assert now["nodes_by"]["measured (pdu)"] == 20
                assert now["nodes_w"] == pytest.approx(RACK_W)
                assert collector.pdus is not None
                c = next(x for x in collector.pdus.pdus if x.cfg.label == "c")
                # Its first poll may still be waiting out its 0.3 s timeout (a fast machine
                # settles the snapshot sooner): a CI run found it busy, nothing counted yet.
                await wait_until(
                    lambda: c.counts.get("timeout", 0) >= 1,
                    timeout_s=30,
                    what="the silent PDU's timeout counted",
                )
                assert "ok" not in c.counts
        finally:
            await collector_runner.stop()
    counters = dict(db_rows(db, "SELECT name, value FROM counters WHERE name LIKE 'pdu_%'"))
    assert counters["pdu_ok"] >= 2
    assert counters["pdu_timeout"] >= 1
