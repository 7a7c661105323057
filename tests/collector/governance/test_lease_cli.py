"""``collector lease``: add by nodes or pool, overlap refusal, cancel/extend/renew, reopen.

Dates are in 2041 (a common year, like 2026): pending leases, so no answer depends on today.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.fleet import cli, make_store
from tests.helpers import db_rows

NODES = {"n1": 8, "n2": 8, "n3": 4}


async def test_add_list_show_by_nodes(store_url: StoreTarget) -> None:
    """A lease added by nodes is listed with its dates and shown with its nodes."""
    db = str(await make_store(store_url, NODES))
    code, out, err = cli(
        "lease", "add", "--db", db, "--tenant", "acme", "--nodes", "n1,n2",
        "--start", "2041-01-01", "--duration", "180d", "--notice", "90d",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert "lease acme-2041-01-01 (id 1) added" in out
    assert "to 2041-06-29 (UTC)" in out
    code, out, _ = cli("lease", "list", "--db", db, "--json")
    rows = json.loads(out)["leases"]
    assert len(rows) == 1
    assert rows[0]["last_day"] == "2041-06-29"
    assert rows[0]["notice_deadline"] == "2041-04-01"
    assert rows[0]["nodes"] == 2
    code, out, _ = cli("lease", "show", "1", "--db", db, "--json")
    row = json.loads(out)
    assert row["nodes"] == ["n1", "n2"]
    # a notice in days: notice_months is null, as the text output's "-" (3m: the reverse)
    assert (row["notice"], row["notice_days"], row["notice_months"]) == ("90d", 90, None)
    code, out, _ = cli("lease", "show", "1", "--db", db)
    assert [line.split() for line in out.splitlines() if line.startswith("notice_")][:2] == [
        ["notice_days", "90"],
        ["notice_months", "-"],
    ]


async def test_overlap_is_refused_naming_node_and_lease(store_url: StoreTarget) -> None:
    """A second lease on a leased node in overlapping dates exits 2 naming both."""
    db = str(await make_store(store_url, NODES))
    assert cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1,n2",
               "--start", "2041-01-01", "--duration", "31d")[0] == 0  # fmt: skip
    code, out, err = cli(
        "lease", "add", "--db", db, "--tenant", "b", "--nodes", "n3,n2",
        "--start", "2041-01-31", "--duration", "10d",
    )  # fmt: skip
    assert code == 2
    assert "node n2 is already in lease 'a-2041-01-01' (id 1, tenant a" in err
    assert out == ""
    # Back to back is fine: the first lease's last day is Jan 31.
    code, _, err = cli(
        "lease", "add", "--db", db, "--tenant", "b", "--nodes", "n3,n2",
        "--start", "2041-02-01", "--duration", "10d",
    )  # fmt: skip
    assert (code, err) == (0, "")


async def test_lease_by_pool_creates_it_and_survives_reopen(store_url: StoreTarget) -> None:
    """--pool with --nodes creates the pool; the lease reads back the same after reopening."""
    db = str(await make_store(store_url, NODES))
    code, _, err = cli(
        "lease", "add", "--db", db, "--tenant", "acme", "--pool", "acme-a", "--nodes", "n1,n3",
        "--start", "2041-03-01", "--tz", "Asia/Tokyo", "--duration", "1y", "--name", "acme-1",
    )  # fmt: skip
    assert (code, err) == (0, "")
    # A fresh process-equivalent read (a new connection) sees the same lease.
    code, out, _ = cli("lease", "show", "acme-1", "--db", db, "--json")
    row = json.loads(out)
    assert row["pool"] == "acme-a"
    assert row["nodes"] == ["n1", "n3"]
    assert row["tz"] == "Asia/Tokyo"
    assert row["duration_days"] == 365
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "x", "--pool", "nope",
                       "--start", "2041-03-01")  # fmt: skip
    assert code == 2
    assert "no pool named 'nope'" in err
    # A node of another pool is not pulled into a new one.
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "x", "--pool", "x-pool",
                       "--nodes", "n2,n3", "--start", "2042-03-01")  # fmt: skip
    assert code == 2
    assert "node n3 is in pool 'acme-a': lease that pool" in err
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "x", "--pool", "free",
                       "--nodes", "n2", "--start", "2042-03-01")  # fmt: skip
    assert (code, "`free` is every node in no pool" in err) == (2, True)


async def test_nodes_a_lease_brings_into_its_pool_join_the_pools_other_leases(
    store_url: StoreTarget,
) -> None:
    """``lease add --pool p --nodes n2`` puts n2 in p as ``pool add`` does: p's earlier lease
    follows its pool (it used to keep only n1 while p held both), within its tenant's quota
    or forced; each move is in the pool history with the lease that made it."""
    db = await make_store(store_url, NODES)
    assert cli("quota", "set", "a", "--nominal", "8", "--db", str(db))[0] == 0
    code, _, err = cli("lease", "add", "--db", str(db), "--tenant", "a", "--pool", "p",
                       "--nodes", "n1", "--start", "2041-01-01", "--duration", "31d",
                       "--name", "first")  # fmt: skip
    assert (code, err) == (0, "")
    second = ("lease", "add", "--db", str(db), "--tenant", "b", "--pool", "p", "--nodes", "n2",
              "--start", "2041-03-01", "--name", "second")  # fmt: skip
    code, _, err = cli(*second)
    assert code == 2
    assert "pool 'p' cannot grow while leased ('first')" in err, err
    code, _, err = cli(*second, "--force", "--reason", "a's extra node")
    assert (code, err) == (0, "")
    for name in ("first", "second"):
        code, out, _ = cli("lease", "show", name, "--db", str(db), "--json")
        assert (code, json.loads(out)["nodes"]) == (0, ["n1", "n2"]), name
    code, out, _ = cli("lease", "show", "first", "--db", str(db), "--json")
    assert json.loads(out)["force_reason"] == "a's extra node"
    moves = db_rows(db, "SELECT node, from_pool, to_pool, reason FROM pool_moves ORDER BY id")
    assert moves == [("n1", "free", "p", "lease first"), ("n2", "free", "p", "lease second")]


async def test_a_lease_cancelled_before_it_began_does_not_keep_its_node_from_a_pool(
    store_url: StoreTarget,
) -> None:
    """A lease cancelled before its start holds nothing (it ends at its start), yet its node
    could not join a pool leased over that start: "node n2 is in lease 'ahead' (tenant b)
    at the same time as pool 'p' is leased"."""
    db = str(await make_store(store_url, NODES))
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "b", "--nodes", "n2",
                       "--start", "2041-03-01", "--name", "ahead")  # fmt: skip
    assert (code, err) == (0, "")
    assert cli("lease", "cancel", "ahead", "--db", db)[0] == 0
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--pool", "p",
                       "--nodes", "n1", "--start", "2041-01-01", "--duration", "365d",
                       "--name", "year")  # fmt: skip
    assert (code, err) == (0, "")
    code, _, err = cli("pool", "add", "p", "n2", "--db", db)
    assert (code, err) == (0, "")
    code, out, _ = cli("lease", "show", "year", "--db", db, "--json")
    assert json.loads(out)["nodes"] == ["n1", "n2"]


async def test_cancel_extend_renew(store_url: StoreTarget) -> None:
    """Cancel records notice and the end; extend/renew then refuse; on a fresh lease they work."""
    db = str(await make_store(store_url, NODES))
    cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1", "--start", "2041-01-01",
        "--notice", "90d", "--name", "l1")  # fmt: skip
    cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n2", "--start", "2041-01-01",
        "--name", "l2")  # fmt: skip
    code, out, _ = cli("lease", "cancel", "l1", "--db", db, "--on", "2041-02-01", "--json")
    assert code == 0
    row = json.loads(out)
    assert (row["notice_given"], row["end"]) == ("2041-02-01", "2041-05-02")
    code, _, err = cli("lease", "extend", "l1", "--db", db, "--by", "30d")
    assert code == 2
    assert "a cancelled lease cannot extend" in err
    code, out, _ = cli("lease", "renew", "l2", "--db", db, "--json")
    assert json.loads(out)["duration_days"] == 360
    code, out, _ = cli("lease", "extend", "l2", "--db", db, "--by", "1m", "--json")
    # One month from the scheduled end 2041-12-27 is 2042-01-27: 31 days.
    assert json.loads(out)["duration_days"] == 391


async def test_bad_flags_are_one_line(store_url: StoreTarget) -> None:
    """A bad date, duration or zone exits 2 with the flag named."""
    db = str(await make_store(store_url, NODES))
    base = ("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1")
    code, _, err = cli(*base, "--start", "2041-02-30")
    assert (code, err.count("\n")) == (2, 1)
    assert "--start '2041-02-30' is not a date" in err
    code, _, err = cli(*base, "--start", "2041-02-01", "--duration", "forever")
    assert "--duration 'forever'" in err
    code, _, err = cli(*base, "--start", "9999-12-31")
    assert (code, "out of range" in err) == (2, True)
    code, _, err = cli(*base, "--start", "2041-02-01", "--duration", "999999y")
    assert (code, "runs past the calendar" in err) == (2, True)
    code, _, err = cli(*base, "--start", "2041-02-01", "--tz", "Nowhere/City")
    assert "unknown time zone 'Nowhere/City'" in err
    code, _, err = cli(*base[:-1], "n1,bad/name", "--start", "2041-02-01")
    assert (code, "node name 'bad/name' is not a node id" in err) == (2, True)
    code, _, err = cli("lease", "cancel", "missing", "--db", db)
    assert (code, "no lease 'missing'" in err) == (2, True)


async def test_extend_into_the_next_lease_is_refused(store_url: StoreTarget) -> None:
    """Extending a lease over the start of the node's next lease names that lease."""
    db = str(await make_store(store_url, NODES))
    cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1", "--start", "2041-01-01",
        "--duration", "31d", "--name", "first")  # fmt: skip
    cli("lease", "add", "--db", db, "--tenant", "b", "--nodes", "n1", "--start", "2041-02-01",
        "--name", "second")  # fmt: skip
    code, _, err = cli("lease", "extend", "first", "--db", db, "--by", "1d")
    assert code == 2
    assert "cannot extend lease 'first': node n1 is leased from 2041-02-01 by lease 'second'" in err
    code, _, err = cli("lease", "renew", "first", "--db", db)
    assert (code, "by lease 'second'" in err) == (2, True)


async def test_a_node_no_inventory_knows_is_refused(store_url: StoreTarget, tmp_path: Path) -> None:
    """A typo in --nodes (or a cluster.toml lease) is refused as `pool create` refuses it; it
    used to lease a node that does not exist, counted as 0 GPUs against the quota."""
    db = str(await make_store(store_url, {"n1": 8}))
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "acme", "--nodes", "n1,n11",
                       "--start", "2041-01-01")  # fmt: skip
    assert (code, err.count("\n")) == (2, 1)
    assert "unknown node 'n11': no agent or declared inventory" in err
    toml = tmp_path / "c.toml"
    toml.write_text('[leases.l]\ntenant = "acme"\nnodes = ["n12"]\nstart = 2041-01-01\n')
    code, _, err = cli("apply", "--db", db, "-f", str(toml))
    assert (code, "leases.l: unknown node 'n12'" in err) == (2, True)
    code, out, _ = cli("lease", "list", "--db", db, "--json")
    assert json.loads(out) == {"leases": []}


async def test_a_lease_name_that_reads_as_an_id_is_refused(store_url: StoreTarget) -> None:
    """`--name 1` on a second lease made `lease cancel 1` ambiguous (id 1 or the one named
    1); a number, a blank, a control character or one that prints as nothing (U+3164: two
    names would look alike) is refused."""
    db = str(await make_store(store_url, {"n1": 8, "n2": 8}))
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1",
                       "--start", "2041-01-01")  # fmt: skip
    assert (code, err) == (0, "")
    for name in ("1", " ", "a\x1b[2Jb", "a\u3164b"):
        code, _, err = cli("lease", "add", "--db", db, "--tenant", "b", "--nodes", "n2",
                           "--start", "2041-01-01", "--name", name)  # fmt: skip
        assert (code, err.count("\n")) == (2, 1), name
        assert "must be printable text, no character that prints as nothing" in err


async def test_a_lease_name_that_reads_as_an_option_is_refused(store_url: StoreTarget) -> None:
    """`--name=-x` was taken; every hint that names it (`collector lease cancel -x`, in the
    notice-deadline alert, pool delete and inventory forget) then reads as an option when
    pasted ('unrecognized arguments'), and so does `lease show -x`."""
    db = str(await make_store(store_url, {"n1": 8}))
    for name in ("-x", "--on=1999-01-01"):
        code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1",
                           "--start", "2041-01-01", f"--name={name}")  # fmt: skip
        assert (code, err.count("\n")) == (2, 1), (name, err)
        assert "--name" in err, err
        assert "'-'" in err, err
    code, out, _ = cli("lease", "list", "--db", db, "--json")
    assert json.loads(out) == {"leases": []}


async def test_a_lease_name_has_a_bound(store_url: StoreTarget, tmp_path: Path) -> None:
    """A lease name had no bound: one of 5,000 characters was accepted, and `lease list`
    laid every row out 5,000 columns wide (its Slurm reservation took the name too). Up to
    128 characters (the default name of a 63-character tenant takes 74); longer is one line,
    exit 2, by `lease add` and by `collector apply` alike."""
    db = str(await make_store(store_url, {"n1": 8, "n2": 8, "n3": 8}))
    longest, longer = "L" * 128, "L" * 129
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1",
                       "--start", "2041-01-01", "--name", longer)  # fmt: skip
    assert (code, err.count("\n")) == (2, 1)
    assert "give at most 128" in err
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'[tenants.b]\n[leases.{longer}]\ntenant = "b"\nnodes = ["n2"]\n'
        "start = 2041-01-01\nduration_days = 30\n"
    )
    code, _, err = cli("apply", "--db", db, "-f", str(cluster))
    assert (code, err.count("\n")) == (2, 1)
    assert "give at most 128" in err
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1",
                       "--start", "2041-01-01", "--name", longest)  # fmt: skip
    assert (code, err) == (0, "")
    tenant = "t" * 63  # the longest tenant name, its lease named by default
    code, _, err = cli("lease", "add", "--db", db, "--tenant", tenant, "--nodes", "n3",
                       "--start", "2041-01-01")  # fmt: skip
    assert (code, err) == (0, "")
    code, out, _ = cli("lease", "list", "--db", db, "--json")
    assert [lease["name"] for lease in json.loads(out)["leases"]] == [
        longest,
        f"{tenant}-2041-01-01",
    ]


async def test_lease_show_escapes_the_comment(store_url: StoreTarget) -> None:
    """A comment holding terminal escapes is shown escaped (it reached the terminal raw)."""
    db = str(await make_store(store_url, {"n1": 8}))
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1",
                       "--start", "2041-01-01", "--comment", "x\x1b]0;pwned\x07")  # fmt: skip
    assert (code, err) == (0, "")
    code, out, _ = cli("lease", "show", "a-2041-01-01", "--db", db)
    assert code == 0
    assert "\x1b" not in out
    assert "x\\x1b]0;pwned\\x07" in out


async def test_month_notice_deadline_in_json_and_cancel_on_it(tmp_path: Path) -> None:
    """--notice 3m on a year from 2038-02-28: notice_deadline 2038-11-28 in list and show
    --json; a lease without notice shows its last day and cancelling on it is accepted."""
    db = str(await make_store(tmp_path, NODES))
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n1",
                       "--start", "2038-02-28", "--duration", "1y", "--notice", "3m",
                       "--name", "m")  # fmt: skip
    assert (code, err) == (0, "")
    row = json.loads(cli("lease", "show", "m", "--db", db, "--json")[1])
    assert (row["notice"], row["notice_months"], row["notice_days"]) == ("3m", 3, None)
    assert (row["last_day"], row["notice_deadline"]) == ("2039-02-27", "2038-11-28")
    listed = json.loads(cli("lease", "list", "--db", db, "--json")[1])["leases"]
    assert listed[0]["notice_deadline"] == "2038-11-28"
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "a", "--nodes", "n2",
                       "--start", "2041-01-01", "--duration", "31d", "--name", "z")  # fmt: skip
    assert (code, err) == (0, "")
    row = json.loads(cli("lease", "show", "z", "--db", db, "--json")[1])
    assert (row["notice"], row["notice_deadline"], row["last_day"]) == (
        "0d",
        "2041-01-31",
        "2041-01-31",
    )
    code, out, err = cli("lease", "cancel", "z", "--db", db, "--on", "2041-01-31", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["last_day"] == "2041-01-31"
    code, _, err = cli("lease", "cancel", "m", "--db", db, "--on", "2038-11-28", "--json")
    assert code == 0, err
    assert json.loads(cli("lease", "show", "m", "--db", db, "--json")[1])["end"] == "2039-02-28"


async def test_list_of_a_tenant_the_store_never_knew_is_refused(store_url: StoreTarget) -> None:
    """`lease list --tenant acmee` (a typo) said "no leases", exit 0, as if acme held none:
    one line naming --tenant and the tenants known, exit 2, as `collector usage --tenant`.
    A known tenant without leases (a quota only) is still an empty list."""
    db = str(await make_store(store_url, NODES))
    assert cli("lease", "add", "--db", db, "--tenant", "acme", "--nodes", "n1",
               "--start", "2041-01-01")[0] == 0  # fmt: skip
    assert cli("quota", "set", "idle", "--nominal", "4", "--db", db)[0] == 0
    for tenant in ("acmee", ""):
        code, out, err = cli("lease", "list", "--db", db, "--tenant", tenant, "--json")
        assert (code, out, err.count("\n")) == (2, "", 1), err
        assert f"--tenant {tenant!r}: no such tenant (tenants: acme, idle" in err, err
    code, out, err = cli("lease", "list", "--db", db, "--tenant", "idle", "--json")
    assert (code, err, json.loads(out)) == (0, "", {"leases": []})
    code, out, _ = cli("lease", "list", "--db", db, "--tenant", "acme", "--json")
    assert [r["tenant"] for r in json.loads(out)["leases"]] == ["acme"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--pool", "p1"], "--pool goes with `lease add`, not list"),
        (["list", "acme-2041-01-01"], "LEASE goes with `lease show`"),
        (["show", "1", "--by", "30d"], "--by goes with `lease extend`, not show"),
        (["cancel", "1", "--by", "30d"], "--by goes with `lease extend`, not cancel"),
        (["extend", "1", "--by", "30d", "--on", "2041-02-01"], "--on goes with `lease cancel`"),
        (["renew", "1", "--tz", "Asia/Tokyo"], "--tz goes with `lease add`, not renew"),
        (["cancel", "1", "--reason", "x"], "--reason goes with `lease add` or `lease extend`"),
    ],
)
async def test_a_flag_of_another_action_is_one_line_exit_2_and_changes_nothing(
    store_url: StoreTarget, args: list[str], message: str
) -> None:
    """`lease list --pool p1` listed every lease, `lease cancel 1 --by 30d` gave notice: a
    flag meant for another action was dropped without a word. One line naming it and the
    actions it goes with, exit 2; the lease stays as it was."""
    db = str(await make_store(store_url, NODES))
    assert cli("lease", "add", "--db", db, "--tenant", "acme", "--pool", "p1", "--nodes",
               "n1", "--start", "2041-01-01")[0] == 0  # fmt: skip
    before = cli("lease", "show", "1", "--db", db, "--json")[1]
    code, out, err = cli("lease", *args, "--db", db)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert message in err, err
    assert cli("lease", "show", "1", "--db", db, "--json")[1] == before
