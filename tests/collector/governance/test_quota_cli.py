"""``collector quota set|show|check`` on a real store: both bases, cohort borrowing, refusals."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from collector.evaluate import run_once
from collector.governance.job import GovernanceJob
from collector.live import LiveView
from collector.paths import StoreTarget, parse_target
from collector.store.db import Store
from shared.clock import FakeClock
from tests.collector.governance.fleet import cli, inventory, make_store, sample

NODES = {"a1": 8, "a2": 8, "b1": 8, "b2": 4}


def _today(offset_days: int = 0) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset_days)).isoformat()


async def _fleet(store_url: StoreTarget) -> str:
    """a holds a1+a2 (16 GPUs, 5 busy), b holds b1 (8 GPUs, idle); nominal a 9, b 16."""
    now = time.time()
    samples = [
        (sample("a1", now - 1, [90, 95, 80, 50, 11, 0, 0, 0], gpu_w=3000, cpu_w=500), now - 1),
        (sample("a2", now - 1, [0] * 8, gpu_w=600, cpu_w=200), now - 1),
        (sample("b1", now - 1, [5] * 8, gpu_w=700, cpu_w=300), now - 1),
    ]
    db = str(await make_store(store_url, NODES, samples))
    for tenant, nominal in (("a", "9"), ("b", "16")):
        code, _, err = cli("quota", "set", tenant, "--db", db, "--resource", "gpus",
                           "--nominal", nominal, "--cohort", "research")  # fmt: skip
        assert (code, err) == (0, "")
    for tenant, nodes in (("a", "a1,a2"), ("b", "b1")):
        code, _, err = cli("lease", "add", "--db", db, "--tenant", tenant, "--nodes", nodes,
                           "--start", _today(-10), "--force", "--reason", "test")  # fmt: skip
        assert (code, err) == (0, "")
    return db


async def test_show_reports_both_bases(store_url: StoreTarget) -> None:
    """a holds 16 GPUs (7 borrowed) but only 5 are busy; b lends what it does not use."""
    db = await _fleet(store_url)
    code, out, err = cli("quota", "show", "--db", db, "--json")
    assert (code, err) == (0, "")
    rows = {(r["tenant"], r["basis"]): r for r in json.loads(out)["quotas"]}
    a_alloc = rows[("a", "allocated")]
    assert (a_alloc["in_use"], a_alloc["borrowed"], a_alloc["available"]) == (16, 7, 1)
    assert a_alloc["band"] == "full"
    a_meas = rows[("a", "measured")]
    assert (a_meas["in_use"], a_meas["borrowed"], a_meas["band"]) == (5, 0, "ok")
    b_alloc = rows[("b", "allocated")]
    # b uses 8 of 16 and lends the other 8 (a borrows 7 of them): 25 - 24 = 1 left for b.
    assert (b_alloc["in_use"], b_alloc["lendable"], b_alloc["available"]) == (8, 8, 1)
    assert b_alloc["band"] == "ok"
    assert rows[("b", "measured")]["in_use"] == 0  # 5 % is under the busy threshold
    code, out, _ = cli("quota", "show", "a", "--db", db)
    assert "allocated" in out
    assert "measured" in out
    assert "b " not in out


async def test_check_names_the_lender(store_url: StoreTarget) -> None:
    """Measured, a (5 busy of nominal 9) takes 8 more: 4 of its own, 4 borrowed from b."""
    db = await _fleet(store_url)
    code, out, _ = cli("quota", "check", "a", "--db", db, "--gpus", "8", "--json")
    assert code == 0
    checks = {c["basis"]: c for c in json.loads(out)["checks"]}
    assert not checks["allocated"]["admitted"]
    measured = checks["measured"]
    assert measured["admitted"]
    assert (measured["from_own"], measured["borrowed"]) == (4, 4)
    assert measured["lenders"] == [{"from": "b", "gpus": 4}]
    code, out, _ = cli("quota", "check", "a", "--db", db, "--gpus", "8")
    assert "allocated: 8 more GPUs for a: NOT admitted" in out
    assert "borrows 4 from b 4" in out


async def test_lease_beyond_quota_needs_force(store_url: StoreTarget) -> None:
    """b2 (4 GPUs) for a, already at its limit, is refused; --force records the reason."""
    db = await _fleet(store_url)
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "b2",
                       "--start", _today())  # fmt: skip
    assert code == 2
    assert f"on {_today()} tenant a would exceed its gpus quota: it holds 16 GPUs" in err
    assert "this asks 4 more, but only 1 available (nominal 9" in err
    code, out, _ = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "b2",
                       "--start", _today(), "--force", "--reason", "burst", "--json")  # fmt: skip
    row = json.loads(out)
    assert (code, row["forced"], row["force_reason"]) == (0, True, "burst")
    assert row["quota"]["admitted"] is False
    # A tenant without a GPU quota is not limited: its lease needs no --force.
    code, out, err = cli("lease", "add", "--db", db, "--tenant", "free-rider", "--nodes", "b2",
                         "--start", _today(400), "--json")  # fmt: skip
    assert (code, err, "quota" in json.loads(out)) == (0, "", False)
    code, _, err = cli("quota", "check", "free-rider", "--db", db, "--gpus", "1")
    assert (code, "free-rider has no gpus quota, so nothing limits it" in err) == (2, True)


async def test_cohort_own_quota_and_bad_values(store_url: StoreTarget, tmp_path: Path) -> None:
    """A cohort's own quota adds to what its members may take; bad numbers exit 2."""
    db = await _fleet(store_url)
    assert cli("quota", "set", "--db", db, "--cohort", "research", "--nominal", "12")[0] == 0
    code, out, _ = cli("quota", "show", "b", "--db", db, "--json")
    b_alloc = next(r for r in json.loads(out)["quotas"] if r["basis"] == "allocated")
    assert b_alloc["available"] == 13  # 37 in the cohort - 24 used
    code, _, err = cli("quota", "set", "a", "--db", db, "--nominal", "-1")
    assert (code, "--nominal must be a number from 0 to 1e+12" in err) == (2, True)
    # 1e308 twice in a cohort made `available` infinite: `--json` printed Infinity (not JSON)
    code, _, err = cli("quota", "set", "a", "--db", db, "--nominal", "1e308")
    assert (code, "--nominal must be a number from 0 to 1e+12, got 1e+308" in err) == (2, True)
    toml = tmp_path / "huge.toml"
    toml.write_text("[tenants.a]\nquota.gpus = { nominal = 1e308 }\n")
    code, _, err = cli("apply", "--db", db, "-f", str(toml))
    assert (code, "tenants.a.quota.gpus.nominal: Input should be less than" in err) == (2, True)
    code, _, err = cli("quota", "show", "nobody", "--db", db)
    assert (code, "no tenant 'nobody'" in err) == (2, True)


async def test_power_and_gpu_hours_on_both_bases(store_url: StoreTarget) -> None:
    """Power: GPU limits held vs live GPU+CPU draw; GPU-hours: held vs utilisation-weighted."""
    db = await _fleet(store_url)
    code, _, _ = cli("quota", "set", "a", "--db", db, "--resource", "power_kw", "--nominal", "10")
    assert code == 0
    code, _, err = cli("quota", "set", "a", "--db", db, "--resource", "gpu_hours",
                       "--nominal", "1000", "--period", "day")  # fmt: skip
    assert (code, err) == (0, "")
    code, out, _ = cli("quota", "show", "a", "--db", db, "--json")
    rows = {(r["resource"], r["basis"]): r for r in json.loads(out)["quotas"]}
    assert rows[("power_kw", "allocated")]["in_use"] == 11.2  # 16 x 700 W limits
    # b has no power quota to lend: 11.2 kW is beyond what a's cohort holds.
    assert rows[("power_kw", "allocated")]["band"] == "exceeded"
    assert rows[("power_kw", "measured")]["in_use"] == 4.3  # 3000+500+600+200 W
    assert rows[("power_kw", "measured")]["band"] == "ok"
    # One 5 s sample of a1 at mean 40.75 %: 8 x 0.4075 x 5 / 3600 GPU-hours.
    assert rows[("gpu_hours", "measured")]["in_use"] == round(8 * 0.4075 * 5 / 3600, 3)
    held_today = rows[("gpu_hours", "allocated")]["in_use"]
    hours_since_midnight = (time.time() % 86_400) / 3600
    assert abs(held_today - 16 * hours_since_midnight) < 0.1
    assert rows[("gpu_hours", "allocated")]["period"] == "day"
    # b has no power quota: not governed on power, so neither listed nor counted.
    code, out, _ = cli("quota", "show", "b", "--db", db, "--json")
    assert {r["resource"] for r in json.loads(out)["quotas"]} == {"gpus"}


async def test_show_reads_the_collectors_fresh_figures(store_url: StoreTarget) -> None:
    """While the collector's snapshot is fresh and current, show uses it (same figures as
    computed from the store); after a governance write it computes again."""
    db = await _fleet(store_url)
    clock = FakeClock(start_wall=time.time())
    live = LiveView()
    now = clock.time()
    for i, (node, gpus) in enumerate(sorted(NODES.items())):
        live.on_inventory(inventory(node, gpus, i), now)
    live.on_sample(sample("a1", now, [90, 95, 80, 50, 11, 0, 0, 0], gpu_w=3000, cpu_w=500), now)
    live.on_sample(sample("a2", now, [0] * 8, gpu_w=600, cpu_w=200), now)
    live.on_sample(sample("b1", now, [5] * 8, gpu_w=700, cpu_w=300), now)
    async with Store(parse_target(db)) as store:
        await run_once(GovernanceJob(clock), store, live)
    code, out, _ = cli("quota", "show", "--db", db, "--json")
    from_collector = json.loads(out)
    assert from_collector["source"] == "collector"
    code, out, _ = cli("quota", "show", "--db", db, "--json", "--from-store")
    from_store = json.loads(out)
    assert from_store["source"] == "store"
    assert from_collector["quotas"] == from_store["quotas"]
    cli("quota", "set", "a", "--db", db, "--nominal", "10")
    code, out, _ = cli("quota", "show", "--db", db, "--json")
    assert json.loads(out)["source"] == "store"
    code, out, _ = cli("quota", "show", "--db", db)
    assert (code, "usage computed from the store's samples at" in out) == (0, True)


async def test_show_counts_busy_at_the_collectors_threshold(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """Without --busy-util, show counts a GPU busy at governance.busy_util_pct, as the
    collector does, and reads the collector's figures made at it (it took 10 %: b's GPUs at
    5 % were idle to `quota show` and busy to the collector, and its snapshot was ignored)."""
    db = await _fleet(store_url)
    config = tmp_path / "c.toml"
    config.write_text("[governance]\nbusy_util_pct = 4\n")
    code, out, err = cli("quota", "show", "b", "--db", db, "--config", str(config), "--json")
    assert (code, err) == (0, "")
    measured = next(r for r in json.loads(out)["quotas"] if r["basis"] == "measured")
    assert measured["in_use"] == 8  # b1's 8 GPUs at 5 %
    code, out, _ = cli("quota", "show", "b", "--db", db, "--config", str(config),
                       "--busy-util", "10", "--json")  # fmt: skip
    measured = next(r for r in json.loads(out)["quotas"] if r["basis"] == "measured")
    assert (code, measured["in_use"]) == (0, 0)  # the flag still wins
    clock = FakeClock(start_wall=time.time())
    live = LiveView()
    now = clock.time()
    for i, (node, gpus) in enumerate(sorted(NODES.items())):
        live.on_inventory(inventory(node, gpus, i), now)
    live.on_sample(sample("b1", now, [5] * 8, gpu_w=700, cpu_w=300), now)
    async with Store(parse_target(db)) as store:
        await run_once(GovernanceJob(clock, busy_util_pct=4.0), store, live)
    code, out, _ = cli("quota", "show", "--db", db, "--config", str(config), "--json")
    assert (code, json.loads(out)["source"]) == (0, "collector")


async def test_a_lending_limit_above_nominal_is_refused(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """Kueue refuses lendingLimit > nominalQuota; so do `quota set` and `apply` (both
    stored it)."""
    db = str(await make_store(store_url, {"n1": 8}))
    code, _, err = cli("quota", "set", "acme", "--nominal", "4", "--lending-limit", "10",
                       "--db", db)  # fmt: skip
    assert (code, err.count("\n")) == (2, 1)
    assert "--lending-limit 10 is more than --nominal 4" in err
    toml = tmp_path / "c.toml"
    toml.write_text("[tenants.acme]\nquota.gpus = { nominal = 4, lending_limit = 10 }\n")
    code, _, err = cli("apply", "--db", db, "-f", str(toml))
    assert code == 2
    assert "tenants.acme.quota.gpus: Value error, lending_limit is more than nominal" in err
    code, out, _ = cli("export", "--db", db, "--json")
    assert json.loads(out) == {}


async def test_quota_set_prints_json_with_json(store_url: StoreTarget) -> None:
    """`quota set --json` answers one JSON object (it printed its text line)."""
    db = str(await make_store(store_url, {"n1": 8}))
    code, out, _ = cli("quota", "set", "acme", "--nominal", "9", "--borrowing-limit", "1",
                       "--cohort", "research", "--json", "--db", db)  # fmt: skip
    assert code == 0
    row = json.loads(out)
    assert (row["tenant"], row["nominal"], row["borrowing_limit"], row["cohort"]) == (
        "acme", 9.0, 1.0, "research",
    )  # fmt: skip
    code, out, _ = cli("quota", "set", "--cohort", "research", "--nominal", "12", "--json",
                       "--db", db)  # fmt: skip
    assert (json.loads(out)["cohort"], json.loads(out)["nominal"]) == ("research", 12.0)


async def test_show_names_an_overcommitted_cohort_and_clamps_available(tmp_path: Path) -> None:
    """b forced to 16 GPUs beside an idle a (nominals 4 + 4): the cohort is reported
    overcommitted naming b; a's available is 0, not negative, and a is not exceeded."""
    db = str(await make_store(tmp_path, NODES))
    for tenant in ("a", "b"):
        assert cli("quota", "set", tenant, "--db", db, "--nominal", "4", "--cohort", "r")[0] == 0
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "b", "--nodes", "a1,a2",
                       "--start", _today(), "--force", "--reason", "test")  # fmt: skip
    assert (code, err) == (0, "")
    code, out, _ = cli("quota", "show", "--db", db, "--json", "--from-store")
    shown = json.loads(out)
    rows = {(r["tenant"], r["basis"]): r for r in shown["quotas"]}
    a = rows[("a", "allocated")]
    assert (a["available"], a["limit"], a["band"]) == (0, 4, "ok")
    b = rows[("b", "allocated")]
    assert (b["limit"], b["band"]) == (8, "exceeded")
    assert shown["overcommitted"] == [
        {"cohort": "r", "resource": "gpus", "basis": "allocated", "quota": 8, "in_use": 16,
         "over": ["b"]}
    ]  # fmt: skip
    code, out, _ = cli("quota", "show", "--db", db, "--from-store")
    assert (
        "COHORT r OVERCOMMITTED on gpus (allocated): its members hold 16 of 8; over their "
        "own limit: b"
    ) in out


def test_metrics_flag_an_overcommitted_cohort() -> None:
    """capwatch_cohort_overcommitted is 1 for the cohort over, 0 for one within."""
    from collector.governance.metrics import cohort_families  # noqa: PLC0415
    from collector.governance.report import CohortStanding, QuotaStanding  # noqa: PLC0415

    def standing(tenant: str, cohort: str) -> QuotaStanding:
        return QuotaStanding(tenant, cohort, "gpus", "allocated", 8, 0, 0, 0, 0, 0, None, None,
                             None)  # fmt: skip

    fams = cohort_families(
        [standing("a", "r"), standing("b", "s")],
        [CohortStanding("r", "gpus", "allocated", 8.0, 16.0, ("a",))],
    )
    values = {(f.name, s.labels["cohort"]): s.value for f in fams for s in f.samples}
    assert values[("capwatch_cohort_overcommitted", "r")] == 1
    assert values[("capwatch_cohort_overcommitted", "s")] == 0
    assert values[("capwatch_cohort_in_use", "r")] == 16


async def test_a_gpu_quota_is_a_whole_number_and_minus_zero_is_zero(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """GPUs are an integer resource in Kubernetes: `quota set` and `apply` refuse 1.5 GPUs
    (exported, Kueue refused the ClusterQueue's `nominalQuota: '1.5'`), naming the flag or
    key; power may be fractional; -0 is 0 (it printed as "-0")."""
    db = str(await make_store(store_url, {"n1": 8}))
    for flag in ("--nominal", "--borrowing-limit", "--lending-limit"):
        args = ["--nominal", "4", flag, "1.5"] if flag != "--nominal" else ["--nominal", "1.5"]
        code, _, err = cli("quota", "set", "acme", "--cohort", "c", *args, "--db", db)
        assert (code, err.count("\n")) == (2, 1), flag
        assert f"{flag} must be a whole number of gpus" in err, err
    code, _, err = cli("quota", "set", "--cohort", "c", "--nominal", "0.5", "--db", db)
    assert (code, "--nominal must be a whole number of gpus" in err) == (2, True)
    code, _, err = cli("quota", "check", "acme", "--gpus", "0.5", "--db", db)
    assert (code, "--gpus must be a whole number of gpus" in err) == (2, True)
    code, out, err = cli("quota", "set", "acme", "--nominal", "-0", "--db", db)
    assert (code, err) == (0, "")
    assert "gpus nominal 0 " in out
    code, out, _ = cli("quota", "set", "acme", "--resource", "power_kw", "--nominal", "1.5",
                       "--db", db, "--json")  # fmt: skip
    assert (code, json.loads(out)["nominal"]) == (0, 1.5)
    for text, key in (
        ("[tenants.acme]\nquota.gpus = { nominal = 1.5 }\n", "tenants.acme.quota.gpus.nominal"),
        (
            "[tenants.acme]\nquota.gpus = { nominal = 4, borrowing_limit = 0.5 }\n",
            "tenants.acme.quota.gpus.borrowing_limit",
        ),
        ("[cohorts.c]\nquota = { gpus = 2.5 }\n", "cohorts.c.quota.gpus"),
    ):
        toml = tmp_path / "c.toml"
        toml.write_text(text)
        code, _, err = cli("apply", "--db", db, "-f", str(toml))
        assert (code, err.count("\n")) == (2, 1), text
        assert f"{key}: must be a whole number of gpus" in err, err
    code, out, _ = cli("export", "--db", db, "--json")
    assert json.loads(out)["tenants"]["acme"]["quota"]["gpus"] == {"nominal": 0}
    assert "-0" not in out


async def test_set_refuses_what_export_and_apply_could_not_carry(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """`quota set --cohort ''` stored a cohort named "" (export then wrote `[cohorts.""]`,
    which apply refuses), and a --priority beyond apply's int32 went to the store, which
    said only "Python int too large to convert to SQLite INTEGER": both are one line naming
    the flag, exit 2, nothing stored; what `set` takes, export -> apply takes back."""
    db = str(await make_store(store_url, {"n1": 8}))
    code, _, err = cli("quota", "set", "--cohort", "", "--nominal", "3", "--db", db)
    assert (code, err.count("\n")) == (2, 1), err
    assert "cohort name ''" in err, err
    for priority in (str(2**31), str(-(2**31) - 1), "99999999999999999999999"):
        code, _, err = cli("quota", "set", "acme", "--priority", priority, "--db", db)
        assert (code, err.count("\n")) == (2, 1), err
        assert "--priority must be a whole number from -2147483648 to 2147483647" in err, err
    code, out, _ = cli("export", "--db", db, "--json")
    exported = json.loads(out)
    assert (exported.get("cohorts"), exported.get("tenants")) == (None, None), out
    code, _, err = cli("quota", "set", "acme", "--priority", str(2**31 - 1), "--db", db)
    assert (code, err) == (0, "")
    code, _, err = cli("quota", "set", "acme", "--cohort", "", "--nominal", "2", "--db", db)
    assert (code, err) == (0, "")  # a tenant's --cohort '': in no cohort
    toml = tmp_path / "round.toml"
    code, _, err = cli("export", "--db", db, "-o", str(toml))
    assert (code, err) == (0, "")
    code, out, err = cli("apply", "--db", db, "-f", str(toml), "--dry-run", "--json")
    assert (code, err, json.loads(out)["changes"]) == (0, "", [])


async def test_a_flag_of_another_action_is_one_line_exit_2(store_url: StoreTarget) -> None:
    """`quota show --resource power_kw` showed every resource, `quota set a --nominal 9
    --gpus 4` ignored --gpus, `quota check a --nominal 9` checked: a flag meant for another
    action was dropped without a word. One line naming it and the actions it goes with."""
    db = await _fleet(store_url)
    for args, message in (
        (["show", "--resource", "power_kw"], "--resource goes with `quota set` or `quota "
         "show --tree`, not show"),
        (["set", "a", "--nominal", "9", "--gpus", "4"], "--gpus goes with `quota check`"),
        (["check", "a", "--gpus", "1", "--nominal", "9"], "--nominal goes with `quota set`"),
        (["set", "a", "--nominal", "9", "--busy-util", "50"], "--busy-util goes with"),
        (["check", "a", "--gpus", "1", "--tree"], "--tree goes with `quota show --tree`"),
    ):  # fmt: skip
        code, out, err = cli("quota", *args, "--db", db)
        assert (code, out, err.count("\n")) == (2, "", 1), err
        assert message in err, err
    code, out, _ = cli("quota", "show", "--tree", "--resource", "gpus", "--db", db)
    assert code == 0
    code, _, err = cli("quota", "show", "--tree", "--resource", "power_kw", "--db", db)
    assert (code, err) == (0, "")
