"""``collector pool delete`` of a pool an unended lease holds is refused.

It deleted the pool and returned its nodes to free: the active lease was left naming a pool
that no longer exists, holding 0 nodes (its allocated GPU-hours stopped), with no word
said. ``inventory forget`` refuses a leased node in the same way, naming the lease.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store


@pytest.fixture
async def fleet(store_url: StoreTarget) -> StoreTarget:
    """Two nodes (each backend in turn)."""
    return await make_store(store_url, [Spec(f"x1000c0s{i}b0n0") for i in range(2)])


def _lease(db: str, start: dt.date, duration: str) -> None:
    code, _, err = cli(
        "lease", "add", "--db", db, "--tenant", "acme", "--pool", "p",
        "--start", start.isoformat(), "--duration", duration, "--name", "acme-1",
    )  # fmt: skip
    assert code == 0, err


async def test_a_pool_held_by_a_lease_is_not_deleted(fleet: StoreTarget) -> None:
    db = str(fleet)
    assert cli("pool", "create", "p", "--nodes", "x1000c0s0b0n0", "--db", db)[0] == 0
    _lease(db, dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3), "30d")
    code, _, err = cli("pool", "delete", "p", "--db", db)
    assert code == 2
    assert err.count("\n") == 1
    assert "lease 'acme-1'" in err
    code, out, err = cli("lease", "show", "acme-1", "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out)["nodes"] == ["x1000c0s0b0n0"]


async def test_a_pool_whose_lease_has_ended_is_deleted(fleet: StoreTarget) -> None:
    db = str(fleet)
    assert cli("pool", "create", "p", "--nodes", "x1000c0s0b0n0", "--db", db)[0] == 0
    _lease(db, dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30), "3d")
    code, out, err = cli("pool", "delete", "p", "--db", db)
    assert code == 0, err
    assert out.startswith("pool p deleted; 1 nodes returned to free")
