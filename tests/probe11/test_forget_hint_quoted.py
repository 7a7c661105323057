"""``inventory forget`` refused for a lease names the fix as a command to copy."""

from __future__ import annotations

import shlex

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store


@pytest.fixture
async def fleet(store_url: StoreTarget) -> StoreTarget:
    """Three nodes (each backend in turn)."""
    return await make_store(store_url, [Spec(f"x1000c0s{i}b0n0") for i in range(3)])


async def test_the_lease_cancel_hint_of_a_refused_forget_is_quoted_for_the_shell(
    fleet: StoreTarget,
) -> None:
    """A lease name is free printable text: ``forget`` named the fix as ``collector lease
    cancel x $(touch f)``, which a copy into a shell runs (and splits) instead of
    cancelling the lease."""
    db = str(fleet)
    name = "x $(touch f) ;y"
    code, _, err = cli(
        "lease", "add", "--db", db, "--tenant", "acme", "--nodes", "x1000c0s2b0n0",
        "--start", "2026-01-01", "--duration", "3650d", "--name", name,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli("inventory", "forget", "x1000c0s2b0n0", "--db", db, "--store-only")
    assert code == 2
    hint = err.split("(`", 1)[1].split("`)", 1)[0]
    assert shlex.split(hint) == ["collector", "lease", "cancel", name]
