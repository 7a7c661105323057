"""probe11's finding: a notice dated before the lease existed erased it.

``collector lease cancel L --on 1999-01-01`` on a lease that started 2026-01-01 (booked
today, 90 days' notice) is accepted: notice + 90 days falls before its start, so the lease
"ends at its start": status expired, every node back, and the GPU-hours it held (billed
whether or not a node reported) vanish from ``collector usage``. A typo of the year
(2025 for 2026) does the same. Expected: a notice day before both the lease's start and
the day it was booked refused in one line, exit 2, nothing changed. Notice before the start
alone (a future lease cancelled before it begins) and before the booking alone (an older
lease entered late, its notice recorded) are still taken.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from collector.paths import StoreTarget
from tests.collector.governance.hw_fleet import Spec, cli, make_store


@pytest.fixture
async def fleet(store_url: StoreTarget) -> StoreTarget:
    """One node (each backend in turn)."""
    return await make_store(store_url, [Spec("x1000c0s0b0n0")])


def _lease(db: str, start: dt.date) -> None:
    code, _, err = cli(
        "lease", "add", "--db", db, "--tenant", "acme", "--nodes", "x1000c0s0b0n0",
        "--start", start.isoformat(), "--duration", "365d", "--notice", "90d",
        "--name", "acme-1",
    )  # fmt: skip
    assert code == 0, err


def _notice(db: str) -> str | None:
    code, out, err = cli("lease", "show", "acme-1", "--db", db, "--json")
    assert code == 0, err
    given: str | None = json.loads(out)["notice_given"]
    return given


_TODAY = dt.datetime.now(dt.UTC).date()


async def test_a_notice_before_the_lease_existed_is_refused(fleet: StoreTarget) -> None:
    db = str(fleet)
    _lease(db, _TODAY - dt.timedelta(days=30))
    code, _, err = cli("lease", "cancel", "acme-1", "--db", db, "--on", "1999-01-01")
    assert code == 2
    assert "before the lease starts" in err
    assert "--on" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli("lease", "show", "acme-1", "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "active"
    assert _notice(db) is None


async def test_a_future_lease_cancelled_before_it_starts_is_taken(fleet: StoreTarget) -> None:
    db = str(fleet)
    _lease(db, _TODAY + dt.timedelta(days=200))
    code, _, err = cli("lease", "cancel", "acme-1", "--db", db, "--on", _TODAY.isoformat())
    assert code == 0, err
    assert _notice(db) == _TODAY.isoformat()


async def test_an_older_lease_entered_late_takes_its_notice(fleet: StoreTarget) -> None:
    db = str(fleet)
    _lease(db, _TODAY - dt.timedelta(days=100))  # booked today, started 100 days ago
    given = _TODAY - dt.timedelta(days=20)  # before the booking, after the start
    code, _, err = cli("lease", "cancel", "acme-1", "--db", db, "--on", given.isoformat())
    assert code == 0, err
    assert _notice(db) == given.isoformat()
