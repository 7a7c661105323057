"""The rollups' fold in parts: batches between parts, a crash between (or in) parts, a
takeover while a fold is in flight, and the writer interleaving parts with batches."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from agent.simulate import FleetSimulator
from collector.ingest.reader import StopUnit, Unit
from collector.ingest.validate import Ingestor, sample_row
from collector.ingest.writer import Writer, WriterItem
from collector.paths import PgTarget, StoreTarget, parse_target
from collector.store import partials
from collector.store.db import SampleRow, Store
from collector.store.rollups import STAGE_SQL, RollupConfig
from shared.clock import FakeClock
from shared.errors import StoreError
from shared.schema import encode
from tests.collector.store.test_rollups import _all, _same, other_url
from tests.helpers import db_rows

__all__ = ["other_url"]  # the fixture, shared with test_rollups

T0 = 1_800_000_000.0 - 1_800_000_000 % 3600
NODES = 24


def _batches(ticks: int, *, nodes: int = NODES) -> list[list[SampleRow]]:
    """A tick of every node per batch, 5 s apart; two GPUs each."""
    sim = FleetSimulator(nodes, gpus_per_node=2, seed=11, interval_s=5)
    out = []
    for k in range(ticks):
        samples = (sim.sample(i, T0 + 5 * k, k) for i in range(nodes))
        out.append([sample_row(s, encode(s), T0 + 5 * k + 1) for s in samples])
    return out


async def _one_fold(db: StoreTarget, batches: Iterable[Sequence[SampleRow]]) -> None:
    """The reference: every batch stored, then one fold in one transaction (one shard)."""
    async with Store(db, rollups=RollupConfig(stage_shards=1)) as store:
        for b in batches:
            await store.write_batch(b)
        assert await store.fold_rollups() > 0


async def test_a_fold_in_parts_with_batches_between_them_equals_one_fold(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """Batches committed between a fold's parts (new samples, late ones, duplicates of
    samples the fold is folding) end in the same rollups as all folded at once."""
    batches = _batches(6)
    late = [r._replace(ts_ms=r.ts_ms - 3_600_000) for r in batches[5][::3]]  # an hour before
    between = [batches[2], batches[0][:10], late, batches[3], batches[4], batches[5]]
    await _one_fold(other_url, [*batches, late])
    async with Store(store_url, rollups=RollupConfig(stage_shards=8, shard_nodes=1)) as store:
        await store.write_batch(batches[0])
        await store.write_batch(batches[1])
        fold = store.rollup_fold()
        assert fold is not None
        parts = 0
        while await fold.write(store):
            parts += 1
            if between:
                await store.write_batch(between.pop(0))
            assert store.folding
        assert not store.folding
        assert parts >= 6  # the opening part and one per shard: batches went between them
        assert fold.samples >= 2 * NODES  # and what was staged before each part
        await store.fold_rollups()
        assert store.pending_rollups == 0
    _same(_all(store_url), _all(other_url))
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]


async def test_a_store_abandoned_between_parts_folds_the_rest_exactly_once(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A collector that stops between two parts (a crash at a commit boundary): the next
    store takes back only the shards not folded yet, and the rollups come out exact."""
    batches = _batches(4)
    await _one_fold(other_url, batches)
    config = RollupConfig(stage_shards=8, shard_nodes=1)
    async with Store(store_url, rollups=config) as store:
        for b in batches[:3]:
            await store.write_batch(b)
        fold = store.rollup_fold()
        assert fold is not None
        for _ in range(4):  # the opening part and three shards
            assert await fold.write(store)
        left = store.pending_rollups
        assert 0 < left < 3 * NODES
    async with Store(store_url, rollups=config) as store:
        assert store.pending_rollups == left  # what the folded shards held is gone
        await store.write_batch(batches[3])
        await store.write_batch(batches[1])  # redelivered: duplicates
        assert await store.fold_rollups() == left + NODES
    _same(_all(store_url), _all(other_url))
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]


_CHILD = """
import asyncio, sys
from collector.paths import parse_target
from collector.store.db import Store
from collector.store.rollups import RollupConfig
from tests.collector.store.test_fold import _batches

async def main():
    config = RollupConfig(stage_shards=16, shard_nodes=1)
    async with Store(parse_target(sys.argv[1]), rollups=config) as s:
        for b in _batches(3, nodes=200):
            await s.write_batch(b)
        print("staged", flush=True)
        while True:  # fold after fold, part after part, until killed
            fold = s.rollup_fold()
            while await fold.write(s):
                print("part", flush=True)
            await s.write_batch(_batches(4, nodes=200)[3])  # then duplicates: nothing new

asyncio.run(main())
"""


_REPO = Path(__file__).resolve().parents[3]


def _start(target: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    cmd = [sys.executable, "-c", _CHILD, target]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=_REPO, env=env)


@pytest.mark.parametrize("after_parts", [2, 9])
async def test_a_collector_killed_in_the_middle_of_a_fold_loses_and_doubles_nothing(
    store_url: StoreTarget, other_url: StoreTarget, after_parts: int
) -> None:
    """SIGKILL of a process folding part after part (between parts or inside one): the
    store opened again folds what was left, and the rollups are exact."""
    await _one_fold(other_url, _batches(4, nodes=200))
    child = _start(str(store_url))
    assert child.stdout is not None
    try:
        lines = (line for line in child.stdout if line in (b"staged\n", b"part\n"))
        assert next(lines) == b"staged\n"
        for _ in range(after_parts):
            assert next(lines) == b"part\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    async with Store(store_url, rollups=RollupConfig(stage_shards=16, shard_nodes=1)) as store:
        await store.write_batch(_batches(4, nodes=200)[3])  # whether or not the child did
        await store.fold_rollups()
    _same(_all(store_url), _all(other_url))
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]


@pytest.mark.integration
async def test_a_takeover_while_the_owner_is_in_the_middle_of_a_fold_counts_each_sample_once(
    postgres_url: str, other_url: StoreTarget
) -> None:
    """A share group's member silent past the bound with a fold half done: another takes
    over its rows left; when it goes on with its parts it folds only what it still owns."""
    target = parse_target(postgres_url)
    batches = _batches(4)
    config = RollupConfig(stage_shards=8, shard_nodes=1, takeover_after_s=600.0)
    await _one_fold(other_url, batches)
    async with (
        Store(target, rollups=config, stage_owner="a") as a,
        Store(target, rollups=config, stage_owner="b") as b,
    ):
        await a.write_batch(batches[0])
        await a.write_batch(batches[1])
        await b.write_batch(batches[2])
        slow = a.rollup_fold()
        assert slow is not None
        for _ in range(3):
            assert await slow.write(a)
        left = a.pending_rollups
        assert await b.fold_rollups(time.time() + 601) == left + NODES
        assert b.rollups_taken_over == left
        while await slow.write(a):
            pass
        assert slow.samples < 2 * NODES - left + 1  # its first parts only
        await a.write_batch(batches[3])
        assert await a.fold_rollups() == NODES
    _same(_all(target), _all(other_url))
    assert db_rows(target, "SELECT count(*) FROM rollup_stage") == [(0,)]


class _Link:
    """Acks a unit by queueing the next one (so a unit arrives during each part), noting
    whether the store had a fold in flight then."""

    def __init__(self, queue: asyncio.Queue[WriterItem], then: list[WriterItem]) -> None:
        self._queue, self._then = queue, then
        self.store: Store | None = None
        self.folding: list[bool] = []

    def ack(self, packet_ids: Iterable[int]) -> None:
        del packet_ids
        assert self.store is not None
        self.folding.append(self.store.folding)
        if self._then:
            self._queue.put_nowait(self._then.pop(0))

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


async def test_the_writer_commits_batches_between_the_parts_of_its_fold(tmp_path: Path) -> None:
    """The writer queues the fold as a record: the units that arrive meanwhile are stored
    and acknowledged between its parts, not after the whole fold; at its stop nothing is
    left staged, and the rollups are those of one fold."""
    db, ref = tmp_path / "c.db", tmp_path / "ref.db"
    batches = _batches(12)
    await _one_fold(ref, batches)
    queue: asyncio.Queue[WriterItem] = asyncio.Queue()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    then: list[WriterItem] = []
    link = _Link(queue, then)
    then += [Unit(link, list(b), [k]) for k, b in enumerate(batches[2:], 1)]
    then.append(StopUnit(done))
    async with Store(db, rollups=RollupConfig(stage_shards=8, shard_nodes=1)) as store:
        link.store = store
        await store.write_batch(batches[0])
        await store.write_batch(batches[1])
        clock = FakeClock(start_wall=T0)
        writer = Writer(store, queue, Ingestor(clock), clock, retention_s=1e9)
        queue.put_nowait(then.pop(0))
        await asyncio.wait_for(writer.run(), 20)
    assert len(link.folding) == 10
    assert sum(link.folding) >= 4  # acked while the fold was in flight: between its parts
    assert db_rows(db, "SELECT count(*) FROM rollup_stage") == [(0,)]
    _same(_all(db), _all(ref))


@pytest.mark.parametrize("shards", [1, 8])
async def test_a_staged_batch_whose_commit_reply_was_lost_is_folded_once(
    store_url: StoreTarget, other_url: StoreTarget, shards: int
) -> None:
    """PostgreSQL can commit a batch and lose the reply (the connection cut then): the writer
    retries, the samples are duplicates, and the first attempt's stage rows are unknown to
    the stage. They keep their own number (the next batch does not reuse it) and the next
    fold folds them, once, with the batches it knows."""
    a, b, c = _batches(3)
    await _one_fold(other_url, [a, b, c])
    async with Store(store_url, rollups=RollupConfig(stage_shards=shards, shard_nodes=1)) as store:
        stage = store._stage
        assert stage is not None
        await store.write_batch(a)
        # Batch b's attempt: its stage rows committed, the reply lost (never `committed`).
        _, lost = stage.rows(stage.split(partials.stage(b, stage.config.busy_util_pct)))
        await store.transact("the lost attempt", lambda tx: tx.insert_many(STAGE_SQL, lost))
        await store.write_batch(c)
        await store.fold_rollups()
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]
    _same(_all(store_url), _all(other_url))


def test_node_ranges_are_contiguous_balanced_and_take_unknown_names_in_order() -> None:
    """Shards are ranges of names in the rollups' key order (a part writes neighbouring
    rows): every name of shard k sorts before every name of shard k + 1, the ranges hold
    equal numbers of the names they were built from, a name they were not built from lands
    in the range that holds it, and fewer names make fewer shards."""
    names = [f"gpu{i:04d}.rack{i % 7}" for i in range(640)]
    ranges = partials.NodeRanges.from_names(reversed(names), 8, 64)
    assert ranges.count == 8
    ids = ranges.shards(names).tolist()
    by_shard: dict[int, list[str]] = {}
    for name, k in zip(names, ids, strict=True):
        by_shard.setdefault(k, []).append(name)
    assert sorted(by_shard) == list(range(8))
    assert {len(v) for v in by_shard.values()} == {80}
    for k in range(7):
        assert max(by_shard[k]) < min(by_shard[k + 1])
    new = ["a-first", "gpu0100.zz", "gpu0479.rack0x", "zz-last"]
    assert ranges.shards(new).tolist() == [0, 1, 5, 7]
    assert ranges.shards(new).tolist() == [0, 1, 5, 7]  # remembered, the same
    assert partials.NodeRanges.from_names(names[:200], 8, 64).count == 3
    assert partials.NodeRanges.from_names([], 8, 64).count == 1
    assert not ranges.outdated(set(names[:600]))
    assert ranges.outdated(set(names[:500]))  # a tenth of the nodes gone
    assert ranges.outdated({*names, "gpu9999"})  # a node it does not know


def test_a_batchs_split_keeps_each_sample_with_its_own_values_and_gpus() -> None:
    """A batch staged and split by shard: each piece holds its samples in the batch's
    order, each with its own time stamp, values (unreported ones NaN) and GPU rows, however
    many GPUs each sample has; the pieces together are the batch."""
    sim = FleetSimulator(NODES, gpus_per_node=2, seed=5, interval_s=5)
    rows = []
    for k in range(3):
        for i in reversed(range(NODES)):  # not in the names' order
            row = sample_row(sim.sample(i, T0 + 5 * k, k), b"", T0 + 5 * k + 1)
            gpus = (i + k) % 4  # 0 to 3 GPUs: rows of different lengths
            packed = np.arange(gpus * 5, dtype="<f4") + 1000 * i + 100 * k
            rows.append(
                row._replace(
                    gpu_stats=packed.tobytes(),
                    gpu_util_pct=None if i % 3 == 0 else float(i),
                )
            )
    staged = partials.stage(rows, 80.0)
    unreported = [r.gpu_util_pct is None for r in rows]
    assert np.isnan(staged.values[:, 2]).tolist() == unreported  # NaN
    ranges = partials.NodeRanges.from_names(sim.node_ids, 4, 4)
    pieces = staged.split(ranges)
    assert [k for k, _ in pieces] == [0, 1, 2, 3]
    ids = ranges.shards(staged.nodes)
    for k, piece in pieces:
        at = np.flatnonzero(ids == k)  # the batch's samples of this shard, in order
        assert piece.nodes == [staged.nodes[i] for i in at]
        assert piece.ts_ms.tolist() == staged.ts_ms[at].tolist()
        np.testing.assert_array_equal(piece.values, staged.values[at])
        assert piece.gpu_counts.tolist() == staged.gpu_counts[at].tolist()
        first = np.cumsum(staged.gpu_counts, dtype=np.int64) - staged.gpu_counts
        own = [staged.gpus[first[i] : first[i] + staged.gpu_counts[i]] for i in at]
        np.testing.assert_array_equal(piece.gpus, np.concatenate(own))
        assert piece.busy_util_pct == 80.0
    assert sum(len(p) for _, p in pieces) == len(rows)


def test_node_ranges_of_a_flood_of_names_are_chosen_from_a_sample() -> None:
    """A flood of made-up node names (a hostile node can name any node in its topics):
    the bounds come from a sample of :data:`~collector.store.partials.RANGE_NAMES` of them,
    not from sorting them all on the event loop at every fold, and still split the names
    into ranges of near-equal size."""
    names = {f"x{i:07d}c0s0b0n{i % 4}" for i in range(4 * partials.RANGE_NAMES)}
    ranges = partials.NodeRanges.from_names(names, 128)
    assert len(ranges.names) == partials.RANGE_NAMES
    assert ranges.outdated(names)  # past the sample: built again, without comparing them all
    sizes = np.bincount(ranges.shards(sorted(names)), minlength=128)
    assert ranges.count == 128
    assert sizes.min() > 0.7 * len(names) / 128
    assert sizes.max() < 1.3 * len(names) / 128


async def test_ranges_that_move_between_folds_count_every_sample_once(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A store's first ranges come from the nodes it knows; when new nodes come, the next
    fold builds them again and a node's samples then sit in two shards: each is folded
    once, the rollups those of one fold."""
    old, grown = _batches(4, nodes=24), _batches(4, nodes=48)
    everything = [*old[:2], *grown[2:]]
    await _one_fold(other_url, everything)
    config = RollupConfig(stage_shards=8, shard_nodes=1)
    async with Store(store_url, rollups=config) as store:
        await store.write_batch(old[0], (), sorted({r.node for r in old[0]}))  # as the writer
        assert await store.fold_rollups() == 24
    async with Store(store_url, rollups=config) as store:  # ranges from the 24 nodes known
        stage = store._stage
        assert stage is not None
        first = stage._ranges
        assert first.count == 8
        assert len(first.names) == 24
        await store.write_batch(old[1])
        await store.write_batch(grown[2])  # 24 new nodes, staged in the old ranges
        fold = store.rollup_fold()  # the ranges built again: 48 nodes
        assert fold is not None
        assert stage._ranges is not first
        assert len(stage._ranges.names) == 48
        known = sorted(first.names)
        moved = first.shards(known) != stage._ranges.shards(known)
        assert moved.sum() >= 8  # their samples in two shards
        await store.write_batch(grown[3])  # staged in the new ranges
        while await fold.write(store):
            pass
        await store.fold_rollups()
        assert store.pending_rollups == 0
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]
    _same(_all(store_url), _all(other_url))


class _LosesCommitReply:
    """A TCP proxy in front of PostgreSQL (loopback) that, once :attr:`armed`, forwards the
    server's bytes until a ``COMMIT``'s CommandComplete and cuts both connections there
    instead (`the protocol's messages
    <https://www.postgresql.org/docs/current/protocol-message-formats.html>`_): the
    transaction committed, its client never hears so (the network cut at that instant)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self.armed = False
        self.cut = 0
        self._transports: list[asyncio.BaseTransport] = []
        self._handlers: list[asyncio.Task[None]] = []
        self.port = 0

    async def __aenter__(self) -> _LosesCommitReply:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for t in self._transports:
            t.abort()  # type: ignore[attr-defined]
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._upstream)
        both = [client_w.transport, server_w.transport]
        self._transports += both

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
            while data := await src.read(65536):
                if down and self.armed and b"C\x00\x00\x00\x0bCOMMIT\x00" in data:
                    self.armed, self.cut = False, self.cut + 1
                    for t in both:
                        t.abort()
                    return
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pipe(client_r, server_w, False), pipe(server_r, client_w, True), return_exceptions=True
        )


@pytest.mark.integration
async def test_a_takeover_whose_commit_reply_was_lost_folds_the_adopted_rows_once(
    postgres_url: str, other_url: StoreTarget
) -> None:
    """The first part of a fold takes over a quiet member's rows and commits, and the reply
    is lost (the connection cut then): the writer reconnects and writes the part again,
    which finds nothing more to take. The adopted rows are this collector's now, under
    numbers its stage never learnt: its next batches must not be staged under the same
    numbers (a part deletes a number it folded, and the adopted row with it, unfolded)."""
    target = parse_target(postgres_url)
    assert isinstance(target, PgTarget)
    batches = _batches(5)
    await _one_fold(other_url, batches)
    config = RollupConfig(stage_shards=1, takeover_after_s=600.0)
    port = int(target.url.rsplit(":", 1)[1].split("/", 1)[0])
    async with _LosesCommitReply(port) as proxy:
        via = parse_target(target.url.replace(f":{port}/", f":{proxy.port}/"))
        async with Store(target, rollups=config, stage_owner="b") as b:
            await b.write_batch(batches[0])
            await b.write_batch(batches[1])
        async with Store(via, rollups=config, stage_owner="a") as a:
            await a.write_batch(batches[2])
            fold = a.rollup_fold(time.time() + 601)
            assert fold is not None
            proxy.armed = True
            with pytest.raises(StoreError) as lost:
                await fold.write(a)  # the takeover: committed, its reply lost
            assert lost.value.unavailable
            assert proxy.cut == 1
            await a.reconnect()  # as the writer does (Writer._durably), then again
            assert await fold.write(a)
            await a.write_batch(batches[3])  # between the parts
            await a.write_batch(batches[4])
            while await fold.write(a):
                pass
            await a.fold_rollups()
    assert db_rows(target, "SELECT count(*) FROM rollup_stage") == [(0,)]
    _same(_all(target), _all(other_url))


async def test_a_lost_attempts_rows_in_a_range_no_batch_stages_in_any_more_are_folded(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A lost attempt (its rows committed, the reply lost) staged its samples in the ranges
    of then: when the fleet then shrinks, the ranges are built again, fewer, and no batch
    is staged in some of those shards any more. The next fold still folds those rows, once
    (not only the next start of the collector)."""
    a, b, *rest = _batches(5)
    first = sorted({r.node for r in a})[:6]
    rest = [[r for r in batch if r.node in first] for batch in rest]
    await _one_fold(other_url, [a, b, *rest])
    config = RollupConfig(stage_shards=8, shard_nodes=3)
    async with Store(store_url, rollups=config) as store:
        stage = store._stage
        assert stage is not None
        await store.write_batch(a)
        assert stage._ranges.count == 8
        await store.fold_rollups()
        # Batch b's attempt: its stage rows committed, the reply lost (never `committed`).
        _, lost = stage.rows(stage.split(partials.stage(b, stage.config.busy_util_pct)))
        await store.transact("the lost attempt", lambda tx: tx.insert_many(STAGE_SQL, lost))
        for batch in rest:  # six nodes left: two ranges at the next fold
            await store.write_batch(batch)
            await store.fold_rollups()
        assert stage._ranges.count == 2
        assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(0,)]
    _same(_all(store_url), _all(other_url))


async def test_a_staged_row_this_version_cannot_read_does_not_stop_the_folds(
    store_url: StoreTarget, other_url: StoreTarget
) -> None:
    """A row of this collector's stage that this version cannot read (staged by another
    version) stays unrolled, as the start says (``rollup_stage_unreadable``): the folds of
    its shard go on, every other sample folded once."""
    a, b = _batches(2)
    await _one_fold(other_url, [a, b])
    config = RollupConfig(stage_shards=8, shard_nodes=1)
    async with Store(store_url, rollups=config) as store:
        stage = store._stage
        assert stage is not None
        await store.write_batch(a)
        shards = sorted(stage._shards)
        bad = [(stage.owner, 10**6, k, b"not a staged batch") for k in shards]
        await store.transact("another version's rows", lambda tx: tx.insert_many(STAGE_SQL, bad))
    async with Store(store_url, rollups=config) as store:  # read back: a's rows, not those
        await store.write_batch(b)
        assert await store.fold_rollups() == 2 * NODES
    assert db_rows(store_url, "SELECT count(*) FROM rollup_stage") == [(len(shards),)]
    _same(_all(store_url), _all(other_url))


async def test_a_fold_by_ranges_of_names_is_exact_whatever_the_databases_collation(
    collated_store_url: StoreTarget, tmp_path: Path
) -> None:
    """Names that a language's collation orders otherwise than bytes (``gpu_2`` < ``gpu-10``
    < ``GPU-3`` in en-US): the shards, ranges of names in Python's order, fold in parts to
    the rollups of one fold (SQLite's, the reference), and every bucket in the shard its
    node's range says."""
    names = [f"{p}{s}" for p in ("gpu-", "gpu_", "GPU-", "gpu.", "g") for s in ("1", "10", "2a")]
    batches = [
        [r._replace(node=names[i % len(names)]) for i, r in enumerate(b)]
        for b in _batches(4, nodes=len(names))
    ]
    reference = tmp_path / "reference.db"
    await _one_fold(reference, batches)
    config = RollupConfig(stage_shards=5, shard_nodes=1)
    async with Store(collated_store_url, rollups=config) as store:
        await store.write_batch(batches[0], (), sorted(names))
        await store.fold_rollups()
    async with Store(collated_store_url, rollups=config) as store:  # ranges from the store
        stage = store._stage
        assert stage is not None
        assert stage._ranges.count == 5
        for b in batches[1:]:
            await store.write_batch(b)
        fold = store.rollup_fold()
        assert fold is not None
        while await fold.write(store):
            pass
        assert fold.parts == 6
    _same(_all(collated_store_url), _all(reference))
