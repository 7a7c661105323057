"""Governance rules in the collector: state reloaded on change, usage from the live view."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from collector.alerts.evaluator import Evaluator
from collector.evaluate import run_once
from collector.governance.job import GovernanceJob
from collector.governance.lease import LeaseTerms
from collector.governance.quota import Quota
from collector.governance.rules import governance_rules
from collector.governance.settings import GovernanceSettings
from collector.live import LiveView
from collector.store.command import Command
from collector.store.db import Store
from shared.clock import FakeClock
from shared.errors import StoreError
from tests.collector.governance.fleet import cli, inventory, sample

NOON: dt.datetime = dt.datetime(2041, 3, 1, 12, 0, tzinfo=dt.UTC)
TODAY = NOON.date()
SETTINGS = GovernanceSettings(
    quota_for_s=0, idle_for_s=0, expired_in_use_for_s=0, lease_end_days=20
)


def _live(clock: FakeClock, fleet: dict[str, tuple[int, list[float]]]) -> LiveView:
    live = LiveView()
    now = clock.time()
    for i, (node, (gpus, utils)) in enumerate(fleet.items()):
        live.on_inventory(inventory(node, gpus, i), now)
        live.on_status(node, "online", now)
        live.on_sample(sample(node, now, utils, gpu_w=150.0 * gpus, cpu_w=300), now)
    return live


def _lease(tx: Command, name: str, tenant: str, nodes: list[str], **kw: object) -> None:
    terms = LeaseTerms(**kw)  # type: ignore[arg-type]
    tx.governance.add_lease(name=name, tenant=tenant, pool=None, nodes=nodes, terms=terms)


def _firing(ev: Evaluator, live: LiveView, now: float) -> set[tuple[str, ...]]:
    ev.evaluate(live, now)
    return {
        (s.rule, *(f"{k}={v}" for k, v in sorted(s.labels.items()) if k in _KEYS))
        for s in ev.states()
        if s.state == "firing"
    }


_KEYS = ("tenant", "lease", "node", "resource", "basis")


async def test_lease_and_quota_rules_fire_on_both_bases(tmp_path: Path) -> None:
    """Each governance rule fires on its case; quota alerts carry their basis."""
    clock = FakeClock(start_wall=NOON.timestamp())
    now = clock.time()
    live = _live(
        clock,
        {
            "n1": (8, [90.0] * 8),  # a: busy
            "n2": (4, [50.0, 20.0, 0.0, 0.0]),  # a: 2 busy
            "n3": (4, [99.0] * 4),  # lease ended yesterday, still busy
            "n4": (8, [2.0] * 8),  # b: idle
        },
    )
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        with Command(db, now=now) as tx:
            tx.governance.put_quota("a", "gpus", Quota(11))
            _lease(tx, "a1", "a", ["n1", "n2"], start=TODAY - dt.timedelta(days=70),
                   duration_days=90,
                   notice_days=30)  # fmt: skip
            _lease(tx, "old", "c", ["n3"], start=TODAY - dt.timedelta(days=31), duration_days=30)
            _lease(tx, "b1", "b", ["n4"], start=TODAY - dt.timedelta(days=1), duration_days=365,
                   notice_days=350)  # fmt: skip
        job = GovernanceJob(clock, busy_util_pct=10.0)
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        firing = _firing(ev, live, now)
    assert ("LeaseEndingSoon", "lease=a1", "tenant=a") in firing  # 20 days left
    assert ("LeaseNoticeDeadline", "lease=b1", "tenant=b") in firing  # 14 days left
    assert ("LeaseNoticeDeadline", "lease=a1", "tenant=a") not in firing  # deadline passed
    assert ("LeaseExpiredInUse", "lease=old", "node=n3", "tenant=c") in firing
    assert ("LeasedGpusIdle", "tenant=b") in firing
    assert ("LeasedGpusIdle", "tenant=a") not in firing
    # a holds 12 GPUs on a nominal 11, in no cohort: beyond what it may take (allocated);
    # 10 busy of 11 is 91 % (measured).
    assert ("QuotaExceeded", "basis=allocated", "resource=gpus", "tenant=a") in firing
    assert ("QuotaHigh", "basis=measured", "resource=gpus", "tenant=a") in firing
    quota_alerts = {f for f in firing if f[0].startswith("Quota")}
    assert len(quota_alerts) == 2


async def test_state_reloads_only_when_the_generation_moves(tmp_path: Path) -> None:
    """A command's write is picked up at the next evaluation; no write, no reload."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _live(clock, {"n1": (8, [100.0] * 8)})
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        job = GovernanceJob(clock, interval_s=15.0, first_interval_s=5.0)
        assert job.interval_s == 5.0  # the first view soon after start...
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        assert job.interval_s == 15.0  # ...then at its own pace
        await run_once(job, store, live)
        assert job.loads == 1
        assert _firing(ev, live, clock.time()) == set()
        with Command(db, now=clock.time()) as tx:
            tx.governance.put_quota("a", "gpus", Quota(8))
            _lease(tx, "a1", "a", ["n1"], start=TODAY, duration_days=365)
        clock.advance(5)
        await run_once(job, store, live)
        assert job.loads == 2
        firing = _firing(ev, live, clock.time())
    assert ("QuotaFull", "basis=allocated", "resource=gpus", "tenant=a") in firing
    assert ("QuotaFull", "basis=measured", "resource=gpus", "tenant=a") in firing


async def _leased_a1(store: Store, db: Path, clock: FakeClock, live: LiveView) -> GovernanceJob:
    """Lease a1 of tenant a on n1 for a year from today, and a governance job's first view
    of it."""
    with Command(db, now=clock.time()) as tx:
        _lease(tx, "a1", "a", ["n1"], start=TODAY, duration_days=365)
    job = GovernanceJob(clock)
    await run_once(job, store, live)
    return job


async def test_a_reload_shows_no_view_mixing_the_new_state_with_the_old_usage(
    tmp_path: Path,
) -> None:
    """The alert rules run beside the governance job (each cycle in its own lane): while it
    reloads the state and recomputes the usage, they read the last view whole (its leases
    with the measures and standings made from them), then the new one, never the new
    leases against the old measures and standings."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _live(clock, {"n1": (8, [100.0] * 8), "n2": (8, [100.0] * 8)})
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        job = await _leased_a1(store, db, clock, live)
        with Command(db, now=clock.time()) as tx:
            _lease(tx, "b1", "b", ["n2"], start=TODAY, duration_days=365)
        clock.advance(5)
        cycle = asyncio.create_task(run_once(job, store, live))
        seen: list[tuple[list[str], list[str]]] = []
        while not cycle.done():  # what the alert lane may read at each turn of the loop
            v = job.view
            seen.append(([lease.name for lease in v.gov.leases], sorted(v.measures)))
            await asyncio.sleep(0)
        await cycle
    assert job.loads == 2
    assert set(map(str, seen)) <= {str((["a1"], ["n1"])), str((["a1", "b1"], ["n1", "n2"]))}


async def test_measured_gpu_hours_integrate_the_live_view(tmp_path: Path) -> None:
    """GPU-hours grow with each evaluation from the live view and survive a restart."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _live(clock, {"n1": (8, [50.0] * 8)})
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        with Command(db, now=clock.time()) as tx:
            tx.governance.put_quota("a", "gpu_hours", Quota(2), "day")
            _lease(tx, "a1", "a", ["n1"], start=TODAY, duration_days=10)
        job = GovernanceJob(clock)
        await run_once(job, store, live)
        assert job.view.measured.of("gpu_hours")["a"] == 0.0
        for _ in range(3):
            clock.advance(300)  # the sample stays fresh: re-announce it
            live.on_sample(sample("n1", clock.time(), [50.0] * 8, gpu_w=1200, cpu_w=300),
                           clock.time())  # fmt: skip
            await run_once(job, store, live)
        # A restarted collector takes the hours back from the snapshot, reading no sample.
        again = GovernanceJob(clock)
        await run_once(again, store, live)
    # 8 GPUs x 50 % x 900 s = 1 GPU-hour; allocated: 8 GPUs x 12.25 h since midnight.
    assert round(job.view.measured.of("gpu_hours")["a"], 6) == 1.0
    assert round(job.view.allocated.of("gpu_hours")["a"], 6) == 8 * 12.25
    assert round(again.view.measured.of("gpu_hours")["a"], 6) == 1.0


async def test_a_hand_edited_bad_row_keeps_the_last_good_state(tmp_path: Path) -> None:
    """A lease row no command writes (zone edited by hand): the job says so once, keeps its
    view and goes on (no error at every evaluation); the command line says so in one line."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _live(clock, {"n1": (8, [100.0] * 8)})
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        job = await _leased_a1(store, db, clock, live)
        with Command(db, now=clock.time()) as tx:
            tx.execute("UPDATE leases SET tz = 'Mars/Olympus'")
            tx.bump_generation()
        for _ in range(3):
            clock.advance(60)
            await run_once(job, store, live)  # no exception: the last good state stays in force
        assert job.unreadable == 1  # said once for this change of the store
        assert [lease.name for lease in job.view.gov.leases] == ["a1"]
    code, _, err = cli("lease", "list", "--db", str(db))
    assert (code, err.count("\n"), "unreadable governance row" in err) == (2, 1, True)


async def test_a_bad_quota_row_is_named_so_it_can_be_fixed(tmp_path: Path) -> None:
    """Text in a quota's number column: the one line names the table and the row's key (it
    used to say only "'>=' not supported" and send the user to commands that all fail)."""
    db = tmp_path / "capwatch.db"
    async with Store(db):
        pass
    with Command(db) as tx:
        tx.governance.put_quota("acme", "gpus", Quota(9.0))
        tx.execute("UPDATE quotas SET nominal = 'lots'")
    code, _, err = cli("quota", "show", "--db", str(db))
    assert (code, err.count("\n")) == (2, 1)
    assert "quotas row WHERE tenant = 'acme' AND resource = 'gpus'" in err, err
    assert "sqlite3" in err


async def test_a_writer_past_its_lock_budget_changes_nothing(tmp_path: Path) -> None:
    """A change that holds the write lock longer than its budget is refused and rolled back
    (a running collector stops after 5 s waiting for the lock: a 2,000-lease apply held it
    for minutes and killed it); the lock is free again afterwards."""
    db = tmp_path / "capwatch.db"
    async with Store(db):
        pass
    with (
        pytest.raises(StoreError, match="held the database's write lock for over 0 s"),
        Command(db, lock_budget_s=0.0) as tx,
    ):
        tx.governance.put_quota("acme", "gpus", Quota(9.0))
    with Command(db, lock_budget_s=60.0) as tx:
        assert tx.governance.state().quotas == {}
        tx.governance.put_quota("acme", "gpus", Quota(9.0))
    code, out, _ = cli("export", "--db", str(db), "--json")
    assert (code, json.loads(out)["tenants"]["acme"]["quota"]["gpus"]["nominal"]) == (0, 9.0)


async def test_a_forced_neighbour_overcommits_the_cohort_not_the_idle_tenant(
    tmp_path: Path,
) -> None:
    """a (nominal 8) holds nothing, b (nominal 8) forced to 24 GPUs: no QuotaExceeded for a, one for
    b, CohortOvercommitted for the cohort naming b; c exactly at its nominal is QuotaFull
    without a word of borrowing."""
    clock = FakeClock(start_wall=NOON.timestamp())
    now = clock.time()
    live = _live(
        clock,
        {
            "n2": (8, [0.0] * 8),  # b
            "n3": (8, [0.0] * 8),  # b
            "n4": (8, [0.0] * 8),  # b
            "n5": (8, [0.0] * 8),  # c, alone
        },
    )
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        with Command(db, now=now) as tx:
            tx.governance.put_tenant("a", "research", 0)
            tx.governance.put_tenant("b", "research", 0)
            tx.governance.put_quota("a", "gpus", Quota(8))
            tx.governance.put_quota("b", "gpus", Quota(8))
            tx.governance.put_quota("c", "gpus", Quota(8))
            _lease(tx, "lb", "b", ["n2", "n3", "n4"], start=TODAY, duration_days=30)
            _lease(tx, "lc", "c", ["n5"], start=TODAY, duration_days=30)
        job = GovernanceJob(clock, busy_util_pct=10.0)
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        firing = _firing(ev, live, now)
        states = {
            (s.rule, s.labels.get("tenant") or s.labels.get("cohort")): s for s in ev.states()
        }
    quota = {f for f in firing if f[0] in ("QuotaExceeded", "CohortOvercommitted")}
    assert quota == {
        ("QuotaExceeded", "basis=allocated", "resource=gpus", "tenant=b"),
        ("CohortOvercommitted", "basis=allocated", "resource=gpus"),
    }
    cohort = states[("CohortOvercommitted", "research")]
    assert cohort.labels["cohort"] == "research"
    text = cohort.annotations["description"]
    assert "hold 24 gpus (allocated basis)" in text
    assert "more than the cohort's 16" in text
    assert text.endswith("may borrow: b.")
    full = states[("QuotaFull", "c")]
    assert full.annotations["summary"] == "c at its gpus quota (allocated)"
    assert "borrowing" not in full.annotations["summary"]


async def test_a_lease_cancelled_before_it_began_is_not_expired_in_use(tmp_path: Path) -> None:
    """A lease booked ahead and cancelled before its start never ran (status expired: it
    ends at its start). Its node busy with other work fired LeaseExpiredInUse, "still in use
    after lease ... ended: unpaid use, or a job left behind", for as long as the lease was
    stored; a lease that did run and ended still fires."""
    clock = FakeClock(start_wall=NOON.timestamp())
    now = clock.time()
    live = _live(clock, {"n1": (4, [99.0] * 4), "n3": (4, [99.0] * 4)})
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        with Command(db, now=now) as tx:
            _lease(tx, "never", "c", ["n1"], start=TODAY + dt.timedelta(days=10),
                   duration_days=30, notice_given=TODAY)  # fmt: skip
            _lease(tx, "old", "c", ["n3"], start=TODAY - dt.timedelta(days=31), duration_days=30)
        job = GovernanceJob(clock, busy_util_pct=10.0)
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        firing = _firing(ev, live, now)
    assert {f for f in firing if f[0] == "LeaseExpiredInUse"} == {
        ("LeaseExpiredInUse", "lease=old", "node=n3", "tenant=c")
    }


async def test_an_ended_lease_node_is_in_use_by_its_gpus_power_not_its_cpus(
    tmp_path: Path,
) -> None:
    """LeaseExpiredInUse weighs the GPUs' power against idle_gpu_w per GPU (the setting: "a
    GPU drawing more than this is working"): idle GPUs at 60 W each beside CPUs drawing
    400 W are not in use (GPU + CPU, 880 W over 8 x 100 W, fired), GPUs at 120 W each are."""
    clock = FakeClock(start_wall=NOON.timestamp())
    now = clock.time()
    live = LiveView()
    for i, (node, gpu_w, cpu_w) in enumerate((("cold", 480.0, 400.0), ("warm", 960.0, 50.0))):
        live.on_inventory(inventory(node, 8, i), now)
        live.on_status(node, "online", now)
        live.on_sample(sample(node, now, [0.0] * 8, gpu_w=gpu_w, cpu_w=cpu_w), now)
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        with Command(db, now=now) as tx:
            for node in ("cold", "warm"):
                start = TODAY - dt.timedelta(days=31)
                _lease(tx, node, "c", [node], start=start, duration_days=30)
        job = GovernanceJob(clock, busy_util_pct=10.0)
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        firing = _firing(ev, live, now)
        (warm,) = [s for s in ev.states() if s.rule == "LeaseExpiredInUse"]
    assert {f for f in firing if f[0] == "LeaseExpiredInUse"} == {
        ("LeaseExpiredInUse", "lease=warm", "node=warm", "tenant=c")
    }
    assert "its GPUs draw 960 W (idle is under 100 W per GPU)" in warm.annotations["description"]


async def test_a_node_in_many_ended_leases_has_an_alert_for_each(tmp_path: Path) -> None:
    """LeaseExpiredInUse names the operator's leases, not something a node sends: a busy
    node that sat in 70 daily leases, all ended, has 70 alerts (the per-node bound on what
    a node can make the evaluator hold, 64, is not for it)."""
    clock = FakeClock(start_wall=NOON.timestamp())
    now = clock.time()
    live = _live(clock, {"n3": (4, [99.0] * 4)})
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        with Command(db, now=now) as tx:
            for k in range(70):
                start = TODAY - dt.timedelta(days=k + 2)
                _lease(tx, f"day{k}", "c", ["n3"], start=start, duration_days=1)
        job = GovernanceJob(clock, busy_util_pct=10.0)
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        firing = _firing(ev, live, now)
    assert sum(f[0] == "LeaseExpiredInUse" for f in firing) == 70


async def test_notice_deadline_hint_is_a_shell_word(tmp_path: Path) -> None:
    """The description's `collector lease cancel NAME` is pasted into a shell: a lease name
    with a command substitution in it is quoted, not run (probe11)."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _live(clock, {"n4": (8, [2.0] * 8)})
    db = tmp_path / "capwatch.db"
    name = "b1 $(touch pwned); x"
    async with Store(db) as store:
        with Command(db, now=clock.time()) as tx:
            _lease(tx, name, "b", ["n4"], start=TODAY - dt.timedelta(days=1), duration_days=365,
                   notice_days=350)  # fmt: skip
        job = GovernanceJob(clock, busy_util_pct=10.0)
        ev = Evaluator(governance_rules(lambda: job.view, SETTINGS))
        await run_once(job, store, live)
        ev.evaluate(live, clock.time())
    (state,) = [s for s in ev.states() if s.rule == "LeaseNoticeDeadline"]
    assert state.labels["lease"] == name
    assert (
        "`collector lease cancel 'b1 $(touch pwned); x'` records notice"
        in (state.annotations["description"])
    )
