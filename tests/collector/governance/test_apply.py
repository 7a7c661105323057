"""``collector apply -f`` / ``collector export``: idempotent, dry run, bad keys change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.cli import main as collector_main
from collector.paths import StoreTarget, parse_target
from tests.collector.governance.fleet import cli, make_store
from tests.collector.governance.hw_fleet import Spec
from tests.collector.governance.hw_fleet import make_store as make_hw_store
from tests.helpers import db_rows

NODES = {"n1": 8, "n2": 8, "n3": 4, "n4": 4}

CLUSTER = """\
[cohorts.research]
quota = { gpus = 4 }

[tenants.acme]
cohort = "research"
priority = 10
quota.gpus = { nominal = 16, borrowing_limit = 4 }
quota.gpu_hours = { nominal = 5000, period = "week" }

[tenants.beta]
cohort = "research"
quota.gpus = { nominal = 8, lending_limit = 2 }

[pools.acme-a]
nodes = ["n1", "n2"]

[leases.acme-2041]
tenant = "acme"
pool = "acme-a"
start = 2041-01-01
duration_days = 180
notice_days = 90

[leases.beta-2041]
tenant = "beta"
nodes = ["n3"]
start = 2041-02-01
tz = "Asia/Tokyo"
auto_renew = true
duration_days = 90
notice_days = 30
"""


def _file(tmp_path: Path, text: str, name: str = "cluster.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_apply_is_idempotent_and_export_round_trips(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """The second apply changes nothing; the export applies as a no-op too."""
    db = str(await make_store(store_url, NODES))
    f = _file(tmp_path, CLUSTER)
    code, out, err = cli("apply", "--db", db, "-f", f, "--json")
    assert (code, err) == (0, "")
    changes = json.loads(out)["changes"]
    assert "+ tenant acme (cohort research, priority 10)" in changes
    assert "+ pool acme-a (2 nodes)" in changes
    assert "+ lease acme-2041 (acme, from 2041-01-01)" in changes
    code, out, _ = cli("apply", "--db", db, "-f", f)
    assert (code, out) == (0, "nothing to change: the store already says what the file says\n")
    code, out, _ = cli("lease", "show", "beta-2041", "--db", db, "--json")
    assert json.loads(out)["tz"] == "Asia/Tokyo"
    code, exported, _ = cli("export", "--db", db)
    assert code == 0
    assert 'tz = "Asia/Tokyo"' in exported
    code, out, _ = cli("apply", "--db", db, "-f", _file(tmp_path, exported, "exported.toml"))
    assert out.startswith("nothing to change")


async def test_apply_is_idempotent_whatever_the_databases_collation(
    collated_store_url: StoreTarget, tmp_path: Path
) -> None:
    """Node names that a language's collation orders otherwise than bytes (a PostgreSQL
    database made with en_US.UTF-8: ``gpu_2`` < ``gpu-10`` < ``GPU-3``): the second apply
    of a pool and of a lease over that pool still changes nothing."""
    names = ["gpu-10", "gpu_2", "GPU-3", "gpu.a", "a-b", "ab"]
    db = str(await make_store(collated_store_url, dict.fromkeys(names, 8)))
    toml = (
        f"[pools.p]\nnodes = {json.dumps(names)}\n"
        '[leases.l]\ntenant = "t"\npool = "p"\nstart = 2041-01-01\nduration_days = 30\n'
        "[tenants.t]\n"
    )
    f = _file(tmp_path, toml)
    code, out, err = cli("apply", "--db", db, "-f", f)
    assert (code, err) == (0, "")
    code, out, _ = cli("apply", "--db", db, "-f", f)
    assert (code, out) == (0, "nothing to change: the store already says what the file says\n")


async def test_dry_run_prints_the_diff_and_writes_nothing(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """A dry run lists the changes; the store is unchanged afterwards."""
    db = str(await make_store(store_url, NODES))
    f = _file(tmp_path, CLUSTER)
    code, out, _ = cli("apply", "--db", db, "-f", f, "--dry-run")
    assert code == 0
    assert "+ lease beta-2041" in out
    assert "~ cohort research gpus: none -> 4\n" in out
    assert out.rstrip().endswith("would change: 10 changes")
    code, out, _ = cli("lease", "list", "--db", db, "--json")
    assert json.loads(out) == {"leases": []}
    code, out, _ = cli("export", "--db", db, "--json")
    assert json.loads(out) == {}
    cli("apply", "--db", db, "-f", f)
    changed = CLUSTER.replace("nominal = 16", "nominal = 20").replace("notice_days = 90", "")
    code, out, _ = cli("apply", "--db", db, "-f", _file(tmp_path, changed, "v2.toml"), "--json")
    assert json.loads(out)["changes"] == [
        "~ quota acme gpus: nominal 16, borrowing_limit 4 -> nominal 20, borrowing_limit 4",
        "~ lease acme-2041: dates or notice changed",
    ]


async def test_a_tenant_named_without_quota_loses_its_quotas_as_the_help_says(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file naming `[tenants.acme]` only to set its cohort drops acme's quotas (the file
    says exactly what a tenant it names holds); `apply --help` says so, not only that what
    the file does not name is left as it is."""
    db = str(await make_store(store_url, NODES))
    assert cli("apply", "--db", db, "-f", _file(tmp_path, CLUSTER))[0] == 0
    only_cohort = '[cohorts.research]\nquota = { gpus = 4 }\n[tenants.acme]\ncohort = "research"\n'
    code, out, _ = cli(
        "apply", "--db", db, "-f", _file(tmp_path, only_cohort, "c.toml"), "--dry-run"
    )
    assert code == 0
    assert "~ quota acme gpus: nominal 16, borrowing_limit 4 -> none" in out
    with pytest.raises(SystemExit):
        collector_main(["apply", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "a tenant or cohort it names gets exactly the file's quotas" in help_text


async def test_bad_file_changes_nothing_and_names_the_key(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """An unknown key, a bad value or an overlapping lease: exit 2, one line, store untouched."""
    db = str(await make_store(store_url, NODES))
    cases = {
        CLUSTER.replace("priority = 10", "priorty = 10"): "tenants.acme.priorty: unknown key",
        CLUSTER.replace("nominal = 8,", "nominal = -8,"): "tenants.beta.quota.gpus.nominal",
        CLUSTER.replace('tz = "Asia/Tokyo"', 'tz = "Mars/Base"'): "leases.beta-2041: unknown",
        CLUSTER.replace('nodes = ["n3"]', 'nodes = ["n2"]'): "leases.beta-2041: node n2 is",
        CLUSTER + "[oops\n": "not valid TOML",
        # true/false for a number: pydantic read them as 1/0 (a quota of one GPU, a lease
        # of one day, applied without a word)
        CLUSTER.replace("nominal = 8,", "nominal = true,"): (
            "tenants.beta.quota.gpus.nominal: Input should be a number, not true or false"
        ),
        CLUSTER.replace("duration_days = 180", "duration_days = true"): (
            "leases.acme-2041.duration_days: Input should be a number, not true or false"
        ),
        CLUSTER.replace("gpus = 4 }", "gpus = false }"): "cohorts.research.quota.gpus: Input",
        # text for a number: pydantic read "8" as 8 (lax mode); the file says text
        CLUSTER.replace("nominal = 8,", 'nominal = "8",'): (
            "tenants.beta.quota.gpus.nominal: Input should be a number, not text"
        ),
        CLUSTER.replace("priority = 10", "priority = true"): "tenants.acme.priority: Input",
        # text for a boolean: pydantic read "no" as false and "yes" as true (lax mode)
        CLUSTER.replace("auto_renew = true", 'auto_renew = "yes"'): (
            "leases.beta-2041.auto_renew: Input should be true or false, not text"
        ),
        CLUSTER
        + '[pools.other]\nnodes = ["n2"]\n': "pools.other.nodes: n2 is also in pools.acme-a",
        CLUSTER.replace("[pools.acme-a]", "[pools.free]").replace('"acme-a"', '"free"'): (
            "pools.free: `free` is every node in no pool"
        ),
    }
    for i, (text, expected) in enumerate(cases.items()):
        code, out, err = cli("apply", "--db", db, "-f", _file(tmp_path, text, f"bad{i}.toml"))
        assert code == 2, text
        assert expected in err, err
        assert err.count("\n") == 1
        code, out, _ = cli("export", "--db", db, "--json")
        assert json.loads(out) == {}, expected


async def test_apply_does_not_take_nodes_from_pools_it_does_not_name(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """A node in a pool the file does not declare stays there: apply refuses, naming both."""
    db = str(await make_store(store_url, NODES))
    code, _, _ = cli("lease", "add", "--db", db, "--tenant", "x", "--pool", "team-x",
                     "--nodes", "n1", "--start", "2041-06-01")  # fmt: skip
    assert code == 0
    code, _, err = cli("apply", "--db", db, "-f", _file(tmp_path, CLUSTER))
    assert code == 2
    assert "pools.acme-a.nodes: n1 is in pool 'team-x', which the file does not name" in err


async def test_a_pool_by_pattern_is_planned_and_applying_again_changes_nothing(
    tmp_path: Path,
) -> None:
    """``pattern = "a100:8"`` gives the pool the fewest free nodes (one 8-GPU node rather
    than two 4-GPU ones), never a node another pool in the file names; the second apply is a
    no-op; an impossible pattern names the key and changes nothing."""
    specs = [Spec(f"x1000c0s{i}b0n0", gpus=4) for i in range(3)]
    specs += [Spec("x1001c0s0b0n0", gpus=8), Spec("x1001c0s1b0n0", gpus=8)]
    db = str(await make_hw_store(tmp_path, specs))
    toml = tmp_path / "cluster.toml"
    toml.write_text('[pools.named]\nnodes = ["x1001c0s0b0n0"]\n[pools.zinal]\npattern = "a100:8"\n')
    code, out, err = cli("apply", "--db", db, "-f", str(toml))
    assert (code, err) == (0, "")
    pools = dict(db_rows(parse_target(db), "SELECT node, pool FROM pool_nodes"))
    assert pools == {"x1001c0s0b0n0": "named", "x1001c0s1b0n0": "zinal"}
    code, out, _ = cli("apply", "--db", db, "-f", str(toml))
    assert (code, out.splitlines()[0]) == (0, "nothing to change: the store already says "
                                              "what the file says")  # fmt: skip

    toml.write_text('[pools.zinal]\npattern = "a100:64"\n')
    code, _, err = cli("apply", "--db", db, "-f", str(toml))
    assert code == 2
    assert err.count("\n") == 1
    assert "a100" in err
    after = dict(db_rows(parse_target(db), "SELECT node, pool FROM pool_nodes"))
    assert after == pools


async def test_a_leased_pool_grown_by_the_file_grows_its_lease(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """acme-a gains n4 in the file: the lease of acme-a now holds n4 too; giving it n3,
    which beta leases at the same time, is refused and changes nothing."""
    db = str(await make_store(store_url, NODES))
    assert cli("apply", "--db", db, "-f", _file(tmp_path, CLUSTER))[0] == 0
    grown = CLUSTER.replace('nodes = ["n1", "n2"]', 'nodes = ["n1", "n2", "n4"]')
    code, _, err = cli("apply", "--db", db, "-f", _file(tmp_path, grown, "grown.toml"))
    assert (code, err) == (0, "")
    code, out, _ = cli("lease", "show", "acme-2041", "--db", db, "--json")
    assert sorted(json.loads(out)["nodes"]) == ["n1", "n2", "n4"]
    clash = CLUSTER.replace('nodes = ["n1", "n2"]', 'nodes = ["n1", "n2", "n3"]')
    code, _, err = cli("apply", "--db", db, "-f", _file(tmp_path, clash, "clash.toml"))
    assert code == 2
    assert "node n3 is in lease 'beta-2041'" in err
    assert "cannot join" in err
    code, out, _ = cli("lease", "show", "acme-2041", "--db", db, "--json")
    assert sorted(json.loads(out)["nodes"]) == ["n1", "n2", "n4"]


async def test_a_node_the_file_moves_between_pools_leaves_the_lease_of_the_pool_it_left(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """pa (applied first, by name) takes n2 from pb: pb's lease, which the file does not
    name, lets n2 go though pb's nodes are then as the file says (it kept n2 before); every
    move is in the pool history."""
    db = await make_store(store_url, NODES)
    before = '[pools.pa]\nnodes = ["n1"]\n[pools.pb]\nnodes = ["n2", "n3"]\n'
    code, _, err = cli("apply", "--db", str(db), "-f", _file(tmp_path, before))
    assert (code, err) == (0, "")
    code, _, err = cli("lease", "add", "--db", str(db), "--tenant", "b", "--pool", "pb",
                       "--start", "2041-01-01", "--name", "lb")  # fmt: skip
    assert (code, err) == (0, "")
    after = before.replace('["n1"]', '["n1", "n2"]').replace('["n2", "n3"]', '["n3"]')
    code, out, err = cli("apply", "--db", str(db), "-f", _file(tmp_path, after, "after.toml"))
    assert (code, err) == (0, ""), out
    code, out, _ = cli("lease", "show", "lb", "--db", str(db), "--json")
    assert json.loads(out)["nodes"] == ["n3"]
    moves = db_rows(db, "SELECT node, from_pool, to_pool, reason FROM pool_moves ORDER BY id")
    assert moves == [
        ("n1", "free", "pa", "apply pools.pa"),
        ("n2", "free", "pb", "apply pools.pb"),
        ("n3", "free", "pb", "apply pools.pb"),
        ("n2", "pb", "pa", "apply pools.pa"),
    ]


async def test_export_round_trips_a_pool_lease_whose_pool_changed(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """A node removed from a leased pool leaves the lease (a lease of a pool follows the
    pool); the export says what the store holds, and applying it changes nothing."""
    db = str(await make_store(store_url, NODES))
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "x", "--pool", "px",
                       "--nodes", "n1", "--start", "2041-06-01")  # fmt: skip
    assert (code, err) == (0, "")
    code, _, err = cli("pool", "remove", "px", "n1", "--db", db)
    assert code == 0, err
    code, exported, _ = cli("export", "--db", db)
    assert code == 0
    code, out, err = cli("apply", "--db", db, "-f", _file(tmp_path, exported, "exported.toml"))
    assert (code, err) == (0, "")
    assert out.startswith("nothing to change"), out
    code, out, _ = cli("lease", "show", "x-2041-06-01", "--db", db, "--json")
    assert json.loads(out)["nodes"] == []


async def test_export_apply_export_keeps_the_pools_comments(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """`pool create --comment` is what a pool is for: export wrote the pools without it,
    so export -> apply on a fresh store -> export gave the same text while the comments
    were lost. Now the text carries them, and apply sets them (a file that gives none
    leaves a pool's own; a changed one is a change)."""
    db = str(await make_store(store_url, NODES))
    for argv in (
        ("pool", "create", "acme-a", "--nodes", "n1,n2", "--comment", "acme's training pool"),
        ("pool", "create", "spare", "--comment", 'spare "hot" nodes'),
    ):
        code, _, err = cli(*argv, "--db", db)
        assert (code, err) == (0, "")
    code, exported, _ = cli("export", "--db", db)
    assert code == 0
    assert 'comment = "acme\'s training pool"' in exported
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_db = str(await make_store(fresh, NODES))
    f = _file(tmp_path, exported, "exported.toml")
    code, out, err = cli("apply", "--db", fresh_db, "-f", f)
    assert (code, err) == (0, "")
    code, again, _ = cli("export", "--db", fresh_db)
    assert again == exported
    code, out, _ = cli("pool", "list", "--db", fresh_db, "--json")
    comments = {p["name"]: p["comment"] for p in json.loads(out)["pools"]}
    assert comments["acme-a"] == "acme's training pool"
    assert comments["spare"] == 'spare "hot" nodes'
    bare = _file(tmp_path, "[pools.spare]\nnodes = []\n", "bare.toml")
    code, out, _ = cli("apply", "--db", fresh_db, "-f", bare)
    assert out.startswith("nothing to change"), out
    changed = _file(tmp_path, exported.replace("training", "ML"), "changed.toml")
    code, out, _ = cli("apply", "--db", fresh_db, "-f", changed)
    assert (code, out) == (0, "~ pool acme-a: comment\napplied: 1 change\n")


async def test_names_follow_the_commands_rule(store_url: StoreTarget, tmp_path: Path) -> None:
    """apply, lease add and quota set refuse the tenant, cohort and pool names that `pool
    create` refuses (they used to store '', 'a b' or a control character)."""
    db = str(await make_store(store_url, NODES))
    files = {
        '[tenants.""]\npriority = 1\n': 'tenants.: tenant name ""',
        '[tenants."a b"]\npriority = 1\n': "tenants.a b: tenant name 'a b'",
        '[tenants.t]\ncohort = "c\\u0007"\n': "tenants.t.cohort: cohort name",
        '[pools."a b"]\nnodes = ["n1"]\n': "pools.a b: pool name 'a b'",
        '[pools.FREE]\nnodes = ["n1"]\n': "pools.FREE: 'free' is the implicit pool",
        '[pools.import]\nnodes = ["n1"]\n': "pools.import: 'import' is a word",
    }
    for i, (text, expected) in enumerate(files.items()):
        code, _, err = cli("apply", "--db", db, "-f", _file(tmp_path, text, f"n{i}.toml"))
        assert code == 2, text
        assert expected.replace('""', "''") in err, err
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "t", "--pool", "a b",
                       "--nodes", "n1", "--start", "2041-06-01")  # fmt: skip
    assert (code, err.count("\n")) == (2, 1)
    assert "pool name 'a b'" in err
    code, _, err = cli("lease", "add", "--db", db, "--tenant", " ", "--nodes", "n1",
                       "--start", "2041-06-01")  # fmt: skip
    assert code == 2
    assert "tenant name ' '" in err
    code, _, err = cli("quota", "set", "", "--nominal", "1", "--db", db)
    assert code == 2
    assert "tenant name ''" in err
    code, out, _ = cli("export", "--db", db, "--json")
    assert json.loads(out) == {}


async def test_leases_of_one_file_see_each_other(store_url: StoreTarget, tmp_path: Path) -> None:
    """apply keeps one state across the file's leases (no reload per lease): a second lease
    of the same node at the same time is still refused, and nothing is written."""
    db = str(await make_store(store_url, NODES))
    text = (
        '[leases.first]\ntenant = "a"\nnodes = ["n1"]\nstart = 2041-01-01\n\n'
        '[leases.second]\ntenant = "b"\nnodes = ["n2", "n1"]\nstart = 2041-03-01\n'
    )
    code, _, err = cli("apply", "--db", db, "-f", _file(tmp_path, text))
    assert code == 2
    assert "leases.second: node n1 is already in lease 'first'" in err, err
    code, out, _ = cli("export", "--db", db, "--json")
    assert json.loads(out) == {}


async def test_a_file_over_32_mib_is_refused_before_it_is_read_whole(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """`-f /dev/zero` or a runaway generator: one line, exit 2 (it was read into memory)."""
    db = str(await make_store(store_url, NODES))
    big = tmp_path / "huge.toml"
    with big.open("wb") as f:
        f.truncate((32 << 20) + 1)  # sparse: costs no disk
    code, _, err = cli("apply", "--db", db, "-f", str(big))
    assert (code, err.count("\n")) == (2, 1)
    assert "is larger than 32 MiB" in err, err
