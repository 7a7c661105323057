"""probe11's finding: most refusals echoed the offending value whole.

A 20,000-character --node, --tenant, --pool, --lease, --tz, --start, --gpu-label,
capacity --add TYPE=N, --explain, --remove or positional name is refused (exit 2) with an
error "line" of 20-40 KB that quotes it whole; a bad setting's line quotes it cut
(``shared.text.quoted``: 64 characters and the length). Every command's error line is now
printed through ``shared.text.shortened``, which cuts such a word the same way and keeps the
rest of the line (the field and the fix).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store

LONG = "x" * 20_000


@pytest.fixture
async def fleet(tmp_path: Path) -> StoreTarget:
    """Two nodes in a SQLite store (the messages do not depend on the backend)."""
    return await make_store(tmp_path, [Spec(f"x1000c0s{i}b0n0") for i in range(2)])


@pytest.mark.parametrize(
    "argv",
    [
        ("inventory", "--node", LONG),
        ("query", "--node", LONG),
        ("lease", "show", LONG),
        ("lease", "add", "--tenant", LONG, "--nodes", "x1000c0s0b0n0", "--start", "2030-01-01"),
        ("usage", "--from", LONG, "--to", "2026-01-01"),
        ("export", "--format", "kueue", "--gpu-label", LONG),
    ],
    ids=lambda argv: "-".join(a for a in argv[:2] if a != LONG),
)
def test_a_long_value_is_refused_in_a_short_line(fleet: StoreTarget, argv: tuple[str, ...]) -> None:
    code, _, err = cli(*argv, "--db", str(fleet))
    assert code == 2
    assert len(err) < 1_000, err[:200]
    assert len(err.strip().splitlines()) == 1
    # the value: its head and its length
    assert re.search(r"x{60}\.\.\. \(200\d\d characters\)", err), err
