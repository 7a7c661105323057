"""A command's options may stand between its action and the action's operands.

``collector pool create --db x.db zinal`` is how an operator who types the store first
writes it; argparse's plain parse took the action, then gave the ``NAME [NODE ...]``
operands nothing and refused ``zinal`` as an unrecognized argument (exit 2). The same for
``pool add``, ``lease show``, ``inventory forget``, ``quota show`` and ``silence expire``.
"""

from __future__ import annotations

import json

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store


@pytest.fixture
async def fleet(store_url: StoreTarget) -> StoreTarget:
    """Three nodes (each backend in turn)."""
    return await make_store(store_url, [Spec(f"x1000c0s{i}b0n0") for i in range(3)])


async def test_pool_create_and_add_with_the_store_first(fleet: StoreTarget) -> None:
    db = str(fleet)
    code, _, err = cli("pool", "create", "--db", db, "zinal")
    assert code == 0, err
    code, _, err = cli("pool", "add", "--db", db, "zinal", "x1000c0s0b0n0", "x1000c0s1b0n0")
    assert code == 0, err
    code, out, err = cli("pool", "list", "--json", "--db", db)
    assert code == 0, err
    assert {p["name"]: p["nodes"] for p in json.loads(out)["pools"]} == {"zinal": 2, "free": 1}
    code, out, err = cli("inventory", "--db", db, "zinal", "--json")
    assert code == 0, err
    assert [n["node"] for n in json.loads(out)["nodes"]] == ["x1000c0s0b0n0", "x1000c0s1b0n0"]


async def test_show_and_expire_take_their_operand_after_options(fleet: StoreTarget) -> None:
    db = str(fleet)
    code, _, err = cli(
        "lease", "add", "--db", db, "--tenant", "acme", "--nodes", "x1000c0s2b0n0",
        "--start", "2026-01-01", "--name", "acme-1",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli("lease", "show", "--db", db, "acme-1", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "acme-1"
    code, _, err = cli("silence", "expire", "--db", db, "99")
    assert "unrecognized arguments" not in err
