"""Hierarchical cohorts from the command line: `quota set --cohort --parent`, cycles refused,
a cluster file with parents and cohort limits (round trip), `quota show --tree`, and
admission that follows the tree."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from tests.collector.governance.fleet import cli, make_store

TREE = """
[cohorts.root]
quota = { gpus = 0 }

[cohorts.left]
parent = "root"
quota = { gpus = { nominal = 10, borrowing_limit = 5 } }

[cohorts.right]
parent = "root"
quota = { gpus = 10 }

[tenants.left-cq1]
cohort = "left"
quota.gpus = { nominal = 10 }

[tenants.left-cq2]
cohort = "left"
quota.gpus = { nominal = 10, borrowing_limit = 5 }

[tenants.right-cq]
cohort = "right"
quota.gpus = { nominal = 10 }
"""
"""Kueue's "hierarchical cohort respects borrowing limit" case (resource_test.go)."""


def _today(offset: int = 0) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset)).isoformat()


async def _applied(tmp_path: Path, nodes: dict[str, int] | None = None) -> str:
    db = str(await make_store(tmp_path, nodes or {"n1": 8}))
    f = tmp_path / "cluster.toml"
    f.write_text(TREE)
    code, _, err = cli("apply", "--db", db, "-f", str(f))
    assert (code, err) == (0, "")
    return db


async def test_tree_from_a_file_shows_kueue_figures_and_round_trips(tmp_path: Path) -> None:
    """Idle, left-cq1 may take 35 (left's 30 + 5 from root), left-cq2 15, right-cq 50; the
    export applies again as a no-op."""
    db = await _applied(tmp_path)
    code, out, err = cli("quota", "show", "--db", db, "--tree", "--json", "--from-store")
    assert (code, err) == (0, "")
    tree = json.loads(out)["trees"][0]
    assert (tree["resource"], tree["basis"]) == ("gpus", "allocated")
    (root,) = tree["tree"]
    assert (root["cohort"], root["subtree"], root["available"]) == ("root", 50, 50)
    left, right = root["children"]
    assert (left["cohort"], left["subtree"], left["borrowing_limit"]) == ("left", 30, 5)
    tenants = {t["tenant"]: t["available"] for t in left["children"] + right["children"]}
    assert tenants == {"left-cq1": 35, "left-cq2": 15, "right-cq": 50}
    code, text, _ = cli("quota", "show", "--db", db, "--tree", "--from-store")
    assert "└─ root/  nominal 0; subtree 50" in text
    assert "   ├─ left/  nominal 10, borrow <= 5; subtree 30" in text
    assert "│  ├─ left-cq1  nominal 10; in use 0, available 35" in text
    code, exported, _ = cli("export", "--db", db)
    assert 'parent = "root"' in exported
    again = tmp_path / "again.toml"
    again.write_text(exported)
    code, out, err = cli("apply", "--db", db, "-f", str(again), "--json")
    assert (code, err, json.loads(out)["changes"]) == (0, "", [])


async def test_a_parent_closing_a_cycle_is_refused_in_one_line(tmp_path: Path) -> None:
    """root under left would make left -> root -> left: one line with "cycle" and both,
    from `quota set` and from a file; nothing changes."""
    db = await _applied(tmp_path)
    code, out, err = cli("quota", "set", "--db", db, "--cohort", "root", "--parent", "left")
    assert out == ""
    assert code == 2
    assert err.count("\n") == 1
    assert "cycle" in err
    assert "left -> root -> left" in err
    f = tmp_path / "cyclic.toml"
    f.write_text('[cohorts.a]\nparent = "b"\n[cohorts.b]\nparent = "a"\n')
    code, _, err = cli("apply", "--db", db, "-f", str(f))
    assert code == 2
    assert "cycle: a -> b -> a" in err
    shown = json.loads(cli("export", "--db", db, "--json")[1])
    assert "parent" not in shown["cohorts"]["root"]
    assert "a" not in shown["cohorts"]


async def test_quota_set_gives_a_cohort_a_parent_and_limits(tmp_path: Path) -> None:
    """set --cohort C --parent P --nominal --borrowing-limit writes both; limits without a
    parent are refused naming --parent."""
    db = str(await make_store(tmp_path, {"n1": 8}))
    code, _, err = cli("quota", "set", "--db", db, "--cohort", "solo", "--nominal", "4",
                       "--borrowing-limit", "1")  # fmt: skip
    assert code == 2
    assert "give --parent P" in err
    code, out, err = cli("quota", "set", "--db", db, "--cohort", "left", "--parent", "top",
                         "--nominal", "10", "--borrowing-limit", "5", "--lending-limit", "2",
                         "--json")  # fmt: skip
    assert (code, err) == (0, "")
    row = json.loads(out)
    assert (row["parent"], row["nominal"], row["borrowing_limit"]) == ("top", 10, 5)
    cohorts = json.loads(cli("export", "--db", db, "--json")[1])["cohorts"]
    assert cohorts["left"] == {
        "parent": "top",
        "quota": {"gpus": {"nominal": 10, "borrowing_limit": 5, "lending_limit": 2}},
    }
    assert cli("quota", "set", "--db", db, "--cohort", "left", "--parent", "-")[0] == 0
    cohorts = json.loads(cli("export", "--db", db, "--json")[1])["cohorts"]
    assert "parent" not in cohorts["left"]


async def test_admission_follows_the_borrowing_limit_of_a_cohort(tmp_path: Path) -> None:
    """left-cq1 may hold 35 GPUs idle: 4 nodes of 8 (32) are admitted; a 5th (40) is refused,
    since left borrows at most 5 from root."""
    nodes = {f"n{i}": 8 for i in range(6)}
    db = await _applied(tmp_path, nodes)
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "left-cq1",
                       "--nodes", "n0,n1,n2,n3", "--start", _today())  # fmt: skip
    assert (code, err) == (0, "")
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "left-cq1", "--nodes", "n4",
                       "--start", _today(), "--name", "more")  # fmt: skip
    assert code == 2
    assert "it holds 32 GPUs then and this asks 8 more, but only 3 available" in err
