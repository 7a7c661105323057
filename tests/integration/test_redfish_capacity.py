"""Redfish end to end: simulated agents (no node power of their own) through Mosquitto, and
DMTF's mockups on loopback as the BMCs of some nodes; the collector's capacity snapshot
counts those nodes as measured at the BMCs' figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker, free_port
from collector.redfish.settings import BmcSettings, RedfishSettings
from collector.settings import CapacitySettings
from tests.collector.capacity.helpers import PLAN
from tests.collector.redfish.conftest import PASSWORD, USER, write_credentials
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import (
    CollectorRunner,
    capacity_ok,
    latest_capacity,
    publishing,
    scrape_clean,
)
from tests.redfish import RACKMOUNT_2020, RACKMOUNT_2022, MockupBmc

pytestmark = pytest.mark.integration

FLEET = 20


async def test_nodes_read_by_redfish_count_as_measured_at_the_bmcs_figure(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """20 simulated DGX nodes without node power; three BMCs on the 2022 mockup (374 W), two
    on the 2020 one (344 W), one down: `collector capacity --json` counts five nodes measured
    at 3 x 374 + 2 x 344 W, and so do `--now` and `--explain` (recomputed from the store's
    polled readings); /metrics has the poll counters, promtool-clean."""
    sim = FleetSimulator(FLEET, seed=5, interval_s=600)  # one tick, then quiet
    creds = write_credentials(
        tmp_path / "bmc.toml", {"default": {"username": USER, "password": PASSWORD}}
    )
    with (
        MockupBmc(RACKMOUNT_2022, username=USER, password=PASSWORD) as new,
        MockupBmc(RACKMOUNT_2020, username=USER, password=PASSWORD) as old,
    ):
        urls = [new.url] * 3 + [old.url] * 2 + [f"http://127.0.0.1:{free_port()}"]
        bmcs = [BmcSettings(node=n, url=u) for n, u in zip(sim.node_ids, urls, strict=False)]  # type: ignore[arg-type]
        s = collector_runner.settings
        collector_runner.settings = s.model_copy(
            update={
                "capacity": CapacitySettings(plan=PLAN, interval_s=0.5),
                "redfish": RedfishSettings(credentials_file=creds, interval_s=0.5, bmcs=bmcs),
                "metrics_listen": "127.0.0.1:0",
            }
        )
        collector = await collector_runner.start()
        try:
            async with publishing(mosquitto, sim, workers=8):
                db = collector_runner.db

                def settled() -> bool:
                    p = latest_capacity(db)
                    return p.get("nodes_by", {}).get("measured") == 5 and p.get("nodes") == FLEET

                await wait_until(settled, timeout_s=60, what="a snapshot with five BMC readings")
                p = capacity_ok("--db", str(db))["capacity"]
                assert p["nodes_by"]["measured"] == 5
                assert p["draw_by"]["measured"] == 3 * 374.0 + 2 * 344.0
                dgx = next(t for t in p["types"] if t["node_type"] == "DGX-H100")
                assert dgx["nodes_by"]["measured"] == 5
                # Recomputed from the store: the polled readings were stored (polled_power).
                await wait_until(
                    lambda: (
                        len(db_rows(db, "SELECT name FROM polled_power WHERE scope = 'node'")) == 5
                    ),
                    timeout_s=30,
                    what="five stored BMC readings",
                )
                now = capacity_ok("--db", str(db), "--now", "--plan", str(PLAN))["capacity"]
                assert now["nodes_by"]["measured"] == 5
                assert now["draw_by"]["measured"] == 3 * 374.0 + 2 * 344.0
                explained = capacity_ok(
                    "--db", str(db), "--plan", str(PLAN), "--explain", sim.node_ids[3]
                )
                assert explained["node"]["obtained"] == "measured"
                assert explained["node"]["node_power_source"] == "redfish"
                assert explained["node"]["draw_w"] == 344.0
                assert "read by" in explained["lines"][1]
                for node in sim.node_ids:
                    st = collector.live.get(node)
                    assert st is not None
                    assert st.sample is None or st.sample.node_power_w is None  # agents: none
                st = collector.live.get(sim.node_ids[0])
                assert st is not None
                assert st.node_power is not None
                assert (st.node_power.watts, st.node_power.source) == (374.0, "redfish")
                down = collector.live.get(sim.node_ids[5])
                assert down is not None
                assert down.node_power is None

                scraped = await scrape_clean(collector)
                assert "capwatch_collector_redfish_bmcs_in_backoff 1.0" in scraped
                assert (
                    f'capwatch_collector_redfish_bmc_polls_total{{bmc="{sim.node_ids[5]}",'
                    'outcome="unreachable"}' in scraped
                )
                assert 'capwatch_collector_redfish_polls_total{outcome="ok"}' in scraped
                assert "capwatch_collector_redfish_round_duration_seconds_count" in scraped
        finally:
            await collector_runner.stop()
    counters = dict(db_rows(db, "SELECT name, value FROM counters WHERE name LIKE 'redfish_%'"))
    assert counters["redfish_ok"] >= 5
    assert counters["redfish_unreachable"] >= 1
