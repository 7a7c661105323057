"""``collector pool``: pools in a real store; apply, its dry run, impossible patterns."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from collector.governance.lease import LeaseTerms
from collector.paths import StoreTarget, parse_target
from collector.store.command import Command
from tests.collector.governance.hw_fleet import H100, Spec, cli, make_store
from tests.helpers import db_rows


def _members(db: StoreTarget) -> dict[str, str]:
    return dict(db_rows(db, "SELECT node, pool FROM pool_nodes"))


def _dump(db: StoreTarget) -> list[tuple[object, ...]]:
    return [
        *db_rows(db, "SELECT * FROM pools ORDER BY name"),
        *db_rows(db, "SELECT * FROM pool_nodes ORDER BY node"),
        *db_rows(db, "SELECT * FROM pool_moves ORDER BY id"),
    ]


@pytest.fixture
async def fleet(store_url: StoreTarget) -> StoreTarget:
    """Six 4 x A100 nodes in two racks, one 8 x H100 node, one A100 node offline (each
    backend in turn)."""
    specs = [Spec(f"x1000c0s{i}b0n0") for i in range(3)]
    specs += [Spec(f"x2000c0s{i}b0n0") for i in range(3)]
    specs += [Spec("x3000c0s0b0n0", gpu=H100, gpus=8), Spec("x3000c0s1b0n0", status="offline")]
    return await make_store(store_url, specs)


async def test_create_add_remove_delete_and_list(fleet: StoreTarget) -> None:
    """A pool gains and loses nodes; deleting it returns them to free."""
    db = str(fleet)
    assert cli("pool", "create", "zinal", "--db", db, "--nodes", "x1000c0s0b0n0")[0] == 0
    assert cli("pool", "add", "zinal", "x1000c0s1b0n0", "x1000c0s2b0n0", "--db", db)[0] == 0
    assert cli("pool", "remove", "zinal", "x1000c0s2b0n0", "--db", db)[0] == 0
    assert _members(fleet) == {"x1000c0s0b0n0": "zinal", "x1000c0s1b0n0": "zinal"}
    pools = {
        p["name"]: p["nodes"]
        for p in json.loads(cli("pool", "list", "--db", db, "--json")[1])["pools"]
    }
    assert pools == {"zinal": 2, "free": 6}
    code, out, _ = cli("pool", "show", "zinal", "--db", db)
    assert code == 0
    assert out.count("zinal") == 2
    code, out, _ = cli("pool", "delete", "zinal", "--db", db)
    assert out.startswith("pool zinal deleted; 2 nodes returned to free")
    assert _members(fleet) == {}


async def test_nodes_may_be_given_comma_separated_as_lease_add_takes_them(
    fleet: StoreTarget,
) -> None:
    """``--nodes a,b`` (as ``lease add --nodes`` takes them) and ``add NAME a,b c`` name each
    node, where ``a,b`` was refused as one unknown node."""
    db = str(fleet)
    code, _, err = cli(
        "pool", "create", "zinal", "--db", db, "--nodes", "x1000c0s0b0n0,x1000c0s1b0n0"
    )
    assert code == 0, err
    code, _, err = cli(
        "pool", "add", "zinal", "x2000c0s0b0n0,x2000c0s1b0n0", "x2000c0s2b0n0", "--db", db
    )
    assert code == 0, err
    assert _members(fleet) == dict.fromkeys(
        ("x1000c0s0b0n0", "x1000c0s1b0n0", "x2000c0s0b0n0", "x2000c0s1b0n0", "x2000c0s2b0n0"),
        "zinal",
    )


async def test_a_10_kb_comment_is_cut_in_the_list_and_whole_in_json(fleet: StoreTarget) -> None:
    """A pool's comment is free text of any length: `pool list` cuts it to a column (a
    10 kB comment made its row 10 kB wide), --json keeps it whole."""
    db = str(fleet)
    long = "the climate group's share " * 400
    assert cli("pool", "create", "zinal", "--db", db, "--comment", long)[0] == 0
    code, out, _ = cli("pool", "list", "--db", db)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) < 200
    assert "zinal" in out
    assert "the climate group's share the" in out
    assert "…" in out
    pools = json.loads(cli("pool", "list", "--db", db, "--json")[1])["pools"]
    assert [p["comment"] for p in pools if p["name"] == "zinal"] == [long]


async def test_no_node_in_two_pools(fleet: StoreTarget) -> None:
    """Adding a node of pool a to pool b is refused, naming its pool; nothing changes."""
    db = str(fleet)
    cli("pool", "create", "a", "--db", db, "--nodes", "x1000c0s0b0n0")
    cli("pool", "create", "b", "--db", db)
    code, _, err = cli("pool", "add", "b", "x1000c0s1b0n0", "x1000c0s0b0n0", "--db", db)
    assert code == 2
    assert "node 'x1000c0s0b0n0' is in pool 'a'" in err
    assert _members(fleet) == {"x1000c0s0b0n0": "a"}  # x1000c0s1b0n0 not added either
    code, _, err = cli("pool", "add", "b", "nope", "--db", db)
    assert (code, "unknown node 'nope'" in err) == (2, True)


async def test_apply_takes_the_fewest_online_nodes_in_one_rack(fleet: StoreTarget) -> None:
    """`zinal:a100:8` takes two A100 nodes of one rack, never the offline one."""
    db = str(fleet)
    code, out, err = cli("pool", "apply", "-p", "zinal:a100:8", "--db", db, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["method"] == "milp"
    assert len(plan["nodes"]) == 2
    assert plan["racks"] == 1
    assert "x3000c0s1b0n0" not in plan["nodes"]
    assert set(_members(fleet)) == set(plan["nodes"])
    # Applied twice: the same pool, nothing moves.
    code, out, _ = cli("pool", "apply", "-p", "zinal:a100:8", "--db", db, "--json")
    assert (json.loads(out)["take"], json.loads(out)["release"]) == ([], [])


async def test_apply_shrinks_and_grows_and_survives_a_reopen(fleet: StoreTarget) -> None:
    """Growing keeps the pool's nodes; shrinking releases the ones not needed."""
    db = str(fleet)
    cli("pool", "apply", "-p", "zinal:a100:8", "--db", db)
    first = set(_members(fleet))
    cli("pool", "apply", "-p", "zinal:a100:16", "--db", db)
    grown = set(_members(fleet))
    assert first < grown
    assert len(grown) == 4
    code, out, _ = cli("pool", "apply", "-p", "zinal:A100:4", "--db", db)
    assert code == 0
    assert "release" in out
    assert len(_members(fleet)) == 1
    assert set(_members(fleet)) < grown


async def test_dry_run_changes_nothing_and_prints_table_and_moves(fleet: StoreTarget) -> None:
    """--dry-run: the resulting table and the moves, and the store byte-for-byte as before."""
    db = str(fleet)
    cli("pool", "create", "zinal", "--db", db, "--nodes", "x2000c0s0b0n0")
    before = _dump(fleet)
    code, out, _ = cli("pool", "apply", "-p", "zinal:a100:12:epyc:6", "--dry-run", "--db", db)
    assert code == 0
    assert "take     x2000c0s1b0n0  free -> zinal" in out
    assert "GPU NVIDIA A100-SXM4-80GB" in out
    assert "greedy would take" in out
    assert out.rstrip().endswith("dry run: nothing changed")
    assert _dump(fleet) == before


async def test_impossible_pattern_leaves_pools_unchanged(fleet: StoreTarget) -> None:
    """Too few H100s: exit 2, what is missing, no row changed."""
    db = str(fleet)
    cli("pool", "create", "zinal", "--db", db, "--nodes", "x1000c0s0b0n0")
    before = _dump(fleet)
    code, out, err = cli("pool", "apply", "-p", "zinal:h100:16:epyc:30", "--db", db)
    assert code == 2
    assert out == ""
    assert "need 16 h100, pool + free hold 8" in err
    assert "need 30 epyc, pool + free hold 14 (2 more on free nodes not online" in err
    assert _dump(fleet) == before


async def test_bad_pattern_is_exit_2_with_one_line(fleet: StoreTarget) -> None:
    """A malformed pattern never reaches the store."""
    code, _, err = cli("pool", "apply", "-p", "zinal:a100", "--db", str(fleet))
    assert code == 2
    assert err.count("\n") == 1
    assert "needs a pool name and at least one component:qty pair" in err


async def test_leased_nodes_are_excluded_when_a_lease_table_exists(fleet: StoreTarget) -> None:
    """A node named in a lease in force (lease_nodes, the leases half) is never taken."""
    today = dt.datetime.now(dt.UTC).date()
    with Command(fleet) as tx:
        tx.governance.add_lease(
            name="held",
            tenant="t",
            pool=None,
            nodes=[f"x1000c0s{i}b0n0" for i in range(3)] + ["x2000c0s0b0n0"],
            terms=LeaseTerms(today - dt.timedelta(days=1), 365),
        )
    code, out, _ = cli("pool", "apply", "-p", "zinal:a100:8", "--db", str(fleet), "--json")
    assert code == 0
    assert sorted(json.loads(out)["nodes"]) == ["x2000c0s1b0n0", "x2000c0s2b0n0"]
    code, _, err = cli("pool", "apply", "-p", "zinal:a100:16", "--db", str(fleet))
    assert code == 2
    assert "need 16 a100, pool + free hold 8 (20 more on free nodes not online or excluded" in err


async def test_nodes_of_an_ended_lease_are_free_to_take_again(fleet: StoreTarget) -> None:
    """Only leases not ended exclude their nodes (ended, renewing without notice, far end)."""
    today = dt.datetime.now(dt.UTC).date()
    with Command(fleet) as tx:
        for name, node, terms in (
            ("ended", "x1000c0s0b0n0", LeaseTerms(dt.date(1990, 1, 1), 10)),
            ("renewing", "x1000c0s1b0n0", LeaseTerms(today, 30, auto_renew=True)),
            ("long", "x1000c0s2b0n0", LeaseTerms(today, 25_000)),
        ):
            tx.governance.add_lease(name=name, tenant="t", pool=None, nodes=[node], terms=terms)
    code, out, _ = cli("pool", "apply", "-p", "zinal:a100:16", "--db", str(fleet), "--json")
    assert code == 0
    nodes = set(json.loads(out)["nodes"])
    assert "x1000c0s0b0n0" in nodes  # its lease ended in 1970
    assert not nodes & {"x1000c0s1b0n0", "x1000c0s2b0n0"}  # open-ended, and ends in ~2095


async def test_lease_by_pattern_carves_a_new_pool_from_free_in_one_step(
    store_url: StoreTarget,
) -> None:
    """`lease add --pattern` takes the fewest free nodes meeting the pattern into a new pool,
    never a node another tenant leases, and leases it; an impossible pattern, or a lease the
    store refuses, leaves no pool behind."""
    specs = [Spec(f"x1000c0s{i}b0n0", gpus=4) for i in range(4)]
    specs.append(Spec("x1001c0s0b0n0", gpus=8))
    db = str(await make_store(store_url, specs))
    start = dt.date.today().isoformat()
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "other",
                       "--nodes", "x1001c0s0b0n0", "--start", start)  # fmt: skip
    assert (code, err) == (0, "")
    code, out, err = cli("lease", "add", "--db", db, "--tenant", "zinal", "--pattern",
                         "zinal:a100:8", "--start", start, "--json")  # fmt: skip
    assert (code, err) == (0, "")
    lease = json.loads(out)
    assert (lease["pool"], lease["tenant"], lease["nodes"]) == ("zinal", "zinal", 2)
    pools = dict(db_rows(parse_target(db), "SELECT node, pool FROM pool_nodes"))
    zinal = sorted(n for n, p in pools.items() if p == "zinal")
    # two 4-GPU nodes, not the 8-GPU node that would be one: another tenant leases it
    assert len(zinal) == 2
    assert all(n.startswith("x1000") for n in zinal)

    code, _, err = cli("lease", "add", "--db", db, "--tenant", "t2", "--pattern",
                       "big:a100:64", "--start", start)  # fmt: skip
    assert code == 2
    assert "a100" in err
    assert err.count("\n") == 1
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "t3", "--pattern",
                       "zinal:a100:4", "--start", start)  # fmt: skip
    assert code == 2
    assert "exists" in err
    names = {r[0] for r in db_rows(parse_target(db), "SELECT name FROM pools")}
    assert "big" not in names
    assert len(db_rows(parse_target(db), "SELECT * FROM leases")) == 2


async def test_free_is_a_pool_for_capacity_remove_and_plot_usage(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """`free` (the nodes in no pool, as `pool list` shows it) is accepted where a pool is."""
    from collector.store.capacity import pool_members  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415
    from collector.store.series import fleet_series  # noqa: PLC0415
    from tests.collector.capacity.helpers import PLAN  # noqa: PLC0415

    db = await make_store(store_url, [Spec("n1"), Spec("n2"), Spec("n3")])
    assert cli("pool", "create", "p", "--nodes", "n1", "--db", str(db))[0] == 0
    with StoreReader(db) as reader:
        assert pool_members(reader, "free") == {"n2", "n3"}
        assert pool_members(reader, "p") == {"n1"}
        (row,) = fleet_series(reader, 0.0, 3600.0, pool="free")
    assert row["nodes"] == 2
    code, out, err = cli("capacity", "--db", str(db), "--plan", str(PLAN), "--remove", "free")
    assert code == 0, err
    assert "without 2 node(s) of pool(s) free" in out
    png = tmp_path / "free.png"
    code, _, err = cli("plot", "--db", str(db), "--pool", "free", "--out", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_json_flag_makes_pool_changes_and_import_print_json(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """--json on create/add/remove/delete and inventory import prints JSON, not prose."""
    db = str(await make_store(store_url, [Spec("n1"), Spec("n2")]))
    steps = [
        (
            ("pool", "create", "p", "--nodes", "n1"),
            {"pool": "p", "action": "create", "nodes": ["n1"]},
        ),
        (("pool", "add", "p", "n2"), {"pool": "p", "action": "add", "nodes": ["n2"]}),
        (("pool", "remove", "p", "n2"), {"pool": "p", "action": "remove", "nodes": ["n2"]}),
        (("pool", "delete", "p"), {"pool": "p", "action": "delete", "nodes": ["n1"]}),
    ]
    for argv, expected in steps:
        code, out, err = cli(*argv, "--db", db, "--json")
        assert code == 0, err
        assert json.loads(out) == expected
    from shared.schema import encode  # noqa: PLC0415
    from tests.collector.governance.hw_fleet import inventory  # noqa: PLC0415

    lines = tmp_path / "declared.jsonl"
    lines.write_bytes(encode(inventory(Spec("rack-new-1"))) + b"\n")
    code, out, err = cli("inventory", "import", str(lines), "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out) == {"declared": 1, "nodes": ["rack-new-1"]}


async def test_a_pool_named_import_is_refused(store_url: StoreTarget) -> None:
    """`collector inventory import` means import FILE, so no pool may be called import."""
    db = str(await make_store(store_url, [Spec("n1")]))
    code, _, err = cli("pool", "create", "import", "--db", db)
    assert code == 2
    assert "'import' is a word of `collector inventory`" in err
    assert _members(parse_target(db)) == {}


async def test_a_leased_pool_carries_its_lease_when_its_nodes_change(
    store_url: StoreTarget,
) -> None:
    """A lease of a pool leases its members: a node added to the pool joins the lease, a node
    removed leaves it (and may then be leased by another tenant); a node another tenant leases
    at the same time cannot join the pool, and the refusal changes nothing."""
    specs = [Spec(f"x1000c0s{i}b0n0") for i in range(4)]
    db = str(await make_store(store_url, specs))
    start = dt.date.today().isoformat()
    assert cli("pool", "create", "acme", "--nodes", "x1000c0s0b0n0", "--db", db)[0] == 0
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "acme", "--pool", "acme",
                       "--name", "acme-l", "--start", start)  # fmt: skip
    assert (code, err) == (0, "")
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "other", "--nodes",
                       "x1000c0s3b0n0", "--name", "other-l", "--start", start)  # fmt: skip
    assert (code, err) == (0, "")

    def leased(name: str) -> list[str]:
        code, out, _ = cli("lease", "show", name, "--db", db, "--json")
        assert code == 0
        return sorted(json.loads(out)["nodes"])

    assert cli("pool", "add", "acme", "x1000c0s1b0n0", "--db", db)[0] == 0
    assert leased("acme-l") == ["x1000c0s0b0n0", "x1000c0s1b0n0"]
    assert cli("pool", "remove", "acme", "x1000c0s0b0n0", "--db", db)[0] == 0
    assert leased("acme-l") == ["x1000c0s1b0n0"]
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "third", "--nodes",
                       "x1000c0s0b0n0", "--start", start)  # fmt: skip
    assert (code, err) == (0, "")  # no longer acme's

    code, _, err = cli("pool", "add", "acme", "x1000c0s3b0n0", "--db", db)
    assert code == 2
    assert "x1000c0s3b0n0" in err
    assert "other-l" in err
    assert err.count("\n") == 1
    assert leased("acme-l") == ["x1000c0s1b0n0"]
    pools = dict(db_rows(parse_target(db), "SELECT node, pool FROM pool_nodes"))
    assert "x1000c0s3b0n0" not in pools


async def test_apply_says_which_leased_nodes_of_the_pool_it_kept(fleet: StoreTarget) -> None:
    """A leased pool's nodes stay in it (`pool apply` never releases a leased node), so a
    smaller pattern keeps them all: the plan says so, naming them and how to release one,
    instead of 'keep 3, release 0' under 'fewest nodes proven' for a100:4 and nothing more."""
    db = str(fleet)
    assert cli("pool", "apply", "-p", "zinal:a100:12", "--db", db)[0] == 0
    start = dt.datetime.now(dt.UTC).date().isoformat()
    code, _, err = cli("lease", "add", "--tenant", "t", "--pool", "zinal", "--start", start,
                       "--db", db)  # fmt: skip
    assert (code, err) == (0, "")
    code, out, _ = cli("pool", "apply", "-p", "zinal:a100:4", "--db", db, "--json")
    assert code == 0
    plan = json.loads(out)
    assert (len(plan["nodes"]), plan["release"]) == (3, [])
    (note,) = plan["notes"]
    assert note.startswith("3 of the pool's nodes stay (leased, or given with --exclude): ")
    assert all(n in note for n in plan["nodes"])
    assert "`collector pool remove zinal NODE...` releases a leased node" in note
    code, out, _ = cli("pool", "apply", "-p", "zinal:a100:4", "--db", db)
    assert f"  note: {note}" in out.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "zinal", "x1000c0s1b0n0", "--dry-run"], "--dry-run goes with `pool apply`"),
        (["remove", "zinal", "x1000c0s0b0n0", "--dry-run"], "--dry-run goes with `pool apply`"),
        (["delete", "zinal", "--dry-run"], "--dry-run goes with `pool apply`, not delete"),
        (["add", "zinal", "x1000c0s1b0n0", "--comment", "x"], "--comment goes with `pool "
         "create` or `pool apply`, not add"),
        (["remove", "zinal", "x1000c0s0b0n0", "--force"], "--force goes with `pool add` or"),
        (["show", "zinal", "--exclude", "x1000c0s0b0n0"], "--exclude goes with `pool apply`"),
    ],
)  # fmt: skip
async def test_a_flag_of_another_action_is_one_line_exit_2_and_changes_nothing(
    fleet: StoreTarget, args: list[str], message: str
) -> None:
    """`pool delete zinal --dry-run` deleted the pool (--dry-run is apply's): a flag meant
    for another action was dropped without a word. One line naming it, exit 2, nothing
    moved."""
    db = str(fleet)
    assert cli("pool", "create", "zinal", "--db", db, "--nodes", "x1000c0s0b0n0")[0] == 0
    code, out, err = cli("pool", *args, "--db", db)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert message in err, err
    assert _members(fleet) == {"x1000c0s0b0n0": "zinal"}
