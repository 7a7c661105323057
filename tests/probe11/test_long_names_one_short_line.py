"""A very long pool name or pattern is refused in one short line, not echoed whole.

``collector pool apply -p 'p:<50,000 x>:1'`` printed a 150 KB "line" (the pattern three
times) and ``pool create <50,000 characters>`` one of 50 KB: an error line quotes a value
cut (``shared.text.quoted``), as a bad setting's does.
"""

from __future__ import annotations

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store

LONG = "x" * 50_000


@pytest.fixture
async def fleet(store_url: StoreTarget) -> StoreTarget:
    """Two nodes (each backend in turn)."""
    return await make_store(store_url, [Spec(f"x1000c0s{i}b0n0") for i in range(2)])


@pytest.mark.parametrize(
    "argv",
    [
        ("pool", "create", "p" + LONG),
        ("pool", "apply", "-p", f"p:{LONG}:1", "--dry-run"),
        ("pool", "apply", "-p", f"p:{LONG}:1"),
        ("pool", "apply", "-p", f"p{LONG}:h100:1"),
        ("pool", "apply", "-p", f"p:h100:{LONG}"),
        ("lease", "add", "--tenant", "acme", "--pattern", f"p:{LONG}:1", "--start", "2026-01-01"),
    ],
    ids=["create", "apply-dry-run", "apply", "apply-name", "apply-qty", "lease-pattern"],
)
def test_refused_in_one_short_line(fleet: StoreTarget, argv: tuple[str, ...]) -> None:
    code, _, err = cli(*argv, "--db", str(fleet))
    assert code == 2
    assert err.count("\n") == 1, err[:300]
    assert len(err) < 500, err[:300]
