"""Capacity end to end: a simulated fleet through Mosquitto into a collector with a site plan.

The simulator knows each node's true GPU and CPU power (its own model); the collector's
stored snapshot must match it, count a silent node at nameplate and an unknown one at the
fallback, clamp a node sending absurd power, and fire the rack alert; the command reads the
snapshot and its what-if adds exactly what the solver says.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.capacity.compute import fleet_solution
from collector.capacity.config import load_capacity_plan
from collector.cli import main as collector_main
from collector.localbroker import MosquittoBroker
from collector.power.plan import read_plan_document
from collector.settings import CapacitySettings
from shared.schema import encode
from shared.topics import inventory_topic, sample_topic
from tests.collector.capacity.helpers import PLAN, dgx_rest_w, true_node_w
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import (
    CollectorRunner,
    capacity_json,
    latest_capacity,
    publishing,
    scrape_clean,
    series_values,
)

pytestmark = pytest.mark.integration

FLEET = 300
SEED = 21


def _plan_file(tmp_path: Path) -> Path:
    """The capacity site plan plus a small rack (four nodes, 12 kW) that the fleet overloads:
    four DGX-H100 at idle draw 3 kW each (GPUs 8 x 70 W, CPU 180 W, the model's rest 2.3 kW)."""
    doc: dict[str, Any] = json.loads(json.dumps(read_plan_document(PLAN)))
    doc["capacity"]["racks"].append({"name": "hot-rack", "nodes": ["x1000c0s0b*"], "limit_kw": 12})
    path = tmp_path / "site.json"
    path.write_text(json.dumps(doc))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and the file must be a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert head[12:16] == b"IHDR"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


async def _publish_odd_nodes(broker: MosquittoBroker) -> None:
    """A DGX that sends one sample then falls silent, a 2-GPU node no type matches, and a DGX
    whose GPUs claim 5 kW each (inside the schema's bounds)."""
    sim = FleetSimulator(3, seed=99, first_index=2000)
    silent, absurd = sim.node_ids[0], sim.node_ids[2]
    now = time.time()
    async with aiomqtt.Client(broker.host, broker.port, identifier="odd-nodes") as client:
        for i, node in enumerate(sim.node_ids):
            inv = sim.inventory(i, now)
            if i == 1:
                inv = msgspec.structs.replace(inv, gpus=inv.gpus[:2])
            await client.publish(inventory_topic(node), encode(inv), qos=1, retain=True)
        s = msgspec.structs.replace(sim.sample(0, now, 0), interval_s=0.2)
        await client.publish(sample_topic(silent), encode(s), qos=1)
        s = sim.sample(2, now, 0)
        gpus = [msgspec.structs.replace(g, power_interval_w=5000.0) for g in s.gpus]
        await client.publish(
            sample_topic(absurd), encode(msgspec.structs.replace(s, gpus=gpus)), qos=1
        )


async def test_live_draw_matches_the_simulators_truth_and_odd_nodes_are_counted(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """300 simulated DGX nodes: stored draw and headroom within 1 % of the truth; a silent
    node at nameplate, an unmatched one at the fallback, an absurd one clamped; the rack
    alert fires; `collector capacity --add` equals the solver on the same fleet."""
    plan_path = _plan_file(tmp_path)
    s = collector_runner.settings
    collector_runner.settings = s.model_copy(
        update={
            "capacity": CapacitySettings(
                plan=plan_path, interval_s=0.5, for_s=0.0, warn_pct=85.0, critical_pct=97.5
            ),
            "alerts": s.alerts.model_copy(update={"eval_interval_s": 0.5}),
            "metrics_listen": "127.0.0.1:0",
        }
    )
    collector = await collector_runner.start()
    assert collector.capacity is not None
    sim = FleetSimulator(FLEET, seed=SEED, interval_s=600)  # one tick, then quiet
    async with publishing(mosquitto, sim, workers=32):
        await _publish_odd_nodes(mosquitto)
        db = collector_runner.db

        def settled() -> bool:
            rows = db_rows(
                db,
                "SELECT nodes, stale_nodes, unmatched_nodes, clamped_nodes "
                "FROM capacity_snapshots ORDER BY at DESC LIMIT 1",
            )
            return rows == [(FLEET + 3, 1, 1, 1)]

        await wait_until(settled, timeout_s=60, what="a snapshot of the whole fleet")
        code, out = capacity_json("--db", str(db))
        assert code == 0
        p = out["capacity"]
        # the truth: each simulated node's own power at the sample the collector holds
        cplan = load_capacity_plan(plan_path)
        rest = dgx_rest_w(cplan)
        truth_sim = FleetSimulator(FLEET, seed=SEED, interval_s=600)
        truth = 0.0
        for i, node in enumerate(sim.node_ids):
            st = collector.live.get(node)
            assert st is not None
            assert st.sample is not None
            truth += true_node_w(truth_sim.sample(i, st.sample.ts, st.sample.seq), rest)
        truth += 10_200 + 14_300 + 10_200  # silent at nameplate, unmatched at the fallback, clamped
        dgx = next(t for t in p["types"] if t["node_type"] == "DGX-H100")
        assert dgx["nodes"] == FLEET + 2
        assert p["nodes_w"] == pytest.approx(truth, rel=0.01)
        true_it = truth + p["fabric_w"]
        assert p["it_w"] == pytest.approx(true_it, rel=0.01)
        assert p["headroom_w"] == pytest.approx(5e6 - true_it, rel=0.01)
        assert p["unmatched"] == ["x1007c6s4b0n1"]
        assert p["clamped"] == ["x1007c6s4b1n0"]
        assert p["stale"] == ["x1007c6s4b0n0"]
        hot = next(r for r in p["racks"] if r["rack"] == "hot-rack")
        assert hot["over"] is True
        assert hot["nodes"] == 4

        # The same picture on the collector's /metrics, in a form promtool accepts.
        series = series_values(await scrape_clean(collector), "capwatch_capacity_")
        assert series["capwatch_capacity_cap_watts"] == 5e6
        # the dashboard's threshold lines come from these (the settings above)
        assert series['capwatch_capacity_threshold_ratio{level="warning"}'] == 0.85
        assert series['capwatch_capacity_threshold_ratio{level="critical"}'] == 0.975
        assert series['capwatch_capacity_nodes{counted="stale"}'] == 1
        assert series['capwatch_capacity_nodes{counted="unmatched"}'] == 1
        assert series['capwatch_capacity_rack_limit_watts{rack="hot-rack"}'] == 12_000
        assert series["capwatch_capacity_it_draw_watts"] == pytest.approx(true_it, rel=0.01)
        assert series["capwatch_capacity_headroom_watts"] == pytest.approx(
            5e6 - series["capwatch_capacity_it_draw_watts"]
        )

        await wait_until(
            lambda: bool(
                db_rows(
                    db,
                    "SELECT 1 FROM alerts WHERE rule = 'RackPowerOverLimit' AND state = 'firing' "
                    'AND labels LIKE \'%"rack": "hot-rack"%\'',
                )
            ),
            what="RackPowerOverLimit for hot-rack",
        )

        code, out = capacity_json("--db", str(db), "--plan", str(plan_path), "--add", "32xDGX-H100")
        w = out["what_if"]
        latest = out["capacity"]
        counts = {t["node_type"]: t["nodes"] for t in latest["types"]}
        totals = {t["node_type"]: t["draw_w"] for t in latest["types"]}
        counts["DGX-H100"] += 32
        totals["DGX-H100"] += 32 * 10_200
        solved = fleet_solution(cplan.plan, counts, totals)
        assert w["it_w"] == pytest.approx(solved.power.total_it_w, rel=1e-12)
        assert w["fabric_w"] == pytest.approx(solved.power.fabric_w, rel=1e-12)
        assert w["fits"] is solved.fits
        assert code == (0 if solved.fits else 1)

        code, out = capacity_json("--db", str(db), "--plan", str(plan_path), "--now")
        assert out["capacity"]["nodes"] == FLEET + 3
        assert out["capacity"]["nodes_w"] == pytest.approx(truth, rel=0.01)
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO pools (name, created) VALUES ('old', 0)")
            conn.executemany(
                "INSERT INTO pool_nodes (node, pool) VALUES (?, 'old')",
                [(n,) for n in sim.node_ids[:10]],
            )
        conn.close()
        code, out = capacity_json("--db", str(db), "--plan", str(plan_path), "--remove", "old")
        assert out["capacity"]["nodes"] == FLEET + 3 - 10
        assert "without 10 node(s)" in out["source"]

        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            collector_main(["capacity", "--db", str(db), "--add", "DGX-H100=32"])
        lines = text.getvalue()
        assert "live IT draw" in lines
        assert "hot-rack" in lines
        assert "What-if: add 32 x DGX-H100 at 10.2 kW (nameplate)" in lines

        for picture, extra in (
            ("usage", []),
            ("usage", ["--node", sim.node_ids[0]]),
            ("usage", ["--pool", "old", "--since", "1h"]),
            ("capacity", []),
            ("hierarchy", []),
        ):
            png = tmp_path / f"{picture}-{len(extra)}.png"
            with contextlib.redirect_stdout(io.StringIO()):
                code = collector_main(["plot", picture, "--db", str(db), "--out", str(png), *extra])
            assert code == 0
            assert png_size(png) == (1600, 1000)


BMC_FLEET = 200


async def test_bmc_readings_are_the_live_draw_and_calibrate_the_rest(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """200 simulated DGX nodes, half of which report their BMC's input power: the measured
    part of the live draw is the sum of those readings, IT draw is nodes + fabric, the type's
    calibrated rest is within 1 % of the simulator's true rest, and the whole draw within
    1 % of the truth; `--explain` shows a node's sum, /metrics how each part was obtained."""
    plan_path = _plan_file(tmp_path)
    s = collector_runner.settings
    collector_runner.settings = s.model_copy(
        update={
            "capacity": CapacitySettings(plan=plan_path, interval_s=0.5),
            "metrics_listen": "127.0.0.1:0",
        }
    )
    collector = await collector_runner.start()
    sim = FleetSimulator(BMC_FLEET, seed=SEED, interval_s=600, bmc_share=0.5)
    async with publishing(mosquitto, sim, workers=32):
        db = collector_runner.db

        def settled() -> bool:
            by = latest_capacity(db).get("nodes_by", {})
            return bool(by.get("measured") == BMC_FLEET // 2 and by.get("calibrated"))

        await wait_until(settled, timeout_s=60, what="a snapshot with the BMC readings")
        await wait_until(
            lambda: all(
                (st := collector.live.get(n)) is not None and st.sample is not None
                for n in sim.node_ids
            ),
            what="every node's sample in the live view",
        )
        code, out = capacity_json("--db", str(db), "--now", "--plan", str(plan_path))
        assert code == 0
        p = out["capacity"]
        truth_sim = FleetSimulator(BMC_FLEET, seed=SEED, interval_s=600, bmc_share=0.5)
        readings = truth = 0.0
        for i, node in enumerate(sim.node_ids):
            st = collector.live.get(node)
            assert st is not None
            assert st.sample is not None
            true_w = truth_sim.true_power_w(i, truth_sim.sample(i, st.sample.ts, st.sample.seq))
            truth += true_w
            if sim.reports_bmc[i]:
                assert st.sample.node_power_w == pytest.approx(true_w)
                readings += st.sample.node_power_w or 0.0
        assert p["nodes_by"]["measured"] == BMC_FLEET // 2
        assert p["draw_by"]["measured"] == pytest.approx(readings, rel=1e-9)
        assert p["it_w"] == pytest.approx(p["nodes_w"] + p["fabric_w"], rel=1e-12)
        assert p["nodes_w"] == pytest.approx(truth, rel=0.01)
        dgx = next(t for t in p["types"] if t["node_type"] == "DGX-H100")
        assert dgx["rest_from"] == "calibrated"
        assert dgx["rest_nodes"] == BMC_FLEET // 2
        true_rest = sum(sim.rest_w) / BMC_FLEET
        assert dgx["rest_w"] == pytest.approx(true_rest, rel=0.01)
        assert dgx["rest_p25_w"] < dgx["rest_w"] < dgx["rest_p75_w"]

        old = capacity_json("--db", str(db), "--plan", str(plan_path), "--rest-basis", "nameplate")[
            1
        ]
        assert old["capacity"]["nodes_w"] > p["nodes_w"]  # the slack on every unmeasured node

        measured = sim.node_ids[sim.reports_bmc.index(True)]
        calibrated = sim.node_ids[sim.reports_bmc.index(False)]
        code, explained = capacity_json(
            "--db", str(db), "--plan", str(plan_path), "--explain", measured
        )
        assert code == 0
        assert explained["node"]["obtained"] == "measured"
        assert explained["node"]["node_power_source"] == "dcmi"
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = collector_main(
                ["capacity", "--db", str(db), "--plan", str(plan_path), "--explain", calibrated]
            )
        assert code == 0
        lines = text.getvalue()
        assert f"{calibrated} (DGX-H100, rack hot-rack)" in lines
        assert "calibrated: median of node - GPUs - CPU over 100 DGX-H100 node(s)" in lines
        assert "8 of 8 measured" in lines
        assert "RAPL package power" in lines
        with contextlib.redirect_stdout(io.StringIO()):
            bad = collector_main(["capacity", "--db", str(db), "--explain", "nope"])
        assert bad == 2

        scraped = await scrape_clean(collector)
        assert 'capwatch_capacity_nodes_obtained{obtained="measured"} 100.0' in scraped
        assert 'capwatch_capacity_type_rest_nodes{node_type="DGX-H100"} 100.0' in scraped
        assert 'capwatch_fleet_node_input_power_nodes{source="dcmi"} 100.0' in scraped

        out_q = io.StringIO()
        with contextlib.redirect_stdout(out_q):
            assert collector_main(["query", "--db", str(db), "--json", "--node", measured]) == 0
        stored = json.loads(out_q.getvalue())["samples"][0]
        assert stored["node_power_source"] == "dcmi"
        assert stored["node_power_w"] == pytest.approx(
            collector.live.get(measured).sample.node_power_w  # type: ignore[union-attr]
        )
