"""Rollups written with the samples: values, duplicates, late samples, restarts, retention."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from collector.counters import value
from collector.ingest.reader import StopUnit
from collector.ingest.validate import Ingestor, sample_row
from collector.ingest.writer import Writer, WriterItem
from collector.paths import StoreTarget, parse_target
from collector.store.db import SampleRow, Store
from collector.store.partials import buckets, decode_gpus, gpu_minutes, gpu_steps, stage
from collector.store.reader import StoreReader
from collector.store.rollups import HOUR, MINUTE, RollupConfig, gpu_series, node_series
from shared.clock import FakeClock
from shared.schema import CpuStats, GpuSample, MemStats, Sample, encode
from tests.helpers import db_rows, wait_until

T0 = 1_800_000_000.0 - 1_800_000_000 % 3600  # an hour's start


def _sample(ts: float, utils: tuple[float | None, ...], *, cpu_w: float | None = 200.0) -> Sample:
    gpus = tuple(
        GpuSample(
            index=i,
            uuid=f"GPU-00000000-0000-0000-0000-00000000000{i}",
            util_pct=u,
            power_w=100.0 + i,
            power_interval_w=None if u is None else 300.0 + 10 * i,
            temp_c=50.0 + i,
            mem_used_bytes=1_000 * (i + 1),
        )
        for i, u in enumerate(utils)
    )
    return Sample(
        v=1,
        node="n1",
        ts=ts,
        seq=int(ts),
        interval_s=5.0,
        cpu=CpuStats(count=8, pct=10.0),
        mem=MemStats(total_bytes=10, used_bytes=5, available_bytes=5),
        cpu_power_w=cpu_w,
        gpus=gpus,
    )


def _row(s: Sample) -> SampleRow:
    return sample_row(s, encode(s), s.ts + 0.1)


def _rows() -> list[SampleRow]:
    """Two GPUs, 12 samples in minute 0 and 6 in minute 1; GPU 1 reports no utilisation
    (nor interval power) in every third sample."""
    out = []
    for k in range(18):
        u1 = None if k % 3 == 0 else 5.0 * k
        out.append(_row(_sample(T0 + 5 * k, (80.0, u1), cpu_w=None if k == 7 else 200.0)))
    return out


_others = itertools.count()


@pytest.fixture
def other_url(store_url: StoreTarget, request: pytest.FixtureRequest) -> StoreTarget:
    """A second empty store on ``store_url``'s backend."""
    if isinstance(store_url, Path):
        return store_url.with_name("other.db")
    server = request.getfixturevalue("postgres_server")
    return parse_target(server.create_database(f"rollups_other_{next(_others)}"))


def _all(db: StoreTarget) -> list[tuple[object, ...]]:
    """Every bucket, its packed GPUs unpacked (one row per GPU after the node's), by node
    as bytes (Python's order: rollups keep a PostgreSQL database's own collation)."""
    out: list[tuple[object, ...]] = []
    rows = db_rows(db, "SELECT node, res, bucket, *, gpu_stats FROM rollups")
    for row in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        *node, blob = row[3:]
        out.append(tuple(v for v in node if not isinstance(v, bytes)))
        out += [tuple(g) for g in decode_gpus(blob).tolist()]
    return out


def _same(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> None:
    """Equal rows, sums compared to float rounding (addition in another order); keys and
    counts (integers) exactly."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert [v for v in x if not isinstance(v, float)] == [
            v for v in y if not isinstance(v, float)
        ]
        assert x == pytest.approx(y)


async def _store(
    db: StoreTarget, rows: list[SampleRow], *batches: slice, fold_every: int = 1, fold: bool = True
) -> None:
    """Write ``rows[batch]`` for each batch, folding after every ``fold_every`` batches."""
    async with Store(db, rollups=RollupConfig(busy_util_pct=50.0)) as store:
        for i, b in enumerate(batches or (slice(None),), 1):
            await store.write_batch(rows[b])
            if fold and not i % fold_every:
                await store.fold_rollups()
        if fold:
            await store.fold_rollups()


async def test_minute_and_hour_rollups_hold_counts_means_extremes_and_energy(
    store_url: StoreTarget,
) -> None:
    """A node's minute buckets and its hour hold what its samples said."""
    db = store_url
    await _store(db, _rows())
    with StoreReader(db) as r:
        minutes = r.run(node_series("n1", MINUTE, T0, T0 + 3600))
        hours = r.run(node_series("n1", HOUR, T0, T0 + 3600))
        gpus = r.run(gpu_series("n1", MINUTE, T0, T0 + 120))
    assert [m["t"] for m in minutes] == [T0, T0 + 60]
    assert [m["samples"] for m in minutes] == [12, 6]
    m0 = minutes[0]
    assert m0["seconds"] == 60.0
    # Minute 0: GPU 1 reports 5k for k in 1,2,4,5,7,8,10,11 (not 0,3,6,9).
    u1 = [5.0 * k for k in range(12) if k % 3]
    means = [80.0] * 4 + [(80.0 + u) / 2 for u in u1]
    assert m0["gpu_util_pct"] == pytest.approx(sum(means) / 12)
    assert m0["gpu_util_min_pct"] == 42.5
    assert m0["gpu_util_max_pct"] == 80.0
    # GPU power: interval power when reported, else the instantaneous reading.
    watts = [300.0 + 101.0 if k % 3 == 0 else 300.0 + 310.0 for k in range(12)]
    assert m0["gpu_energy_j"] == pytest.approx(sum(w * 5 for w in watts))
    assert m0["cpu_energy_j"] == pytest.approx(200.0 * 5 * 11)  # sample 7 had no RAPL
    assert m0["gpu_temp_max_c"] == 51.0
    # Busy at >= 50 %: GPU 0 always, GPU 1 at 50, 55 (k 10, 11).
    assert m0["busy_gpu_s"] == pytest.approx((12 + 2) * 5.0)
    (h,) = hours
    assert h["samples"] == 18
    assert h["t"] == T0
    assert h["gpu_energy_j"] == pytest.approx(
        minutes[0]["gpu_energy_j"] + minutes[1]["gpu_energy_j"]
    )
    g1 = next(g for g in gpus if g["gpu"] == 1 and g["t"] == T0)
    assert g1["samples"] == 12
    assert g1["util_pct"] == pytest.approx(sum(u1) / len(u1))
    assert g1["util_min_pct"] == 5.0
    assert g1["util_max_pct"] == 55.0
    assert g1["power_min_w"] == 101.0
    assert g1["power_max_w"] == 310.0
    assert g1["mem_used_bytes"] == 2_000.0


async def test_duplicates_add_nothing(store_url: StoreTarget, other_url: StoreTarget) -> None:
    """Samples delivered again (same node and time stamp) leave every rollup as it was."""
    once, twice = store_url, other_url
    rows = _rows()
    await _store(once, rows)
    await _store(twice, rows, slice(0, 10), slice(5, 18), slice(None), slice(3, 4), fold_every=2)
    assert _all(once) == _all(twice)
    assert db_rows(twice, "SELECT samples FROM rollups WHERE res = 3600") == [(18,)]


async def test_late_samples_land_in_their_buckets_in_any_order(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """Samples stored in any order and any batches give the same rollups as in order."""
    rows = _rows()
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)
    a, b = store_url, other_url
    await _store(a, rows)
    await _store(b, shuffled, *(slice(i, i + 4) for i in range(0, 18, 4)))
    assert len(_all(a)) == 3 + 3 * 2  # 2 minutes and an hour; 2 GPUs in each
    _same(_all(a), _all(b))


async def test_rollups_survive_a_restart_and_a_crash_before_the_fold(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A store closed and opened again goes on merging into the same buckets; samples staged
    but not folded when it stopped (a crash) are folded by the next store, once."""
    rows = _rows()
    whole, halves = other_url, store_url
    await _store(whole, rows)
    await _store(halves, rows[:9])
    await _store(halves, rows, slice(9, 14), fold=False)  # stopped before folding these
    assert db_rows(halves, "SELECT count(*) FROM rollup_stage") == [(1,)]  # one batch
    await _store(halves, rows, slice(5, 18))  # 14..17 new, the rest duplicates
    _same(_all(whole), _all(halves))
    assert db_rows(halves, "SELECT count(*) FROM rollup_stage") == [(0,)]


async def test_no_rollups_without_config(store_url: StoreTarget) -> None:
    """A store opened without a rollup config (rollups off) writes samples only."""
    db = store_url
    async with Store(db) as store:
        assert await store.write_batch(_rows()) == 18
    assert db_rows(db, "SELECT count(*) FROM rollups") == [(0,)]


async def test_folds_mark_their_hours_for_the_ledger(store_url: StoreTarget) -> None:
    """Each fold of new samples counts once on each hour they touched; duplicates do not."""
    db = store_url
    late = _row(_sample(T0 - 10, (10.0,)))
    rows = _rows()
    await _store(db, [*rows, late], slice(0, 10), slice(10, 18), slice(18, 19), slice(0, 5))
    assert db_rows(db, "SELECT hour, n FROM ledger_dirty ORDER BY hour") == [
        (T0 - 3600, 1),
        (T0, 2),
    ]


async def test_rollup_retention_deletes_old_buckets_in_chunks(store_url: StoreTarget) -> None:
    """Buckets of one resolution older than the cutoff go, a chunk at a time; the other
    resolution stays."""
    db = store_url
    async with Store(db, rollups=RollupConfig()) as store:
        await store.write_batch(_rows())
        assert await store.fold_rollups() == 18
        await store.write_batch([_row(_sample(T0 - 60, (10.0,)))])  # the minute before
        assert await store.fold_rollups() == 1
        assert await store.delete_rollups_older_than(MINUTE, T0 + 60, 1) == 1
        assert await store.delete_rollups_older_than(MINUTE, T0 + 60, 10) == 1
        assert await store.delete_rollups_older_than(MINUTE, T0 + 60, 10) == 0
        assert await store.delete_rollups_older_than(HOUR, T0, 10) == 1
    assert db_rows(db, "SELECT res, bucket FROM rollups ORDER BY res") == [
        (MINUTE, T0 + 60),
        (HOUR, T0),
    ]


@pytest.mark.integration
async def test_collectors_sharing_a_store_fold_each_sample_once(postgres_url: str) -> None:
    """Two collectors of a share group write one PostgreSQL store: one that (re)starts while
    the other has samples staged does not fold them too, and a fold leaves the other's
    staged samples for their owner, who takes them back after a crash."""
    target = parse_target(postgres_url)
    rows = _rows()
    config = RollupConfig(busy_util_pct=50.0)
    async with Store(target, rollups=config, stage_owner="a") as a:
        await a.write_batch(rows[:6])  # staged, not folded yet
        async with Store(target, rollups=config, stage_owner="b") as b:  # b starts
            await b.write_batch(rows[6:12])
            assert await b.fold_rollups() == 6  # its own batch only
        # b stops before folding its next batch (a crash): it stays staged for b
        async with Store(target, rollups=config, stage_owner="b") as b:
            await b.write_batch(rows[12:18])
        assert await a.fold_rollups() == 6
    async with Store(target, rollups=config, stage_owner="b") as b:  # b is back
        assert await b.fold_rollups() == 6
    assert db_rows(target, "SELECT samples FROM rollups WHERE res = 3600") == [(18,)]
    assert db_rows(target, "SELECT count(*) FROM rollup_stage") == [(0,)]


@pytest.mark.integration
async def test_two_collectors_folding_the_same_buckets_at_once_keep_every_gpu(
    postgres_url: str,
) -> None:
    """Members of a share group each store part of a node's samples and fold at the same
    moment: the hour's packed GPU statistics hold every sample, not only the last fold's."""
    import psycopg  # noqa: PLC0415

    target = parse_target(postgres_url)
    rows = _rows()
    config = RollupConfig(busy_util_pct=50.0)
    async with (
        Store(target, rollups=config, stage_owner="a") as a,
        Store(target, rollups=config, stage_owner="b") as b,
    ):
        await a.write_batch(rows[0::2])
        await b.write_batch(rows[1::2])
        # Hold both folds at their writes (reads still pass) until both wait, so each has
        # read the buckets before the other wrote them unless the folds are serialised.
        with psycopg.connect(postgres_url) as gate:
            gate.execute("LOCK TABLE rollups IN EXCLUSIVE MODE")
            folds = asyncio.gather(a.fold_rollups(), b.fold_rollups())
            await wait_until(
                lambda: (
                    gate.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    ).fetchone()
                    == (2,)
                ),
                what="both folds waiting",
            )
            gate.commit()
            assert sorted(await folds) == [9, 9]
    with StoreReader(target) as r:
        gpus = r.run(gpu_series("n1", HOUR, T0, T0 + 3600))
    assert db_rows(target, "SELECT samples FROM rollups WHERE res = 3600") == [(18,)]
    assert [g["samples"] for g in gpus] == [18, 18]  # each GPU in every sample


async def test_a_fold_spanning_days_equals_a_fold_per_day(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """Samples days apart folded at once (their node-minutes too far apart to number
    densely) land in the same buckets as folded a day at a time."""
    days = [
        _row(_sample(T0 - d * 86_400 + 5 * k, (10.0 * d + k, None if k % 2 else 30.0)))
        for d in (3, 1, 0)
        for k in range(4)
    ]
    await _store(store_url, days, slice(None))
    await _store(other_url, days, slice(0, 4), slice(4, 8), slice(8, 12))
    _same(_all(store_url), _all(other_url))
    assert db_rows(store_url, "SELECT count(*) FROM rollups WHERE res = 3600") == [(3,)]


async def test_rows_staged_by_the_previous_version_are_folded(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A stage row of version 1 (its busy GPUs and hottest counted when staged) left by a
    crash before the upgrade is read back and folded as this version folds the same
    samples."""
    rows = _rows()
    config = RollupConfig(busy_util_pct=50.0)
    staged = stage(rows, config.busy_util_pct)
    old_values = np.insert(staged.values, [3, 4], 0.0, axis=1)  # busy, hottest: not read
    body = msgspec.msgpack.encode(
        (
            1,
            staged.nodes,
            staged.ts_ms.astype("<i8").tobytes(),
            old_values.astype("<f4").tobytes(),
            staged.gpu_counts.tobytes(),
            staged.gpus.astype("<f4").tobytes(),
        )
    )
    # As the previous version's crash left it (a store without rollups takes nothing back).
    async with Store(store_url) as store, store.transaction("staging a version 1 row"):
        await store.execute("INSERT INTO rollup_stage (owner, body) VALUES ('', ?)", (body,))
    async with Store(store_url, rollups=config) as store:
        assert store.pending_rollups == 18
        assert await store.fold_rollups() == 18
    await _store(other_url, rows)
    _same(_all(store_url), _all(other_url))
    with StoreReader(store_url) as r:
        (hour,) = r.run(node_series("n1", HOUR, T0, T0 + 3600))
    assert hour["busy_gpu_s"] == pytest.approx((18 + 6) * 5.0)  # GPU 0; GPU 1 at 50..85
    assert hour["gpu_temp_max_c"] == 51.0


async def test_a_fold_takes_over_the_stage_of_a_collector_gone_quiet(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A collector that stopped before folding and never came back leaves its staged rows
    to the next collector that folds, once its last fold or start is older than the bound:
    folded once, counted, and none left for it should it come back."""
    rows = _rows()
    config = RollupConfig(busy_util_pct=50.0, takeover_after_s=600.0)
    async with Store(store_url, rollups=config, stage_owner="a") as a:
        await a.write_batch(rows[:9])  # stops before its fold (a crash), for good
    now = time.time()
    async with Store(store_url, rollups=config, stage_owner="b") as b:
        await b.write_batch(rows[9:])
        assert await b.fold_rollups(now) == 9  # a started just now: its rows are its own
        assert b.rollups_taken_over == 0
        assert await b.fold_rollups(now + 601) == 9  # a silent for longer than the bound
        assert b.rollups_taken_over == 9
        assert await b.fold_rollups(now + 1300) == 0
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]
    assert db_rows(store_url, "SELECT owner FROM rollup_owners") == [("b",)]
    await _store(other_url, rows)
    _same(_all(store_url), _all(other_url))
    async with Store(store_url, rollups=config, stage_owner="a") as a:  # back after all
        assert a.pending_rollups == 0
        assert await a.fold_rollups() == 0
    _same(_all(store_url), _all(other_url))


@pytest.mark.integration
async def test_a_collector_whose_stage_was_taken_over_folds_only_what_it_still_owns(
    postgres_url: str,
) -> None:
    """Two collectors of a share group on PostgreSQL: one takes over the other's staged
    rows while that one still runs (silent past the bound); the other's next fold adds only
    the batches staged since, so every sample counts once."""
    target = parse_target(postgres_url)
    rows = _rows()
    config = RollupConfig(busy_util_pct=50.0, takeover_after_s=600.0)
    async with (
        Store(target, rollups=config, stage_owner="a") as a,
        Store(target, rollups=config, stage_owner="b") as b,
    ):
        await a.write_batch(rows[:6])
        await b.write_batch(rows[6:12])
        assert await b.fold_rollups(time.time() + 601) == 12  # its own 6 and a's 6
        assert b.rollups_taken_over == 6
        await a.write_batch(rows[12:])
        assert await a.fold_rollups() == 6  # the batch it staged since, not the one taken
        assert a.pending_rollups == 0
    with StoreReader(target) as r:
        gpus = r.run(gpu_series("n1", HOUR, T0, T0 + 3600))
    assert db_rows(target, "SELECT samples FROM rollups WHERE res = 3600") == [(18,)]
    assert [g["samples"] for g in gpus] == [18, 18]
    assert db_rows(target, "SELECT count(*) FROM rollup_stage") == [(0,)]


@pytest.mark.parametrize("path", ["whole", "parts"])
async def test_the_writer_counts_the_samples_its_folds_take_over(tmp_path: Path, path: str) -> None:
    """The samples a fold took over from a collector gone quiet count in the writer's
    ``rollup_samples_taken_over``: folded whole (the stop's ``fold_rollups``) or part by
    part between batches (the fold queued as a record while the writer runs)."""
    db = tmp_path / "c.db"
    rows = _rows()
    async with Store(db, rollups=RollupConfig(), stage_owner="gone") as gone:
        await gone.write_batch(rows)
    quiet = RollupConfig(takeover_after_s=0.0)  # any owner silent since: gone
    async with Store(db, rollups=quiet, stage_owner="me") as store:
        clock = FakeClock(start_wall=T0)
        queue: asyncio.Queue[WriterItem] = asyncio.Queue()
        writer = Writer(store, queue, Ingestor(clock), clock)
        if path == "whole":
            await writer.fold_rollups()
            await writer.fold_rollups()
        else:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(writer.run(), name="writer")
                # A fold is queued at the writer's start; counted before the stop folds.
                taken = writer.metrics.rollups_taken_over
                await wait_until(lambda: value(taken) == len(rows), what="the takeover counted")
                done = asyncio.get_running_loop().create_future()
                queue.put_nowait(StopUnit(done))
    assert value(writer.metrics.rollups_taken_over) == len(rows)
    assert db_rows(db, "SELECT count(*) FROM rollup_stage") == [(0,)]


def test_gpu_minutes_and_steps_are_what_a_fold_makes_of_raw_samples() -> None:
    """A node's raw samples through ``gpu_minutes`` are the GPU records a fold keeps for
    its minutes, and those through ``gpu_steps`` per hour the fold's hour records."""
    rows = [*_rows(), _row(_sample(T0 + 3600 + 5, (20.0, 40.0)))]  # and the next hour
    fold = buckets([stage(rows, 50.0)])
    ts = np.array([r.ts_ms for r in rows])
    intervals = np.array([r.interval_s for r in rows])
    minutes, records = gpu_minutes(ts, intervals, [r.gpu_stats for r in rows])
    stored = fold.gpu_keys[:, 1] == MINUTE
    expected = [T0, T0, T0 + 60, T0 + 60, T0 + 3600, T0 + 3600]  # two GPUs a minute
    assert minutes.tolist() == fold.gpu_keys[stored, 2].tolist() == expected
    np.testing.assert_allclose(records, fold.gpu_values[stored])
    hours, merged = gpu_steps(minutes, records, HOUR)
    assert hours.tolist() == fold.gpu_keys[~stored, 2].tolist()
    np.testing.assert_allclose(merged, fold.gpu_values[~stored])
