"""A store's staged samples and their fold into the rollups (:mod:`collector.store.rollups`),
in parts: one short transaction each.

:class:`Stage` keeps what one collector staged and has not folded yet: each batch's new
samples (:class:`~collector.store.partials.Staged`) split in shards by ranges of node
names (:class:`~collector.store.partials.NodeRanges`: a part then writes neighbouring rows
of the rollups), a ``rollup_stage`` row per shard present, the
batches numbered (``rollup_stage.seq``) so that it knows which of its rows are still its
own. A :class:`Fold` is written in parts (the writer's record protocol: it queues the fold
and stores sample batches between the parts). The first part takes over what owners gone
quiet left (below) and records the fold; then one part per shard: the shard's pieces become
partial buckets (:func:`~collector.store.partials.buckets`, in a worker thread, started as
soon as the part before committed, so it runs while the writer stores a batch), then, in one
transaction under the fold lock: the numbers of the shard's rows it still owns are read
back, the buckets already stored under its keys read, merged, written back
(:data:`~collector.store.rollups.UPSERT_SQL`), their hours marked for the usage ledger, and
the shard's rows it folded deleted, by their numbers (a batch staged since waits for the
next fold). A row of its own the stage does not know (an attempt whose commit reached the
server and whose reply was lost, retried as another: :meth:`Stage.rows`) is folded with
them.

So each part is atomic on its own, and nothing records progress: a crash (or a stop)
between two parts leaves the shards not folded yet staged, read back by the next store and
folded once; the shards folded are gone from the stage. A late sample or a duplicate is
what it was (its own bucket; a duplicate is not staged). One fold is in flight at a time
(:attr:`Stage.folding`); one whose part failed is resumed at the next, from that part.
:meth:`Stage.fold_all` writes every part at once (the writer's stop, the CLI, tests).

Why shards at staging rather than ranges of nodes chosen at the fold, with a progress row
written in each part's transaction: with a progress row, a fold interrupted by a crash must
be finished, from its row, before any new batch is folded (else a second crash re-reads the
first fold's rows filtered by the second fold's progress, and counts a range twice), and a
takeover must adopt another's progress with its rows. Shards make every part stand alone,
at the cost of a row per shard present at staging (``bench/bench_rollups.py --part cost``:
the split and its rows are part of the staging it measures). The shards are still ranges
of names (:class:`~collector.store.partials.NodeRanges`), chosen from the names the stage
sees: a part rewrites neighbouring rows of the rollups (keyed by node first), where a hash
of the name made every part touch pages all over the table. At the default 128 shards, a
fold of 100,000 samples at 12,500 8-GPU nodes is 129 transactions of ~98 nodes' buckets;
``bench/bench_rollups.py --part parts`` (2-core machine, load ~1.9): parts median
4.3-4.4 ms, longest 14-17 ms, summing 696-697 ms, the fold in one transaction 704-1,002 ms
(by hash, before: median 5.3 ms, longest 19-21, sum 970-985).

Several collectors may write one PostgreSQL store (a share group), each staging under its
own name. One that stops for good leaves its rows: the first part of another's fold, once
that owner's last fold (or start) is older than :attr:`RollupConfig.takeover_after_s
<collector.store.rollups.RollupConfig.takeover_after_s>`, adopts them (they become its own,
renumbered after its own batches: :data:`~collector.store.rollups.ADOPT_SQL`) and forgets
the owner, then folds them with its own; :attr:`Stage.taken_over` counts their samples. The
lock (taken in every part's transaction) serialises this with the owner's own parts and
start (which records itself first): a collector that comes back after its rows were taken
reads none back. One that was only slow (its rows taken while it ran, even between two
parts of its fold) finds, in each part, which of the shard's numbered batches it still
owns, and folds only those: every sample is folded once, by whoever holds its row.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import numpy as np

from collector.store.dialect import Dialect
from collector.store.partials import Buckets, NodeRanges, Staged, buckets, merge
from collector.store.rollups import (
    ADOPT_SQL,
    CLAIM_STAGE_SQL,
    FOLDED_SQL,
    FOREIGN_SQL,
    FORGET_SQL,
    HOUR,
    KNOWN_NODES_SQL,
    LOST_STAGE_SQL,
    MARK_HOURS_SQL,
    OWNED_SQL,
    SEEN_SQL,
    SHARDS_SQL,
    STAGED_SQL,
    UPSERT_SQL,
    RollupConfig,
    clear_stage_sql,
    orphans_sql,
    stored_sql,
)
from collector.store.writes import Tx, Writes, statement_rows
from shared.logging import get_logger

__all__ = ["Fold", "FoldStore", "Stage"]

log = get_logger("store")

_KEYS_PER_READ: Final = 2000
"""Stored buckets read per statement (three parameters each, within SQLite's limit)."""


class FoldStore(Writes, Protocol):
    """What a fold needs of its store (:class:`collector.store.db.Store`)."""

    async def lock_fold(self) -> None: ...

    @property
    def dialect(self) -> Dialect:
        """Which backend the store is (statements that differ)."""
        ...


class Stage:
    """One collector's staged samples (``owner``: its MQTT session client id) and their
    fold; see the module docstring."""

    def __init__(self, owner: str, config: RollupConfig) -> None:
        self.owner = owner
        self.config = config
        self.pending = 0
        """Samples staged and not folded yet."""
        self.taken_over = 0
        """Samples of other collectors' stages this one took over (their owners gone quiet)."""
        self.over_reported = 0
        """Buckets written whose node reported more seconds than any honest node can
        (:attr:`Fold.flooded`), since this stage began."""
        self._shards: dict[int, list[tuple[int, Staged]]] = {}
        """The staged samples by shard: each batch's piece with the batch's number (0:
        staged before batches were numbered), in that order."""
        self._seq = 1
        self._recorded = -math.inf
        """When this collector last recorded a fold (or its start) in the store."""
        self.folding: Fold | None = None
        """The fold in flight: one at a time (resumed where it stopped after a failed part)."""
        self._ranges = self._ranges_of(())
        """The shards' ranges of node names (built from the nodes known at :meth:`read_back`,
        again at a fold when those staged since differ)."""
        self._seen: set[str] = set()
        """The names staged since the ranges were last looked at."""
        self._unreadable: set[tuple[int, int]] = set()
        """The (shard, number) of its rows :meth:`read_back` could not read: they stay
        unrolled, and a part passes over them (not a lost attempt's)."""

    def split(self, staged: Staged) -> list[tuple[int, Staged]]:
        """A batch's new samples by shard, as :meth:`rows` and :meth:`committed` take them."""
        if not self._ranges.names and len(staged):  # a new store: ranges from its first batch
            self._ranges = self._ranges_of(staged.nodes)
        return staged.split(self._ranges)

    def _ranges_of(self, names: Iterable[str]) -> NodeRanges:
        return NodeRanges.from_names(names, self.config.stage_shards, self.config.shard_nodes)

    def rows(
        self, pieces: Sequence[tuple[int, Staged]]
    ) -> tuple[int, list[tuple[str, int, int, bytes]]]:
        """A number for one attempt at staging a batch, and its ``rollup_stage`` rows
        (:data:`~collector.store.rollups.STAGE_SQL`). Each attempt its own number: an attempt
        whose commit reached the server but whose reply was lost (PostgreSQL, the connection
        cut then) is retried as unavailable, and its rows, unknown here, must not share a
        number with a batch this stage knows (a part deletes the numbers it folded; it folds
        such a row too, :meth:`_fold_shard`)."""
        seq = self._seq
        self._seq += 1
        return seq, [(self.owner, seq, k, piece.encode()) for k, piece in pieces]

    def committed(self, seq: int, pieces: Sequence[tuple[int, Staged]]) -> None:
        """The batch staged as ``seq`` committed: the next fold counts it."""
        for k, piece in pieces:
            self._shards.setdefault(k, []).append((seq, piece))
            self.pending += len(piece)
            self._seen.update(piece.nodes)

    async def read_back(self, store: FoldStore, now: float) -> None:
        """Take back the samples this collector staged and did not fold before it stopped
        (and those staged before stages had owners); record its start."""
        async with store.transaction("taking back the staged samples"):
            await store.lock_fold()  # after a takeover of these rows, or before it
            await store.execute(CLAIM_STAGE_SQL, (self.owner,))
            await store.execute(FOLDED_SQL, (self.owner, now))
            rows = await store.fetchall(STAGED_SQL, (self.owner,))
            known = await store.fetchall(KNOWN_NODES_SQL)
        self._ranges = self._ranges_of(str(r[0]) for r in known)
        self._recorded = now
        for seq, shard, body in rows:
            try:
                staged = Staged.decode(body, self.config.busy_util_pct)
            except ValueError as exc:  # not this version's: those samples stay unrolled
                log.error("rollup_stage_unreadable", error=str(exc))
                self._unreadable.add((int(shard), int(seq)))
                continue
            self._shards.setdefault(int(shard), []).append((int(seq), staged))
            self.pending += len(staged)
        self._seq = max((int(r[0]) for r in rows), default=0) + 1
        if self.pending:
            log.info("rollup_stage_restored", samples=self.pending)

    def fold(self, now: float) -> Fold:
        """The fold in flight, or a new one as of ``now`` (Unix s): write it part by part."""
        if self.folding is None:
            if self._seen and self._ranges.outdated(self._seen):
                self._ranges = self._ranges_of(self._seen)
            self._seen = set()
            self.folding = Fold(self, now)
        return self.folding

    async def fold_all(self, store: FoldStore, now: float) -> int:
        """Finish the fold in flight, then fold everything staged (and what owners gone
        quiet left), part after part; return how many samples that was."""
        folded = 0
        for _ in range(2 if self.folding is not None else 1):
            fold = self.fold(now)
            while await fold.write(store):
                pass
            folded += fold.samples
        return folded

    async def _should_look(self, store: FoldStore, now: float) -> bool:
        """With nothing of its own staged: whether to fold anyway, to record that this
        collector is alive (now and then) or to take over another's rows."""
        if now - self._recorded >= self.config.takeover_after_s / 4:
            return True
        return bool(await store.fetchall(FOREIGN_SQL, (self.owner,)))

    async def _open(self, store: FoldStore, now: float) -> set[int]:
        """A fold's first part: take over the staged rows of the owners that have not folded
        since the cutoff (an owner first seen with rows counts from now) and record this
        fold. Their rows become this collector's, numbered after its own, and are folded
        with them; an owner with a row this version cannot read is left to itself. Return
        the shards this collector has rows in (a lost attempt's too, :meth:`rows`)."""
        taken: list[tuple[str, int, list[tuple[int, int, Staged]]]] = []
        seq = self._seq
        try:
            async with store.transaction("taking over staged rollups"):
                await store.lock_fold()
                await store.execute(SEEN_SQL, (now,))
                cutoff = now - self.config.takeover_after_s
                orphans = await store.fetchall(orphans_sql(store.dialect), (self.owner, cutoff))
                for owner in (str(r[0]) for r in orphans):
                    rows = await store.fetchall(STAGED_SQL, (owner,))
                    try:
                        busy = self.config.busy_util_pct
                        pieces = [(int(s), int(k), Staged.decode(b, busy)) for s, k, b in rows]
                    except ValueError as exc:
                        log.error("rollup_stage_unreadable", owner=owner, error=str(exc))
                        continue
                    await store.execute(ADOPT_SQL, (self.owner, seq, owner))
                    await store.execute(FORGET_SQL, (owner,))
                    taken.append((owner, seq, pieces))
                    seq += max((s for s, _, _ in pieces), default=0) + 1
                await store.execute(FOLDED_SQL, (self.owner, now))
                shards = {int(r[0]) for r in await store.fetchall(SHARDS_SQL, (self.owner,))}
        finally:
            # Each attempt its own numbers, as rows(): one whose commit reached the server
            # and whose reply was lost adopted rows under them, which this stage does not
            # know (its parts fold them as a lost attempt's); a batch staged next must not
            # reuse them (a part deletes a number it folded, such a row with it).
            self._seq = seq
        self._recorded = now
        for owner, offset, pieces in taken:
            for s, k, piece in pieces:
                self._shards.setdefault(k, []).append((s + offset, piece))
            samples = sum(len(piece) for _, _, piece in pieces)
            self.pending += samples
            self.taken_over += samples
            log.warning("rollup_stage_taken_over", owner=owner, samples=samples)
        return shards

    async def _fold_shard(
        self,
        store: FoldStore,
        now: float,
        shard: int,
        pieces: list[tuple[int, Staged]],
        new: Buckets,
    ) -> tuple[int, Buckets]:
        """One part: fold ``pieces`` (``new``: their buckets) of ``shard`` into the rollups
        and delete their rows, in one transaction; return how many samples that was, and
        the buckets written (:attr:`Buckets.held <collector.store.partials.Buckets.held>`
        and ``flooded`` say which were held to their length)."""
        owner, busy = self.owner, self.config.busy_util_pct
        known = {seq for seq, _ in self._shards.get(shard, ())}
        known |= {seq for k, seq in self._unreadable if k == shard}

        def fold(tx: Tx) -> tuple[list[Staged], Buckets]:
            tx.lock_fold()  # before reading the buckets it will write back
            owned = {int(r[0]) for r in tx.fetchall(OWNED_SQL, (owner, shard))}
            mine = [piece for seq, piece in pieces if seq in owned]
            folded = [seq for seq, _ in pieces if seq in owned]
            whole = len(mine) == len(pieces)
            # Rows of this owner no batch here knows: an attempt committed whose reply was
            # lost (see rows()). Their samples are stored (the retry found them duplicates):
            # fold them now.
            for seq in sorted(owned - known):
                for body in tx.fetchall(LOST_STAGE_SQL, (owner, shard, seq)):
                    mine.append(Staged.decode(body[0], busy))
                    whole = False
                folded.append(seq)
            made = new if whole else buckets(mine)
            if len(made.keys):
                made = _write(tx, made)
            per = max(1, tx.max_variables - 2)
            for i in range(0, len(folded), per):
                chunk = folded[i : i + per]
                tx.execute(clear_stage_sql(len(chunk)), (owner, shard, *chunk))
            tx.execute(FOLDED_SQL, (owner, now))
            return mine, made

        mine, made = await store.transact("folding rollups", fold)
        self._recorded = now
        done = {id(piece) for _, piece in pieces}
        left = [p for p in self._shards.get(shard, ()) if id(p[1]) not in done]
        if left:
            self._shards[shard] = left
        else:
            self._shards.pop(shard, None)
        self.pending -= sum(len(piece) for _, piece in pieces)
        if len(mine) < len(pieces):
            log.warning("rollup_stage_taken_by_another", batches=len(pieces) - len(mine))
        return sum(map(len, mine)), made


class Fold:
    """One fold of a :class:`Stage`, written in parts, one short transaction each: the
    writer's :class:`~collector.ingest.writer.Record` protocol (:meth:`write` returns true
    while parts remain). The first part takes over what owners gone quiet left; then one
    part per shard. Each shard's arithmetic (:func:`~collector.store.partials.buckets`)
    runs in a worker thread as soon as the part before it committed, while the writer
    stores the next batch: the part then only awaits it, reads the stored buckets, merges
    and writes."""

    name: Final = "rollups"

    def __init__(self, stage: Stage, now: float) -> None:
        self._stage = stage
        self.now = now
        self.samples = 0
        """Samples folded so far."""
        self.parts = 0
        """Transactions written so far."""
        self.held = 0
        """Buckets written so far that were held to their length (their samples reported
        more seconds than they span: an honest node's jitter, by a fraction of an interval,
        or a node that over-reports)."""
        self.flooded: dict[str, float] = {}
        """The nodes, among those, that reported more than any honest node can (the
        bucket's length plus the longest interval the schema allows), with the most seconds
        one of their buckets reported: logged once, when the fold ends."""
        self._todo: list[int] | None = None
        """The shards left to fold (``None``: the first part is next)."""
        self._next: tuple[int, list[tuple[int, Staged]], asyncio.Future[Buckets]] | None = None
        """The next shard's pieces and their buckets (being) made in a worker thread."""

    async def write(self, store: FoldStore) -> bool:
        """Write the next part; return whether parts remain."""
        stage = self._stage
        if self._todo is None:
            if not stage.pending and not await stage._should_look(store, self.now):
                return self._finish()
            stored = await stage._open(store, self.now)
            self._todo = sorted(stored | {k for k, held in stage._shards.items() if held})
        else:
            shard, pieces, made = self._next or self._prepare()
            try:
                new = await made
                samples, written = await stage._fold_shard(store, self.now, shard, pieces, new)
                self.samples += samples
                self.held += written.held
                stage.over_reported += len(written.flooded)
                for node, _, _, reported in written.flooded:
                    self.flooded[node] = max(reported, self.flooded.get(node, 0.0))
            except BaseException:
                self._next = None  # the buckets merged in a part rolled back: made again
                raise
            self._next = None
            self._todo.pop(0)
        self.parts += 1
        if not self._todo:
            return self._finish()
        self._next = self._prepare()
        return True

    def _prepare(self) -> tuple[int, list[tuple[int, Staged]], asyncio.Future[Buckets]]:
        """The next shard's pieces now, their buckets started in a worker thread."""
        assert self._todo
        shard = self._todo[0]
        pieces = list(self._stage._shards.get(shard, ()))
        loop = asyncio.get_running_loop()
        return shard, pieces, loop.run_in_executor(None, buckets, [p for _, p in pieces])

    def _finish(self) -> bool:
        if self._stage.folding is self:
            self._stage.folding = None
        if self.flooded:
            worst = sorted(self.flooded.items(), key=lambda kv: -kv[1])[:10]
            log.warning(
                "rollup_buckets_held",
                buckets=self.held,
                nodes=len(self.flooded),
                reported_s={node: round(s) for node, s in worst},
                hint="these nodes' samples report more seconds than they span "
                "(interval_s); their rollups are held to each bucket's length",
            )
        return False


def _write(tx: Tx, new: Buckets) -> Buckets:
    """Merge ``new`` into the stored buckets of its keys and write them back (return them);
    mark their hours for the usage ledger (in ``tx``, the store's thread: the merge's numpy
    too)."""
    keys = np.empty(new.keys.shape, object)  # (node, res, bucket): parameters, no tuples
    keys[:, 0] = np.array(new.names, object)[new.keys[:, 0]]
    keys[:, 1:] = new.keys[:, 1:]
    stored: list[Any] = []
    per = max(1, min(_KEYS_PER_READ, tx.max_variables // 3))
    for i, n in statement_rows(len(keys), per):  # a few sizes, each parsed once
        stored += tx.fetch_tuples(stored_sql(n), keys[i : i + n].ravel().tolist())
    hours = np.unique(new.keys[new.keys[:, 1] == HOUR, 2]).tolist()
    merged = merge(new, stored)
    tx.insert_array(UPSERT_SQL, merged.rows(nan_is_null=tx.nan_is_null))
    tx.insert_many(MARK_HOURS_SQL, [(h, 1) for h in hours])
    return merged
