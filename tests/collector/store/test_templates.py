"""Payload templates live as long as the samples that name them: retention deletes the ones
no stored sample can name, never one that a stored sample (or the next batch) still needs,
on both backends and with several collectors on one PostgreSQL store.

The clock is a fake: each sample's arrival (``received_ms``) and the retention cutoff are
computed from ``now``, as the writer computes them from its clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import psycopg
import pytest

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget, parse_target
from collector.store.codec import pack_sample
from collector.store.db import TEMPLATE_MARGIN_MS, TEMPLATE_USES_EVERY_MS, SampleRow, Store
from collector.store.reader import StoreReader
from collector.store.writes import MAX_ROWS_PER_STATEMENT
from shared.errors import StoreError
from shared.schema import decode_sample
from tests.helpers import db_rows, wait_until

_T0 = 1.8e9
_RETENTION_S = 600.0
_N0, _N1 = (FleetSimulator(2, seed=5).node_ids[i] for i in range(2))


def _sample(t: float, k: int, *, node: int = 0, mem: int | None = None) -> SampleRow:
    """Node ``node``'s sample at ``t`` (arrived then); ``mem``: its memory total, a field of
    its template (another value: another template)."""
    s = FleetSimulator(node + 1, gpus_per_node=2, seed=5, interval_s=5).sample(node, t, k)
    if mem is not None:
        s = msgspec.structs.replace(s, mem=msgspec.structs.replace(s.mem, total_bytes=mem))
    return sample_row(s, pack_sample(s), t)


async def _retention(store: Store, now: float) -> None:
    """What the writer's retention does at ``now``: samples first, then the templates."""
    cutoff_ms = round((now - _RETENTION_S) * 1000)
    while await store.delete_older_than(cutoff_ms, 5):
        pass
    while await store.delete_unused_templates(cutoff_ms, 5):
        pass


def _read_back(db: StoreTarget) -> dict[tuple[str, int], int]:
    """Every stored sample, decoded (a missing template raises): its memory total."""
    with StoreReader(db) as reader:
        rows = reader.fetchall("SELECT node, ts_ms, payload, payload_dict FROM samples")
        return {
            (r["node"], r["ts_ms"]): decode_sample(
                reader.payload(r["payload"], r["payload_dict"])
            ).mem.total_bytes
            for r in rows
        }


def _templates(db: StoreTarget) -> int:
    return int(db_rows(db, "SELECT count(*) FROM payload_templates")[0][0])


async def test_a_churning_node_leaves_templates_only_within_the_retention(
    store_url: StoreTarget,
) -> None:
    """A node whose constants change at every sample (a hostile one) writes a template per
    sample; retention deletes those no sample arrived with for the retention and its
    margin, so the table stays bounded while every stored sample still reads back."""
    step_s = 300.0
    keep = int((_RETENTION_S * 1000 + TEMPLATE_MARGIN_MS) // (step_s * 1000)) + 2
    async with Store(store_url) as store:
        for k in range(3 * keep):
            now = _T0 + k * step_s
            await store.write_batch([_sample(now, k, mem=1 << 30 | k)])
            await store.write_template_uses(round(now * 1000))
            await _retention(store, now)
            assert _templates(store_url) <= keep, k
            window = range(max(0, k - int(_RETENTION_S // step_s)), k + 1)
            assert _read_back(store_url) == {
                (_N0, round((_T0 + i * step_s) * 1000)): 1 << 30 | i for i in window
            }
    assert _templates(store_url) == keep - 1


async def test_a_template_in_use_survives_retention_without_its_uses_written_back(
    store_url: StoreTarget,
) -> None:
    """A node that sends the same constants for hours keeps its one template through any
    number of retentions, even when no use is ever written back (a collector that crashes
    each time before it would): a batch that names a template whose use the store has not
    known to be recent writes that use in its own transaction. Another node churns, so
    the steady node's template is not the newest (which is always kept)."""
    step_s, per_life = 400.0, 6  # a store's life: 40 min, past the uses it may trust
    for k in range(10):
        async with Store(store_url) as store:  # a restart: the uses not written back lost
            for j in range(per_life):
                i = k * per_life + j
                t = _T0 + i * step_s
                await store.write_batch([_sample(t, i, mem=5), _sample(t, i, node=1, mem=i)])
                await _retention(store, t)
                got = _read_back(store_url)  # every stored sample reads back
                assert got[(_N0, round(t * 1000))] == 5, i
                assert got[(_N1, round(t * 1000))] == i, i
    assert _templates(store_url) < 30  # node 1's went with their samples


async def test_uses_are_written_back_every_few_minutes(store_url: StoreTarget) -> None:
    """A template named from memory at every batch: each write-back (at most every
    TEMPLATE_USES_EVERY_MS) moves its row's used_ms to its latest use; in between, nothing
    is written."""
    step_s = 30.0
    written = 0
    async with Store(store_url) as store:
        for k in range(120):
            now = _T0 + k * step_s
            await store.write_batch([_sample(now, k)])
            written += await store.write_template_uses(round(now * 1000))
            (used,) = db_rows(store_url, "SELECT used_ms FROM payload_templates")[0]
            assert used >= round(now * 1000) - TEMPLATE_USES_EVERY_MS, k
    per_write = TEMPLATE_USES_EVERY_MS // round(step_s * 1000)
    assert written == -(-120 // per_write)  # one id per write-back, none more often


async def test_batches_name_each_nodes_template_as_it_changes_and_back(
    store_url: StoreTarget,
) -> None:
    """A batch whose nodes all send their last batch's templates names them from memory
    (no template hashed); a node that changes its constants, changes them back, or sends
    two sets in one batch has each sample name its own: every sample reads back."""
    mems = [(3, 7), (3, 7), (4, 7), (3, 7), (3, 8), (4, 8), (4, 8)]
    want: dict[tuple[str, int], int] = {}
    async with Store(store_url) as store:
        for k, (m0, m1) in enumerate(mems):
            t = _T0 + 10 * k
            batch = [_sample(t, k, mem=m0), _sample(t, k, node=1, mem=m1)]
            if k == 4:  # node 0 twice, its constants changed between
                batch.append(_sample(t + 5, k, mem=4))
            await store.write_batch(batch)
            want.update({(r.node, r.ts_ms): m for r, m in zip(batch, (m0, m1, 4), strict=False)})
    assert _read_back(store_url) == want
    assert _templates(store_url) == 4


async def test_a_template_deleted_while_remembered_is_stored_again(store_url: StoreTarget) -> None:
    """This store's own retention deletes a template it remembers (its node away for longer
    than the retention); when the node comes back with the same constants, the batch
    stores the template again, and the sample reads back."""
    async with Store(store_url) as store:
        await store.write_batch([_sample(_T0, 0, mem=3)])
        later = _T0 + _RETENTION_S + TEMPLATE_MARGIN_MS / 1000 + 60
        await store.write_batch([_sample(later - 30, 1, node=1, mem=4)])  # newer template
        await _retention(store, later)
        assert _read_back(store_url) == {(_N1, round((later - 30) * 1000)): 4}
        assert _templates(store_url) == 1
        await store.write_batch([_sample(later, 2, mem=3)])
    assert _read_back(store_url) == {
        (_N1, round((later - 30) * 1000)): 4,
        (_N0, round(later * 1000)): 3,
    }


@pytest.mark.integration
async def test_a_template_another_collector_deleted_is_stored_again(postgres_url: str) -> None:
    """Two collectors of a share group on one PostgreSQL store: A stored a node's template
    and remembers it; the node goes quiet for longer than the retention; B's retention
    deletes the template; the node's next sample comes to A with the same constants: A
    stores the template again instead of naming the deleted id, and the sample reads back."""
    target = parse_target(postgres_url)
    later = _T0 + _RETENTION_S + TEMPLATE_MARGIN_MS / 1000 + 60
    async with Store(target, stage_owner="a") as a, Store(target, stage_owner="b") as b:
        await a.write_batch([_sample(_T0, 0, mem=3)])
        await b.write_batch([_sample(later - 30, 1, node=1, mem=4)])
        await a.write_template_uses(round(later * 1000))
        await b.write_template_uses(round(later * 1000))
        await _retention(b, later)
        assert _templates(target) == 1
        await a.write_batch([_sample(later, 2, mem=3)])
    assert _read_back(target) == {
        (_N1, round((later - 30) * 1000)): 4,
        (_N0, round(later * 1000)): 3,
    }


async def test_a_late_sample_and_a_duplicate_read_back_after_template_retention(
    tmp_path: Path,
) -> None:
    """A sample replayed after an outage (its own time old, its arrival now) whose template
    retention had deleted, and a duplicate of a stored sample, both read back."""
    db = tmp_path / "c.db"
    async with Store(db) as store:
        await store.write_batch([_sample(_T0, 0, mem=3)])
        later = _T0 + _RETENTION_S + TEMPLATE_MARGIN_MS / 1000 + 60
        await store.write_batch([_sample(later, 1, node=1, mem=4)])
        await _retention(store, later)
        late = _sample(_T0 + 5, 9, mem=3)._replace(received_ms=round(later * 1000))
        assert await store.write_batch([late]) == 1
        assert await store.write_batch([late]) == 0  # a duplicate
        await _retention(store, later)
    assert _read_back(db) == {
        (_N1, round(later * 1000)): 4,
        (_N0, late.ts_ms): 3,
    }


async def test_the_newest_template_is_kept_so_its_id_is_never_given_again(
    store_url: StoreTarget,
) -> None:
    """Retention keeps the newest template however old: SQLite would give the largest id
    to the next template inserted, and a reader that cached that id would read the old
    body for the new one."""
    async with Store(store_url) as store:
        await store.write_batch([_sample(_T0, 0, mem=1), _sample(_T0, 0, node=1, mem=2)])
        later = _T0 + _RETENTION_S + TEMPLATE_MARGIN_MS / 1000 + 60
        await _retention(store, later)
        (newest,) = db_rows(store_url, "SELECT id FROM payload_templates")[0]
        await store.write_batch([_sample(later, 1, mem=3)])
    ids = [r[0] for r in db_rows(store_url, "SELECT id FROM payload_templates ORDER BY id")]
    assert ids[0] == newest
    assert ids[1] > newest
    assert _read_back(store_url) == {(_N0, round(later * 1000)): 3}


@pytest.mark.integration
async def test_a_uses_write_back_locks_rows_in_the_batches_order(postgres_url: str) -> None:
    """Two collectors of a share group: a batch's upsert locks its templates' rows in sha256
    order; the other collector's write-back of uses must take them in that order too, not in
    id order, or the two deadlock (PostgreSQL then aborts one: a second lost). Here a second
    connection holds the row with the smaller sha256 and the larger id, as a batch would,
    while B writes its uses back; then it takes the other row, as that batch would next."""
    target = parse_target(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as pg:
        # As with thousands of templates: the planner reads the rows through the primary
        # key, in id order (a seq scan of this small table would meet them by position).
        db = pg.execute("SELECT current_database()").fetchall()[0][0]
        pg.execute(f'ALTER DATABASE "{db}" SET enable_seqscan = off')
        pg.execute(f'ALTER DATABASE "{db}" SET enable_bitmapscan = off')
    async with Store(target, stage_owner="a") as a, Store(target, stage_owner="b") as b:
        await a.write_batch([_sample(_T0, 0, mem=3)])
        ((small, first_sha),) = db_rows(target, "SELECT id, sha256 FROM payload_templates")
        mem = 4
        while True:  # a later template (larger id) whose sha256 sorts first
            await a.write_batch([_sample(_T0 + mem, mem, node=1, mem=mem)])
            ((large, sha),) = db_rows(
                target, "SELECT id, sha256 FROM payload_templates ORDER BY id DESC LIMIT 1"
            )
            if sha < first_sha:
                break
            mem += 1
            assert mem < 64
        t = _T0 + 100
        for k in (100, 101):  # looked up, then named from memory: a use to write back
            await b.write_batch([_sample(t + k, k, mem=3), _sample(t + k, k, node=1, mem=mem)])
        t += 101
        assert await _write_back_beside_a_batch(postgres_url, b, t, large, small) == 2


@pytest.mark.integration
async def test_a_write_back_of_more_uses_than_a_statement_takes_keeps_the_batches_order(
    postgres_url: str,
) -> None:
    """A fleet of thousands of nodes names thousands of templates (one per node) between two
    write-backs, more than one statement takes (``MAX_ROWS_PER_STATEMENT``): the write-back's
    statements must take their rows in sha256 order across statements too, not each its own
    slice of ids, or a batch of another collector (sha256 order) deadlocks with it. Here a
    second connection holds a row of the second slice of ids, as a batch would, then takes
    a row of the first slice whose sha256 sorts after it."""
    target = parse_target(postgres_url)
    n = MAX_ROWS_PER_STATEMENT + 50
    async with Store(target, stage_owner="a") as a, Store(target, stage_owner="b") as b:
        # Made over time (a batch stores its new ones in sha256 order, so ids follow it
        # within a batch, not across them): the last ones in a later batch.
        made = [_sample(_T0 + k, k, mem=1000 + k) for k in range(n)]
        await a.write_batch(made[:MAX_ROWS_PER_STATEMENT])
        await a.write_batch(made[MAX_ROWS_PER_STATEMENT:])
        t = _T0 + n
        for k in (100, 101):  # looked up, then named from memory: uses to write back
            await b.write_batch([_sample(t + k + j / 1e4, k, mem=1000 + j) for j in range(n)])
        t += 101
        ids = sorted(db_rows(target, "SELECT id, sha256 FROM payload_templates"))
        assert len(ids) == n
        first, second = ids[:MAX_ROWS_PER_STATEMENT], ids[MAX_ROWS_PER_STATEMENT:]
        held, held_sha = min(second, key=lambda r: r[1])
        later = next(i for i, sha in first if sha > held_sha)
        assert await _write_back_beside_a_batch(postgres_url, b, t, held, later) == n


async def _write_back_beside_a_batch(
    url: str, store: Store, t: float, first: int, then: int
) -> int:
    """``store`` writes its template uses back (at ``t``) while another connection, as a
    batch's upsert would, holds template ``first`` and then takes ``then``; return what the
    write-back wrote. A write-back locking in another order than the batch deadlocks."""
    with psycopg.connect(url) as batch, psycopg.connect(url) as watch:
        batch.execute("SET lock_timeout = '10s'")
        batch.execute("UPDATE payload_templates SET used_ms = used_ms WHERE id = %s", (first,))
        uses = asyncio.create_task(store.write_template_uses(round((t + 1) * 1000)))

        def waiting() -> bool:
            rows = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchall()
            watch.commit()
            return bool(rows[0][0])

        await wait_until(waiting, what="the write-back waiting for a row lock")
        await asyncio.to_thread(
            batch.execute, "UPDATE payload_templates SET used_ms = used_ms WHERE id = %s", (then,)
        )
        batch.commit()
        return await uses


async def test_a_rolled_back_batch_leaves_no_nodes_template_remembered(tmp_path: Path) -> None:
    """A batch that stored a node's new template and was rolled back: the node's next
    batch with that template stores it again, never naming the rolled-back id (SQLite
    gives it to the next template inserted: a sample naming it would read another's body)."""
    db = tmp_path / "c.db"
    async with Store(db) as store:
        await store.write_batch([_sample(_T0, 0, mem=3)])  # node 0's template remembered
        changed = _sample(_T0 + 5, 1, mem=4)  # its constants changed: a new template
        broken = _sample(_T0 + 5, 1, node=1, mem=9)._replace(node=None)  # type: ignore[arg-type]
        with pytest.raises(StoreError):  # NOT NULL refuses it: the batch is rolled back
            await store.write_batch([changed, broken])
        await store.write_batch([_sample(_T0 + 10, 2, node=1, mem=5)])  # the freed id
        again = _sample(_T0 + 15, 3, mem=4)
        await store.write_batch([again])
        await store.write_batch([_sample(_T0 + 20, 4, mem=4)])  # named from memory
    assert _read_back(db) == {
        (_N0, round(_T0 * 1000)): 3,
        (_N1, round((_T0 + 10) * 1000)): 5,
        (_N0, again.ts_ms): 4,
        (_N0, round((_T0 + 20) * 1000)): 4,
    }
