"""The usage ledger written in parts (both backends): the same rows as in one part per
hour, a stop between parts leaves nothing a redo does not mend, each part idempotent."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from collector.paths import StoreTarget
from collector.store.db import Store
from collector.store.ledger import LedgerPart, LedgerRow, ledger_parts, write_ledger_part
from tests.helpers import assert_daily_is_the_hours_summed, db_rows

HOUR0 = 1_794_268_800  # 2026-11-10 00:00 UTC
HOURS = [HOUR0, HOUR0 + 3600]
NODES = [f"n{i:02d}" for i in range(7)]


def _rows(hours: Sequence[int], nodes: Sequence[str], scale: float) -> list[LedgerRow]:
    """Each node's rows per hour: even nodes held half the hour by a lease (two rows)."""
    out = []
    for h in hours:
        for i, node in enumerate(nodes):
            shares = [("", None, 0.5), ("acme-1", "acme", 0.5)] if i % 2 == 0 else [("", None, 1)]
            for lease, tenant, held in shares:
                used = scale * (i + 1) * held
                out.append(
                    LedgerRow(h, node, lease, tenant, "free", 8, held, 8 * held if lease else 0.0,
                              used, used, 8 * held, used / 10, used / 100, used / 8, "gpu+cpu")
                )  # fmt: skip
    return out


async def _write(db: StoreTarget, parts: Sequence[LedgerPart]) -> None:
    async with Store(db) as store:
        for part in parts:
            await write_ledger_part(store, part)


async def _dirty(db: StoreTarget, hours: Sequence[int]) -> None:
    async with Store(db) as store, store.transaction("marking"):
        for h in hours:
            await store.execute("INSERT INTO ledger_dirty (hour, n) VALUES (?, 3)", (h,))


def _ledger(db: StoreTarget) -> list[tuple[object, ...]]:
    """The ledger's rows but ``computed``, in key order."""
    return db_rows(
        db,
        "SELECT hour, node, lease, tenant, pool, held_h, used_gpu_h, node_kwh FROM usage_ledger "
        "ORDER BY hour, node, lease",
    )


async def test_a_ledger_in_parts_equals_one_written_an_hour_at_a_time(
    store_url: StoreTarget, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Parts of three rows (a node's two rows kept together) leave the same rows, daily sums
    and marks as one part per hour, over an older computation with a node more."""
    old = _rows(HOURS, [*NODES, "n99"], 1.0)
    new = _rows(HOURS, NODES, 2.0)
    small = ledger_parts(HOURS, new, [(HOURS[0], 3)], 200.0, until=200.0, most_rows=3)
    whole = ledger_parts(HOURS, new, [(HOURS[0], 3)], 200.0, until=200.0, most_rows=10_000)
    assert len(whole) == 2
    assert len(small) > 2 * len(NODES) // 2
    assert all(len(p.rows) <= 3 for p in small)
    assert {len({r.node for r in p.rows}) for p in small} >= {1, 2}
    other = tmp_path_factory.mktemp("whole") / "c.db"
    results = []
    for db, parts in ((store_url, small), (other, whole)):
        await _write(db, ledger_parts(HOURS, old, [], 100.0, until=100.0))
        await _dirty(db, HOURS)
        await _write(db, parts)
        assert_daily_is_the_hours_summed(db)
        results.append(
            (
                _ledger(db),
                db_rows(
                    db, "SELECT day, lease, pool, n, used_gpu_h FROM usage_daily ORDER BY 1, 2, 3"
                ),
                db_rows(db, "SELECT hour, n FROM ledger_dirty ORDER BY hour"),
                db_rows(db, "SELECT value FROM meta WHERE key = 'ledger_at'"),
            )
        )
    (rows, daily, marks, at), (rows1, daily1, marks1, at1) = results
    assert rows == rows1
    assert {r[1] for r in rows} == set(NODES)  # n99's old rows went with each hour's last part
    assert len(daily) == len(daily1) > 0
    for a, b in zip(daily, daily1, strict=True):
        assert a == pytest.approx(b)
    assert marks == marks1 == [(HOURS[1], 3)]
    assert at == at1 == [("200.0",)]


async def test_a_stop_between_parts_leaves_each_node_old_or_new_and_a_redo_mends_it(
    store_url: StoreTarget,
) -> None:
    """Stopped after some parts: the daily sums still equal the rows, each node's rows are
    all old or all new, the hour's mark and the ledger's time are the old ones. A part written
    twice changes nothing; the next run (a new time) written whole gives the full result."""
    old = _rows(HOURS, [*NODES, "n99"], 1.0)
    new = _rows(HOURS, NODES, 2.0)
    await _write(store_url, ledger_parts(HOURS, old, [], 100.0, until=100.0))
    await _dirty(store_url, HOURS)
    parts = ledger_parts(HOURS, new, [(h, 3) for h in HOURS], 200.0, until=200.0, most_rows=3)
    stop = 2  # the first hour's first two parts
    assert not parts[stop - 1].last_of_hour
    await _write(store_url, [*parts[:stop], parts[stop - 1]])  # the last one twice
    assert_daily_is_the_hours_summed(store_url)
    got = db_rows(store_url, "SELECT hour, node, computed FROM usage_ledger")
    by_node: dict[tuple[int, str], set[float]] = {}
    for hour, node, computed in got:
        by_node.setdefault((hour, node), set()).add(float(computed))
    assert all(len(v) == 1 for v in by_node.values())
    written = {(p.hour, n) for p in parts[:stop] for n in p.nodes}
    assert {k for k, v in by_node.items() if v == {200.0}} == written
    # None gone before its hour's last part (n99, which the new computation lacks, too).
    assert set(by_node) == {(r.hour, r.node) for r in old}
    assert db_rows(store_url, "SELECT hour, n FROM ledger_dirty ORDER BY hour") == [
        (h, 3) for h in HOURS
    ]
    assert db_rows(store_url, "SELECT value FROM meta WHERE key = 'ledger_at'") == [("100.0",)]

    redo = ledger_parts(HOURS, new, [(h, 3) for h in HOURS], 300.0, until=300.0, most_rows=3)
    await _write(store_url, redo)
    assert_daily_is_the_hours_summed(store_url)
    assert _ledger(store_url) == [
        (r.hour, r.node, r.lease, r.tenant, r.pool, r.held_h, r.used_gpu_h, r.node_kwh)
        for r in sorted(new, key=lambda r: (r.hour, r.node, r.lease))
    ]
    assert db_rows(store_url, "SELECT count(*) FROM ledger_dirty") == [(0,)]
    assert db_rows(store_url, "SELECT value FROM meta WHERE key = 'ledger_at'") == [("300.0",)]
