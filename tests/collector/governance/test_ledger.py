"""The usage ledger from rollups and leases, and ``collector usage`` over it."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.cli import main
from collector.governance.lease import LeaseTerms
from collector.governance.ledger import LedgerJob
from collector.ingest.validate import sample_row
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.settings import RollupSettings
from collector.store.command import Command
from collector.store.db import NodeUpdate, Store
from collector.store.governance import governance
from collector.store.ledger import LeaseHistory, PoolHistory
from collector.store.reader import StoreReader
from collector.store.rollups import RollupConfig
from shared.clock import FakeClock
from shared.schema import encode
from tests.helpers import assert_daily_is_the_hours_summed, collector_json, db_rows

DAY0 = dt.datetime(2026, 11, 10, tzinfo=dt.UTC).timestamp()
GPUS = 4
KEEP_S = RollupSettings().retention_1h_s
"""The 1-hour rollups' retention by default: the oldest hour a ledger catch-up goes to."""


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    for key in list(os.environ):
        if key.startswith("CAPWATCH_"):
            monkeypatch.delenv(key)


async def _ledger(db: StoreTarget, now: float) -> None:
    """One ledger run as the collector does it (a read-only connection, then the writer)."""
    async with Store.open_readonly(db) as reads:
        gov = await reads.run(governance())
        job = LedgerJob(
            FakeClock(start_wall=now), retention_s=KEEP_S, governance=lambda: gov, max_hours=200
        )
        record = await job(reads, LiveView())
    assert record is not None
    async with Store(db) as store:
        while await record.write(store):
            pass


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """Three 4-GPU nodes sampled every 5 min for two days from 2026-11-10 (UTC); node
    n0 and n1 leased by acme for one day, n2 by bravo for thirty; the ledger computed."""
    path = tmp_path / "capwatch.db"
    sim = FleetSimulator(3, gpus_per_node=GPUS, seed=2, interval_s=300)
    rows = []
    for k in range(2 * 24 * 12):
        t = DAY0 + 300 * k
        for i in range(3):
            s = sim.sample(i, t, k)
            rows.append(sample_row(s, encode(s), t + 1))
    inventories = [
        NodeUpdate(n, inventory=encode(sim.inventory(i, DAY0)), inventory_ts=DAY0)
        for i, n in enumerate(sim.node_ids)
    ]
    async with Store(path, rollups=RollupConfig(busy_util_pct=10.0)) as store:
        await store.write_batch(rows, inventories, sim.node_ids)
        await store.fold_rollups()
    n0, n1, n2 = sim.node_ids
    start = dt.date(2026, 11, 10)
    with Command(path, now=DAY0) as tx:
        tx.governance.add_lease(
            name="acme-1", tenant="acme", pool=None, nodes=[n0, n1],
            terms=LeaseTerms(start=start, duration_days=1),
        )  # fmt: skip
        tx.governance.add_lease(
            name="bravo-1", tenant="bravo", pool=None, nodes=[n2],
            terms=LeaseTerms(start=start, duration_days=30),
        )  # fmt: skip
    await _ledger(path, DAY0 + 2 * 86_400)
    return path


def _usage(db: StoreTarget, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = collector_json("usage", "--db", str(db), *args)
    return out


def test_tenants_allocated_hours_add_up_to_the_fleets(db: Path) -> None:
    """Allocated GPU-hours are the contracts': acme 2 nodes x 24 h, bravo 1 node x the 21
    days of November its lease is in force (x 4 GPUs), though the nodes reported for two
    days only; the tenants' rows sum to the totals and to the fleet's allocated hours."""
    got = _usage(db, "--month", "2026-11")
    by_tenant = {r["tenant"]: r for r in got["rows"]}
    assert by_tenant["acme"]["allocated_gpu_hours"] == pytest.approx(2 * 24 * GPUS)
    assert by_tenant["bravo"]["allocated_gpu_hours"] == pytest.approx(21 * 24 * GPUS)
    assert by_tenant["acme"]["coverage_pct"] == pytest.approx(100.0, abs=1.0)
    assert by_tenant["bravo"]["coverage_pct"] == pytest.approx(100.0 * 2 / 21, abs=0.2)
    total = sum(r["allocated_gpu_hours"] for r in got["rows"])
    assert got["totals"]["allocated_gpu_hours"] == pytest.approx(total)
    assert got["fleet"]["allocated_gpu_hours"] == pytest.approx(total)
    # Every hour the nodes reported is in the fleet: 3 nodes x 48 h x 4 GPUs.
    assert got["fleet"]["reported_gpu_hours"] == pytest.approx(3 * 48 * GPUS, rel=0.01)
    for r in got["rows"]:
        assert 0 < r["busy_gpu_hours"] <= r["allocated_gpu_hours"] + 1e-6
        assert r["gpu_kwh"] > 0
        assert r["cpu_kwh"] >= 0
        assert r["node_kwh"] == pytest.approx(r["gpu_kwh"] + r["cpu_kwh"])
        assert r["node_kwh_basis"] == "gpu+cpu"


def test_energy_matches_the_rollups(db: Path) -> None:
    """The fleet's GPU kWh is the rollups' GPU energy (nothing lost or counted twice by
    splitting hours between leases)."""
    got = _usage(db, "--from", "2026-11-10", "--to", "2026-11-11", "--by", "day")
    (joules,) = db_rows(db, "SELECT sum(gpu_energy_j) FROM rollups WHERE res = 3600")[0]
    assert got["fleet"]["gpu_kwh"] == pytest.approx(joules / 3.6e6)
    assert [r["period"] for r in got["rows"]] == [
        "2026-11-10",
        "2026-11-10",
        "2026-11-11",
    ]


def test_recomputing_the_ledger_changes_nothing(db: Path) -> None:
    """The ledger made again from the same rollups and leases is the same."""
    before = db_rows(db, "SELECT * FROM usage_ledger ORDER BY hour, node, lease")
    import asyncio  # noqa: PLC0415

    async def again() -> None:
        async with Store(db) as store:  # every hour dirty again
            await store.execute("DELETE FROM meta WHERE key = 'ledger_at'")
            await store.conn.commit()
        with StoreReader(db) as r:
            hours = [h for (h,) in r.fetchall("SELECT DISTINCT hour FROM usage_ledger")]
        async with Store(db) as store:
            for h in hours:
                await store.execute("INSERT INTO ledger_dirty (hour, n) VALUES (?, 1)", (h,))
            await store.conn.commit()
        await _ledger(db, DAY0 + 2 * 86_400)

    asyncio.run(again())
    after = db_rows(db, "SELECT * FROM usage_ledger ORDER BY hour, node, lease")
    assert len(after) == len(before) > 0
    for a, b in zip(after, before, strict=True):
        assert a[:-1] == pytest.approx(b[:-1])  # all but `computed`
    assert_daily_is_the_hours_summed(db)


def test_daily_sums_follow_a_lease_edited_afterwards(db: Path) -> None:
    """A lease's nodes taken away after its hours were written: the hours recomputed move
    to no lease, and the daily sums follow (no group left behind with nothing in it)."""
    import asyncio  # noqa: PLC0415

    with Command(db, now=DAY0) as tx:
        (lease,) = [x for x in tx.governance.state().leases if x.name == "acme-1"]
        tx.governance.set_lease_nodes(lease, [])

    async def again() -> None:
        with StoreReader(db) as r:
            hours = [h for (h,) in r.fetchall("SELECT DISTINCT hour FROM usage_ledger")]
        async with Store(db) as store:
            for h in hours:
                await store.execute("INSERT INTO ledger_dirty (hour, n) VALUES (?, 1)", (h,))
            await store.conn.commit()
        await _ledger(db, DAY0 + 2 * 86_400)

    asyncio.run(again())
    assert db_rows(db, "SELECT count(*) FROM usage_daily WHERE lease = 'acme-1'") == [(0,)]
    assert_daily_is_the_hours_summed(db)


def test_prices_from_billing(db: Path, tmp_path: Path) -> None:
    """Cost: a lease's contract price, else the tenant's, else the default; plus kWh."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[billing]\ncurrency = "USD"\ngpu_hour = 2.0\nkwh = 0.5\n'
        'gpu_hour_by_tenant = { acme = 3.0 }\ngpu_hour_by_lease = { "bravo-1" = 1.0 }\n'
    )
    got = _usage(db, "--config", str(cfg), "--month", "2026-11")
    by_tenant = {r["tenant"]: r for r in got["rows"]}
    acme, bravo = by_tenant["acme"], by_tenant["bravo"]
    assert acme["gpu_hour_cost"] == pytest.approx(3.0 * 2 * 24 * GPUS)
    assert bravo["gpu_hour_cost"] == pytest.approx(1.0 * 21 * 24 * GPUS)  # the contract
    assert acme["cost"] == pytest.approx(acme["gpu_hour_cost"] + 0.5 * acme["node_kwh"])
    assert got["currency"] == "USD"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--month YYYY-MM"),
        (["--month", "2026-13"], "--month '2026-13'"),
        (["--from", "2026-11-05", "--to", "2026-11-01"], "--to"),
        (["--from", "yesterday", "--to", "2026-11-01"], "--from 'yesterday'"),
    ],
)
def test_bad_dates_are_one_line(
    db: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A window the command cannot read is refused, naming the flag."""
    assert main(["usage", "--db", str(db), *args]) == 2
    assert needle in capsys.readouterr().err


def test_csv_has_a_header_and_a_row_per_tenant(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--csv: the columns, then one line per period and tenant."""
    assert main(["usage", "--db", str(db), "--month", "2026-11", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("period,tenant,allocated_gpu_hours,busy_gpu_hours")
    assert [line.split(",")[1] for line in lines[1:]] == ["acme", "bravo"]


async def test_node_energy_is_measured_where_the_node_reported_it(tmp_path: Path) -> None:
    """A node whose BMC reported its input power in every sample of an hour has that
    hour's energy measured (power x interval); an hour it reported for half of is measured
    over that half plus GPU+CPU over the rest; a node that never reported is GPU+CPU."""
    path = tmp_path / "capwatch.db"
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=5, interval_s=60, bmc_share=0.5)
    bmc = sim.reports_bmc.index(True)
    rows, watts = [], {0: 0.0, 1: 0.0}
    for k in range(120):  # two hours at 1 min
        t = DAY0 + 60 * k
        for i in range(2):
            s = sim.sample(i, t, k)
            if i == bmc and k >= 90:  # the BMC stops answering half way through hour 1
                s = msgspec.structs.replace(s, node_power_w=None, node_power_source=None)
            if i == bmc and s.node_power_w is not None:
                watts[k // 60] += s.node_power_w * 60
            rows.append(sample_row(s, encode(s), t + 1))
    async with Store(path, rollups=RollupConfig()) as store:
        await store.write_batch(rows, (), sim.node_ids)
        await store.fold_rollups()
    await _ledger(path, DAY0 + 2 * 3600)
    got = {
        (r[0], r[1]): r[2:]
        for r in db_rows(
            path,
            "SELECT hour, node, node_kwh, node_kwh_basis, gpu_kwh, cpu_kwh FROM usage_ledger",
        )
    }
    node, other = sim.node_ids[bmc], sim.node_ids[1 - bmc]
    h0, h1 = int(DAY0), int(DAY0) + 3600
    assert got[(h0, node)][:2] == (pytest.approx(watts[0] / 3.6e6), "measured")
    kwh, basis, gpu_kwh, cpu_kwh = got[(h1, node)]
    assert basis == "measured+gpu+cpu"
    assert kwh == pytest.approx(watts[1] / 3.6e6 + (gpu_kwh + cpu_kwh) * 0.5)
    kwh, basis, gpu_kwh, cpu_kwh = got[(h0, other)]
    assert (kwh, basis) == (pytest.approx(gpu_kwh + cpu_kwh), "gpu+cpu")


def test_plot_usage_per_day_draws_a_tenants_ledger(db: Path, tmp_path: Path) -> None:
    """plot usage --tenant --month: a 1600x1000 PNG whose bars are the tenant's allocated
    and busy GPU-hours per day (acme held two nodes on 2026-11-10 only)."""
    pytest.importorskip("matplotlib")
    import datetime as _dt  # noqa: PLC0415

    from collector.governance.billing import usage_report  # noqa: PLC0415
    from collector.plot.ledger import ledger_figure  # noqa: PLC0415
    from collector.settings import BillingSettings  # noqa: PLC0415
    from collector.store.ledger import ledger_days  # noqa: PLC0415

    out = tmp_path / "acme.png"
    args = ["plot", "usage", "--db", str(db), "--tenant", "acme", "--month", "2026-11"]
    assert main([*args, "--out", str(out)]) == 0
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20]), int.from_bytes(head[20:24])) == (1600, 1000)

    since = _dt.datetime(2026, 11, 1, tzinfo=_dt.UTC).timestamp()
    with StoreReader(db) as r:
        days = r.run(ledger_days(since, since + 30 * 86_400, tenant="acme"))
    report = usage_report(days, "day", BillingSettings())
    fig = ledger_figure(report, "tenant acme", _dt.date(2026, 11, 1), _dt.date(2026, 11, 30))
    top = fig.axes[0]
    allocated = [b.get_height() for b in top.containers[0]]
    busy = [b.get_height() for b in top.containers[1]]
    assert len(allocated) == 30
    assert allocated[9] == pytest.approx(2 * 24 * GPUS)  # 2026-11-10
    assert sum(allocated) == pytest.approx(allocated[9])
    assert 0 < busy[9] <= allocated[9]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tenant", "acme"], "--tenant"),
        (["--tenant", "nobody", "--month", "2026-11"], "--tenant 'nobody'"),
        (["--node", "x1000c0s0b0n0", "--month", "2026-11"], "--month"),
        # A bar a day, in 1,600 pixels: 2,557 days took 8 s, 127 years 2 GB and 2 minutes,
        # 0001-9999 never ended.
        (["--from", "2020-01-01", "--to", "2026-12-31"], "--from/--to: 2,557 days is more"),
        (["--from", "0001-01-01", "--to", "9999-12-31"], "--from/--to: 3,652,059 days is more"),
    ],
)
def test_plot_usage_per_day_bad_flags_are_one_line(
    db: Path, tmp_path: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant without days, an unknown tenant, --month with --node, more days than the
    picture has pixels: refused, named."""
    out = str(tmp_path / "x.png")
    assert main(["plot", "usage", "--db", str(db), "--out", out, *args]) == 2
    assert needle in capsys.readouterr().err


async def _sampled(
    db: StoreTarget,
    sim: FleetSimulator,
    hours: list[float],
    nodes: int,
    *,
    inventories: bool = True,
    offset_s: float = 0.0,
) -> None:
    """The first ``nodes`` of ``sim`` sampled every 10 minutes in ``hours`` (each the start
    of an hour; ``offset_s`` after each 10 minutes), all of ``sim``'s nodes with an inventory
    (``inventories``); stored and rolled up."""
    rows = []
    for h in hours:
        for k in range(6):
            t = h + offset_s + 600 * k
            for i in range(nodes):
                s = sim.sample(i, t, int(t // 600))
                rows.append(sample_row(s, encode(s), t + 1))
    updates = [
        NodeUpdate(n, inventory=encode(sim.inventory(i, DAY0)), inventory_ts=DAY0)
        for i, n in enumerate(sim.node_ids)
        if inventories
    ]
    async with Store(db, rollups=RollupConfig()) as store:
        await store.write_batch(rows, updates, sim.node_ids)
        await store.fold_rollups()


def _lease(
    db: StoreTarget,
    now: float,
    name: str,
    nodes: list[str],
    start: dt.date,
    *,
    days: int,
    tenant: str = "acme",
    pool: str | None = None,
) -> None:
    """Lease ``nodes`` (or ``pool``) to ``tenant`` for ``days`` from ``start``, at ``now``."""
    with Command(db, now=now) as tx:
        tx.governance.add_lease(
            name=name,
            tenant=tenant,
            pool=pool,
            nodes=nodes,
            terms=LeaseTerms(start=start, duration_days=days),
        )


async def test_a_lease_bills_its_contract_through_a_monitoring_gap(store_url: StoreTarget) -> None:
    """A one-day lease bills its 24 hours whatever the monitoring saw: acme's node reported
    18 of them (a six-hour gap with no collector), bravo's none at all. Busy hours and
    energy stay measured; coverage shows the gap; the tenants add up to the fleet."""
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=7, interval_s=600)
    seen = [DAY0 + 3600 * h for h in [*range(12), *range(18, 24)]]
    await _sampled(store_url, sim, seen, nodes=1)
    n0, n1 = sim.node_ids
    one_day = LeaseTerms(start=dt.date(2026, 11, 10), duration_days=1)
    with Command(store_url, now=DAY0) as tx:
        tx.governance.add_lease(name="acme-1", tenant="acme", pool=None, nodes=[n0], terms=one_day)
        tx.governance.add_lease(
            name="bravo-1", tenant="bravo", pool=None, nodes=[n1], terms=one_day
        )
    await _ledger(store_url, DAY0 + 86_400)

    got = _usage(store_url, "--from", "2026-11-10", "--to", "2026-11-10")
    acme, bravo = got["rows"]
    assert (acme["tenant"], bravo["tenant"]) == ("acme", "bravo")
    assert acme["allocated_gpu_hours"] == pytest.approx(24 * GPUS)
    assert acme["reported_gpu_hours"] == pytest.approx(18 * GPUS)
    assert acme["coverage_pct"] == pytest.approx(75.0)
    assert 0 < acme["busy_gpu_hours"] <= acme["reported_gpu_hours"]
    assert acme["gpu_kwh"] > 0
    assert bravo["allocated_gpu_hours"] == pytest.approx(24 * GPUS)
    assert (bravo["coverage_pct"], bravo["busy_gpu_hours"], bravo["gpu_kwh"]) == (0.0, 0.0, 0.0)
    assert bravo["node_kwh_basis"] == "none"
    total = acme["allocated_gpu_hours"] + bravo["allocated_gpu_hours"]
    assert got["totals"]["allocated_gpu_hours"] == pytest.approx(total)
    assert got["fleet"]["allocated_gpu_hours"] == pytest.approx(total)
    # The ledger alone holds the hours it computed (those some node reported in): 18 of
    # each lease's 24.
    ((ledger,),) = db_rows(store_url, "SELECT sum(allocated_gpu_h) FROM usage_ledger")
    assert ledger == pytest.approx(2 * 18 * GPUS)

    # A lease in force now bills up to now, not to the end of the window.
    from collector.cli.usage import read_days  # noqa: PLC0415

    with StoreReader(store_url) as reader:
        days = read_days(reader, DAY0, DAY0 + 2 * 86_400, tenant="acme", now=DAY0 + 6 * 3600)
    assert sum(d["allocated_gpu_hours"] for d in days) == pytest.approx(6 * GPUS)


async def test_a_node_moved_between_pools_mid_month_counts_in_each_for_its_hours(
    store_url: StoreTarget,
) -> None:
    """Two nodes in pool `a`, moved to `b` at 00:20 on 2026-11-15: their ledger hours count
    in `a` until 01:00 (the pool at each hour's start), in `b` after, whether a lease of
    named nodes holds them (acme holds n0) or none (n1); acme's allocated hours split the
    same way, and `usage --pool` sees each pool's share."""
    day = DAY0 + 4 * 86_400  # 2026-11-14
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=8, interval_s=600)
    await _sampled(store_url, sim, [day + 3600 * h for h in range(48)], nodes=2)
    n0, n1 = sim.node_ids
    with Command(store_url, now=day - 86_400) as tx:
        tx.pools.create("a")
        tx.pools.create("b")
        tx.pools.move([n0, n1], "a", "test")
    with Command(store_url, now=day + 86_400 + 1200) as tx:
        tx.pools.move([n0, n1], "b", "test")
    _lease(store_url, day, "acme-1", [n0], dt.date(2026, 11, 14), days=2)
    await _ledger(store_url, day + 2 * 86_400)

    pools = db_rows(
        store_url, "SELECT pool, count(*) FROM usage_ledger WHERE node = ? GROUP BY pool", (n1,)
    )
    assert sorted(pools) == [("a", 25), ("b", 23)]
    for pool, hours in (("a", 25), ("b", 23)):
        got = _usage(store_url, "--month", "2026-11", "--pool", pool)
        (acme,) = got["rows"]
        assert acme["allocated_gpu_hours"] == pytest.approx(hours * GPUS)
        assert acme["coverage_pct"] == pytest.approx(100.0)
        assert got["fleet"]["reported_gpu_hours"] == pytest.approx(2 * hours * GPUS)


async def test_a_node_moved_between_leases_mid_month_bills_each_for_its_time(
    store_url: StoreTarget,
) -> None:
    """n0, leased by acme from 2026-11-14, moved to bravo's lease (which holds n1) at 00:20
    on the 15th: acme is allocated n0's 24 h 20 min, bravo the rest of its two days plus
    n1's; the ledger splits the hour of the move 1/3 - 2/3 between them; the tenants' rows
    still add up to the fleet's allocated hours, in the ledger as in the bill."""
    day = DAY0 + 4 * 86_400  # 2026-11-14
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=9, interval_s=600)
    await _sampled(store_url, sim, [day + 3600 * h for h in range(48)], nodes=2)
    n0, n1 = sim.node_ids
    _lease(store_url, day, "acme-1", [n0], dt.date(2026, 11, 14), days=2)
    _lease(store_url, day, "bravo-1", [n1], dt.date(2026, 11, 14), days=2, tenant="bravo")
    with Command(store_url, now=day + 86_400 + 1200) as tx:
        leases = {lease.name: lease for lease in tx.governance.state().leases}
        tx.governance.set_lease_nodes(leases["acme-1"], [])
        tx.governance.set_lease_nodes(leases["bravo-1"], [n1, n0])
    await _ledger(store_url, day + 2 * 86_400)

    got = _usage(store_url, "--month", "2026-11")
    by_tenant = {r["tenant"]: r["allocated_gpu_hours"] for r in got["rows"]}
    moved_h = 24 + 1 / 3
    assert by_tenant == {
        "acme": pytest.approx(moved_h * GPUS),
        "bravo": pytest.approx((48 + 48 - moved_h) * GPUS),
    }
    assert got["fleet"]["allocated_gpu_hours"] == pytest.approx(2 * 48 * GPUS)
    assert got["totals"]["allocated_gpu_hours"] == pytest.approx(2 * 48 * GPUS)
    ledger = db_rows(
        store_url,
        "SELECT lease, sum(held_h), sum(allocated_gpu_h) FROM usage_ledger WHERE node = ? "
        "GROUP BY lease ORDER BY lease",
        (n0,),
    )
    assert ledger == [
        ("acme-1", pytest.approx(moved_h), pytest.approx(moved_h * GPUS)),
        ("bravo-1", pytest.approx(48 - moved_h), pytest.approx((48 - moved_h) * GPUS)),
    ]
    hour = db_rows(
        store_url,
        "SELECT lease, held_h FROM usage_ledger WHERE node = ? AND hour = ? ORDER BY lease",
        (n0, int(day) + 86_400),
    )
    assert hour == [("acme-1", pytest.approx(1 / 3)), ("bravo-1", pytest.approx(2 / 3))]


async def test_a_pool_lease_bills_a_node_until_it_leaves_the_pool(store_url: StoreTarget) -> None:
    """A lease of pool `a` follows its pool: a node moved out of `a` at 00:20 on the 15th
    (recorded as leaving the lease, in the pool command's transaction) is billed to the
    lease until then, not for the whole lease, nor for none of it."""
    day = DAY0 + 4 * 86_400
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=10, interval_s=600)
    await _sampled(store_url, sim, [day + 3600 * h for h in range(48)], nodes=2)
    n0, n1 = sim.node_ids
    with Command(store_url, now=day - 86_400) as tx:
        tx.pools.create("a")
        tx.pools.move([n0, n1], "a", "test")
    _lease(store_url, day, "acme-a", [n0, n1], dt.date(2026, 11, 14), days=2, pool="a")
    with Command(store_url, now=day + 86_400 + 1200) as tx:
        tx.pools.move([n1], "free", "test")
    await _ledger(store_url, day + 2 * 86_400)
    got = _usage(store_url, "--month", "2026-11")
    (acme,) = got["rows"]
    assert acme["allocated_gpu_hours"] == pytest.approx((48 + 24 + 1 / 3) * GPUS)
    ((held,),) = db_rows(
        store_url, "SELECT sum(held_h) FROM usage_ledger WHERE lease = 'acme-a' AND node = ?", (n1,)
    )
    assert held == pytest.approx(24 + 1 / 3)


async def test_a_node_with_no_inventory_counts_the_gpus_its_samples_reported(
    store_url: StoreTarget,
) -> None:
    """A leased node whose agent never sent an inventory has the GPUs its samples reported
    (4): its one-day lease allocates 24 h x 4 in the bill and in every ledger hour, the
    hours it did not report in (a six-hour gap) too, not 0."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=11, interval_s=600)
    seen = [DAY0 + 3600 * h for h in [*range(12), *range(18, 24)]]
    await _sampled(store_url, sim, seen, nodes=1, inventories=False)
    (n0,) = sim.node_ids
    _lease(store_url, DAY0, "acme-1", [n0], dt.date(2026, 11, 10), days=1)
    await _ledger(store_url, DAY0 + 12.5 * 3600)
    await _ledger(store_url, DAY0 + 86_400)  # computes 12:00-24:00, the gap's hours too
    (acme,) = _usage(store_url, "--from", "2026-11-10", "--to", "2026-11-10")["rows"]
    assert acme["allocated_gpu_hours"] == pytest.approx(24 * GPUS)
    assert acme["coverage_pct"] == pytest.approx(75.0)
    rows = db_rows(store_url, "SELECT DISTINCT gpus, allocated_gpu_h FROM usage_ledger")
    assert rows == [(GPUS, pytest.approx(GPUS))]
    ((hours,),) = db_rows(store_url, "SELECT count(*) FROM usage_ledger")
    assert hours == 24


def test_lease_history_spans_follow_the_moves() -> None:
    """A node that left a lease and came back is held in the spans between; one with no
    move recorded is held all along if the lease holds it now, else never; the nodes of a
    lease's history are those it holds now, then those that left it."""
    h = 1_800_000_000
    history = LeaseHistory([("L", "n", h + 100, 0), ("L", "n", h + 300, 1), ("L", "m", h, 0)])
    assert history.spans("L", "n", True, h, h + 1000) == [(h, h + 100), (h + 300, h + 1000)]
    assert history.spans("L", "n", True, h + 150, h + 250) == []
    assert history.spans("L", "m", False, h - 50, h + 50) == [(h - 50, h)]
    assert history.spans("L", "o", True, h, h + 10) == [(h, h + 10)]
    assert history.spans("L", "o", False, h, h + 10) == []
    assert history.nodes("L", ("n", "o")) == ("n", "o", "m")


def test_pool_history_counts_a_move_from_the_next_hour() -> None:
    """A node's pool at an instant is its pool at the start of that hour: a move at 10:20
    counts from 11:00, one made exactly at 12:00 from 12:00; before any move recorded, the
    pool the first one took it from; after the last, its pool now."""
    h = 1_800_000_000 // 3600 * 3600
    history = PoolHistory({"n": "c"}, [("n", h + 1200, "a"), ("n", h + 7200, "b")])
    assert [history.at("n", h + s) for s in (0, 3599, 3600, 7199, 7200)] == [
        "a",
        "a",
        "b",
        "b",
        "c",
    ]
    assert history.at("other", h) == "free"
    assert history.spans("n", h - 3600, h + 5 * 3600) == [
        (h - 3600, h + 3600, "a"),
        (h + 3600, h + 7200, "b"),
        (h + 7200, h + 5 * 3600, "c"),
    ]
    assert history.at_hour(h) == {"n": "a"}


async def test_the_ledger_makes_its_rows_off_the_event_loop(tmp_path: Path) -> None:
    """The rows of every hour (12,500 nodes' worth in a fleet) are made in a worker thread:
    the node power model it asks per node is never asked on the loop's thread."""
    path = tmp_path / "capwatch.db"
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=5, interval_s=60)
    rows = []
    for k in range(60):
        for i in range(2):
            s = sim.sample(i, DAY0 + 60 * k, k)
            rows.append(sample_row(s, encode(s), DAY0 + 60 * k + 1))
    async with Store(path, rollups=RollupConfig()) as store:
        await store.write_batch(rows, (), sim.node_ids)
        await store.fold_rollups()
    asked: set[int] = set()

    def model(node: str) -> None:
        asked.add(threading.get_ident())

    async with Store.open_readonly(path) as reads:
        gov = await reads.run(governance())
        job = LedgerJob(
            FakeClock(start_wall=DAY0 + 3600),
            retention_s=KEEP_S,
            governance=lambda: gov,
            model=model,
        )
        record = await job(reads, LiveView())
    assert record is not None
    assert {r.node for p in record.parts for r in p.rows} == set(sim.node_ids)
    assert asked
    assert threading.get_ident() not in asked
