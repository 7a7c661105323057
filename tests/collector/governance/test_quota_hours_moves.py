"""A quota's allocated GPU-hours follow a lease's node moves, as the bill does: a node that
left the lease counts the hours it was held, one that joined only those since it joined
(`quota show` said the lease's nodes now, over the whole period). On both backends."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from collector.governance.lease import LeaseTerms
from collector.governance.periods import period_start
from collector.paths import StoreTarget
from collector.store.command import Command
from tests.collector.governance.hw_fleet import Spec, cli, make_store

GPUS = 4


async def test_allocated_gpu_hours_count_each_node_while_the_lease_held_it(
    store_url: StoreTarget,
) -> None:
    """Pool `a` (n0, n1) leased to acme from the month's first day; n1 leaves the pool a
    third of the way to now, n2 joins it two thirds of the way: acme held n0 all month so
    far, n1 for the first third and n2 for the last. `quota show` and `usage` agree."""
    n0, n1, n2 = (f"x1000c0s{i}b0n0" for i in range(3))
    db = await make_store(store_url, [Spec(n, gpus=GPUS) for n in (n0, n1, n2)])
    now = time.time()
    start = period_start("month", now)
    third = (now - start) / 3
    with Command(db, now=start - 60) as tx:
        tx.pools.create("a")
        tx.pools.move([n0, n1], "a", "test")
        tx.governance.add_lease(
            name="acme-a", tenant="acme", pool="a", nodes=[n0, n1],
            terms=LeaseTerms(start=dt.datetime.fromtimestamp(start, dt.UTC).date(),
                             duration_days=40),
        )  # fmt: skip
    with Command(db, now=start + third) as tx:
        tx.pools.move([n1], "free", "test")
    with Command(db, now=start + 2 * third) as tx:
        tx.pools.move([n2], "a", "test")
    args = ("--resource", "gpu_hours", "--nominal", "100000", "--period", "month")
    assert cli("quota", "set", "acme", "--db", str(db), *args)[0] == 0

    code, out, err = cli("quota", "show", "acme", "--db", str(db), "--json", "--from-store")
    assert code == 0, err
    (row,) = [
        r
        for r in json.loads(out)["quotas"]
        if (r["resource"], r["basis"]) == ("gpu_hours", "allocated")
    ]
    expected = GPUS * (3 * third + third + third) / 3600  # n0 all along, n1 and n2 a third
    assert row["in_use"] == pytest.approx(expected, abs=0.01)

    month = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m")
    code, out, err = cli("usage", "--db", str(db), "--month", month, "--tenant", "acme", "--json")
    assert code == 0, err
    (billed,) = json.loads(out)["rows"]
    assert billed["allocated_gpu_hours"] == pytest.approx(row["in_use"], abs=0.01)


async def test_the_collectors_allocated_gpu_hours_follow_the_moves(
    store_url: StoreTarget,
) -> None:
    """The collector's own figures (what QuotaHigh/QuotaExceeded judge, and `quota show`
    prints while fresh) count the same spans: n1 left on the 4th at 00:00, n2 joined on the
    7th at 00:00; at noon on the 10th acme held n0 9.5 days, n1 3 and n2 3.5."""
    from collector.evaluate import run_once  # noqa: PLC0415
    from collector.governance.job import GovernanceJob  # noqa: PLC0415
    from collector.governance.quota import Quota  # noqa: PLC0415
    from collector.live import LiveView  # noqa: PLC0415
    from collector.store.db import Store  # noqa: PLC0415
    from shared.clock import FakeClock  # noqa: PLC0415
    from tests.collector.governance.fleet import inventory  # noqa: PLC0415

    first = dt.datetime(2041, 3, 1, tzinfo=dt.UTC)
    day = 86_400.0
    t0 = first.timestamp()
    clock = FakeClock(start_wall=t0 + 9.5 * day)
    n0, n1, n2 = "n0", "n1", "n2"
    live = LiveView()
    for i, node in enumerate((n0, n1, n2)):
        live.on_inventory(inventory(node, GPUS, i), clock.time())
    async with Store(store_url) as store:
        with Command(store_url, now=t0 - 60) as tx:
            tx.governance.put_quota("acme", "gpu_hours", Quota(100_000), period="month")
            tx.pools.create("a")
            tx.pools.move([n0, n1], "a", "test")
            tx.governance.add_lease(
                name="acme-a", tenant="acme", pool="a", nodes=[n0, n1],
                terms=LeaseTerms(start=first.date(), duration_days=40),
            )  # fmt: skip
        with Command(store_url, now=t0 + 3 * day) as tx:
            tx.pools.move([n1], "free", "test")
        with Command(store_url, now=t0 + 6 * day) as tx:
            tx.pools.move([n2], "a", "test")
        job = GovernanceJob(clock)
        await run_once(job, store, live)
    got = job.view.allocated.of("gpu_hours")["acme"]
    assert got == pytest.approx(GPUS * 24 * (9.5 + 3 + 3.5))
