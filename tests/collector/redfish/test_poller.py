"""The Redfish poller against DMTF's mockups served on loopback (tests/redfish.py).

Real HTTP, real sockets: a BMC that is down is a closed port, a slow one answers late, a
refused login is the server's 401.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.counters import labelled_values
from collector.localbroker import free_port
from collector.redfish.metrics import bmc_families
from collector.redfish.settings import BmcSettings
from tests.collector.redfish.conftest import (
    PASSWORD,
    USER,
    live_with,
    make_poller,
    running,
    watts,
    write_credentials,
)
from tests.helpers import wait_until
from tests.integration.secure_broker import make_pki
from tests.redfish import RACKMOUNT_2022, MockupBmc

EM = "/redfish/v1/Chassis/1U/EnvironmentMetrics"
POWER = "/redfish/v1/Chassis/1U/Power"


def _bmc(node: str, url: str, **kw: object) -> BmcSettings:
    return BmcSettings.model_validate({"node": node, "url": url, **kw})


async def test_reads_environment_metrics_when_the_bmc_has_it(
    bmc2022: MockupBmc, creds_file: Path
) -> None:
    """public-rackmount1 of 2022: PowerWatts.Reading (374 W), not the deprecated Power's
    344 W; source redfish, fresh for the poll interval; one kept-alive connection."""
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2022.url)], interval_s=0.1)
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get("ok", 0) >= 3, what="three polls")
    st = live.get("n1")
    assert st is not None
    assert st.node_power is not None
    assert st.node_power.watts == 374.0
    assert st.node_power.source == "redfish"
    assert st.node_power.interval_s == 0.1
    assert abs(st.node_power.received - time.time()) < 5
    assert bmc2022.count(POWER) == 0
    assert bmc2022.count("/redfish/v1/Chassis") == 1  # found once, then one GET per poll
    assert bmc2022.connections == 1
    assert labelled_values(poller.metrics.polls)["ok"] >= 3


async def test_reads_power_control_on_firmware_without_environment_metrics(
    bmc2020: MockupBmc, creds_file: Path
) -> None:
    """public-rackmount1 of 2020 has only Power: PowerControl[0].PowerConsumedWatts."""
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2020.url, chassis="1U")])
    async with running(poller):
        await wait_until(lambda: watts(live, "n1") is not None, what="a reading")
    assert watts(live, "n1") == 344.0
    assert bmc2020.count("/redfish/v1/Chassis") == 0  # the chassis was named: no discovery


async def test_falls_back_to_power_when_environment_metrics_has_no_power(
    bmc2022: MockupBmc, creds_file: Path
) -> None:
    """An EnvironmentMetrics without PowerWatts: Power is read, then only Power."""
    bmc2022.overrides[EM] = json.dumps({"TemperatureCelsius": {"Reading": 39}}).encode()
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2022.url)])
    async with running(poller):
        await wait_until(lambda: bmc2022.count(POWER) >= 3, what="three polls of Power")
    assert watts(live, "n1") == 344.0
    assert bmc2022.count(EM) == 1


async def test_a_bmc_that_is_down_backs_off_and_the_others_are_read(
    bmc2022: MockupBmc, creds_file: Path
) -> None:
    """Connection refused: counted as unreachable, the BMC in backoff (tried far less often
    than every interval); the healthy BMC is read every interval meanwhile."""
    live = live_with("up", "down")
    poller = make_poller(
        live,
        creds_file,
        [_bmc("up", bmc2022.url), _bmc("down", f"http://127.0.0.1:{free_port()}")],
        interval_s=0.1,
    )
    with capture_logs() as logs:
        async with running(poller):
            await wait_until(
                lambda: poller.bmcs[0].counts.get("ok", 0) >= 20, what="20 polls of the good BMC"
            )
            assert poller.metrics.backoff._value.get() == 1
    counts = {b.node: b.counts for b in poller.bmcs}
    # 20 intervals: retried at 2, 4, 8 ... intervals (x [0.5, 1)), so at most ~6 attempts.
    assert 1 <= counts["down"]["unreachable"] <= 7
    assert "ok" not in counts["down"]
    assert counts["up"]["ok"] >= 20
    assert watts(live, "up") == 374.0
    assert watts(live, "down") is None
    failed = [e for e in logs if e["event"] == "redfish_poll_failed"]
    assert [(e["node"], e["outcome"]) for e in failed] == [("down", "unreachable")]


async def test_a_slow_bmc_does_not_hold_the_others(bmc2022: MockupBmc, creds_file: Path) -> None:
    """A BMC that answers after 3 s with a 0.5 s timeout: counted as timeouts; the other
    BMC keeps its pace (polled about every interval while the slow one hangs)."""
    with MockupBmc(RACKMOUNT_2022, username=USER, password=PASSWORD) as slow:
        slow.delay_s = 3.0
        live = live_with("fast", "slow")
        poller = make_poller(
            live,
            creds_file,
            [_bmc("slow", slow.url), _bmc("fast", bmc2022.url)],
            interval_s=0.2,
            timeout_s=0.5,
            max_concurrency=2,
        )
        async with running(poller):
            t0 = time.monotonic()
            await wait_until(lambda: poller.bmcs[0].counts.get("timeout", 0) >= 1, what="timeout")
            await wait_until(lambda: bmc2022.count(EM) >= 10, what="10 polls of the fast BMC")
            elapsed = time.monotonic() - t0
    # 10 polls at 0.2 s take ~2 s; a poller waiting on the slow BMC would take 3 s per poll.
    assert elapsed < 10
    assert watts(live, "fast") == 374.0
    assert watts(live, "slow") is None


async def test_a_refused_login_is_one_log_line_counted_and_never_shows_the_password(
    bmc2022: MockupBmc, bmc2020: MockupBmc, tmp_path: Path
) -> None:
    """401: outcome auth, one warning naming the node, URL and user (not the password), the
    BMC backed off to backoff_max_s at once (a BMC locks accounts after failed logins)."""
    creds = write_credentials(
        tmp_path / "c.json",
        {
            "default": {"username": USER, "password": PASSWORD},
            "nodes": {"n1": {"username": USER, "password": "wrong-horse-battery"}},
        },
    )
    live = live_with("n1", "ok")
    poller = make_poller(
        live, creds, [_bmc("n1", bmc2022.url), _bmc("ok", bmc2020.url)], backoff_max_s=60
    )
    with capture_logs() as logs:
        async with running(poller):
            await wait_until(lambda: poller.bmcs[0].counts.get("auth") == 1, what="counted")
            # ten more rounds: the refused BMC is not asked again (backed off to 30-60 s)
            await wait_until(lambda: bmc2020.count(POWER) >= 10, what="ten rounds")
    assert poller.bmcs[0].counts == {"auth": 1}
    assert bmc2022.refused == 1
    assert poller.bmcs[0].retry_at - time.monotonic() > 25
    failed = [e for e in logs if e["event"] == "redfish_poll_failed"]
    assert len(failed) == 1
    assert failed[0]["node"] == "n1"
    assert failed[0]["outcome"] == "auth"
    assert failed[0]["user"] == USER
    assert failed[0]["url"] == bmc2022.url
    assert "wrong-horse-battery" not in repr(logs)
    assert watts(live, "n1") is None
    assert watts(live, "ok") == 344.0


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"<html>Service Unavailable</html>", "invalid"),
        (b'{"PowerWatts": {"Reading": 374', "invalid"),
        (b"[" * 100_000, "invalid"),
        (b'{"PowerWatts": {"Reading": "374 W"}}', "invalid"),
        (b'{"PowerWatts": {"Reading": true}}', "invalid"),
        (b'{"PowerWatts": {"Reading": 1e9}}', "out_of_range"),
        (b'{"PowerWatts": {"Reading": -5}}', "out_of_range"),
        (b'{"PowerWatts": {"Reading": 1' + b"0" * 400 + b"}}", "out_of_range"),
    ],
)
async def test_garbage_and_absurd_readings_are_rejected_and_counted(
    bmc2022: MockupBmc, creds_file: Path, body: bytes, outcome: str
) -> None:
    """An answer that is not JSON, not the schema's shape, or a reading outside [0, 100 kW]
    gives no reading and is counted under its outcome; the view keeps no value."""
    bmc2022.overrides[EM] = body
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2022.url)])
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get(outcome, 0) >= 1, what=outcome)
    assert set(poller.bmcs[0].counts) == {outcome}
    assert labelled_values(poller.metrics.polls)[outcome] >= 1
    assert watts(live, "n1") is None


async def test_a_chassis_without_any_reading_is_counted_as_no_reading(
    bmc2022: MockupBmc, creds_file: Path
) -> None:
    """EnvironmentMetrics' reading null (sensor unavailable) and Power without PowerControl:
    no_reading, and no value held."""
    bmc2022.overrides[EM] = b'{"PowerWatts": {"Reading": null}}'
    bmc2022.overrides[POWER] = b'{"PowerControl": []}'
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2022.url)])
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get("no_reading", 0) >= 1, what="none")
    assert set(poller.bmcs[0].counts) == {"no_reading"}
    assert watts(live, "n1") is None


async def test_an_answer_over_the_size_limit_is_refused(
    bmc2022: MockupBmc, creds_file: Path
) -> None:
    """A body past max_response_bytes is not read to its end, nor parsed."""
    bmc2022.overrides[EM] = b'{"PowerWatts": {"Reading": 374}, "Pad": "' + b"x" * 20_000 + b'"}'
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2022.url)], max_response_bytes=8192)
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get("invalid", 0) >= 1, what="invalid")
    assert watts(live, "n1") is None


async def test_a_link_off_the_service_is_not_followed(bmc2022: MockupBmc, creds_file: Path) -> None:
    """A chassis whose EnvironmentMetrics points at another host: refused, not fetched."""
    doc = json.loads((RACKMOUNT_2022 / "Chassis/1U/index.json").read_text())
    doc["EnvironmentMetrics"] = {"@odata.id": "http://198.51.100.7/steal"}
    bmc2022.overrides["/redfish/v1/Chassis/1U"] = json.dumps(doc).encode()
    live = live_with("n1")
    poller = make_poller(live, creds_file, [_bmc("n1", bmc2022.url)])
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get("invalid", 0) >= 1, what="invalid")
    assert bmc2022.count(EM) == 0


async def test_tls_is_verified_unless_a_bmc_opts_out(tmp_path: Path, creds_file: Path) -> None:
    """A BMC certificate from a private CA: refused against the system trust store (tls),
    read with ca_file, read with insecure = true."""
    pki = make_pki(tmp_path / "pki", client_cn="unused")
    with MockupBmc(
        RACKMOUNT_2022, username=USER, password=PASSWORD, tls=(pki.server_cert, pki.server_key)
    ) as bmc:
        live = live_with("system", "ca", "insecure")
        poller = make_poller(
            live,
            creds_file,
            [
                _bmc("system", bmc.url),
                _bmc("ca", bmc.url, ca_file=pki.ca_cert),
                _bmc("insecure", bmc.url, insecure=True),
            ],
        )
        async with running(poller):
            await wait_until(
                lambda: watts(live, "ca") is not None and watts(live, "insecure") is not None,
                what="readings over TLS",
            )
            await wait_until(lambda: "tls" in poller.bmcs[0].counts, what="tls refused")
    assert watts(live, "ca") == 374.0
    assert watts(live, "system") is None


async def test_readings_of_a_node_the_fleet_does_not_know_are_dropped(
    bmc2022: MockupBmc, creds_file: Path
) -> None:
    """A BMC listed for a node that never reported: polled, but adds no node to the view."""
    live = live_with()
    poller = make_poller(live, creds_file, [_bmc("ghost", bmc2022.url)])
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get("ok", 0) >= 1, what="a poll")
    assert "ghost" not in live


async def test_each_bmc_has_its_outcome_counters(bmc2022: MockupBmc, creds_file: Path) -> None:
    """bmc_families: one counter per BMC and outcome it has had."""
    live = live_with("up", "down")
    poller = make_poller(
        live,
        creds_file,
        [_bmc("up", bmc2022.url), _bmc("down", f"http://127.0.0.1:{free_port()}")],
    )
    async with running(poller):
        await wait_until(lambda: poller.bmcs[0].counts.get("ok", 0) >= 2, what="two polls")
    samples = {
        (s.labels["bmc"], s.labels["outcome"]): s.value
        for s in bmc_families(poller.bmcs)[0].samples
    }
    assert set(samples) == {("up", "ok"), ("down", "unreachable")}
    assert samples[("up", "ok")] >= 2
