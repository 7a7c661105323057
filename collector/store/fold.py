"""A store's staged samples and their fold into the rollups (:mod:`collector.store.rollups`).

:class:`Stage` keeps what one collector staged and has not folded yet: the batches
(:class:`~collector.store.partials.Staged`), numbered (``rollup_stage.seq``) so that it
knows which of its rows are still its own. :meth:`Stage.fold` turns them into partial
buckets (:func:`~collector.store.partials.buckets`, in a worker thread, before the
transaction), then, in one transaction under the fold lock: reads the packed GPUs of the
buckets already stored, merges, writes them back (:data:`~collector.store.rollups.UPSERT_SQL`),
marks their hours for the usage ledger, deletes the rows it folded and records its fold
(``rollup_owners``).

Several collectors may write one PostgreSQL store (a share group), each staging under its
own name. One that stops for good leaves its rows: the next fold of another collector, once
that owner's last fold (or start) is older than :attr:`RollupConfig.takeover_after_s
<collector.store.rollups.RollupConfig.takeover_after_s>`, folds them too, deletes them and
forgets the owner; :attr:`Stage.taken_over` counts their samples. The lock serialises it
with the owner's own folds and start (which records itself first): a collector that comes
back after its rows were taken reads none back. One that was only slow (its rows taken while
it ran) finds at its next fold which of its numbered batches it still owns, and folds only
those: every sample is folded once, by whoever took its row.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from collector.store.partials import Buckets, Staged, buckets, merge
from collector.store.rollups import (
    CLAIM_STAGE_SQL,
    CLEAR_STAGE_SQL,
    FOLDED_SQL,
    FOREIGN_SQL,
    FORGET_SQL,
    HOUR,
    MARK_HOURS_SQL,
    ORPHANS_SQL,
    OWNED_SQL,
    SEEN_SQL,
    STAGED_SQL,
    UPSERT_SQL,
    RollupConfig,
    stored_sql,
)
from collector.store.writes import Writes
from shared.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["FoldStore", "Stage"]

log = get_logger("store")

_KEYS_PER_READ: Final = 2000
"""Stored buckets read per statement (three parameters each, within SQLite's limit)."""


class FoldStore(Writes, Protocol):
    """What a fold needs of its store (:class:`collector.store.db.Store`)."""

    @property
    def max_variables(self) -> int: ...

    @property
    def nan_is_null(self) -> bool: ...

    async def lock_fold(self) -> None: ...

    async def fetch_tuples(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    async def insert_array(
        self, statement: tuple[str, int, str], rows: npt.NDArray[np.object_]
    ) -> None: ...


class Stage:
    """One collector's staged samples (``owner``: its MQTT session client id) and their
    fold; see the module docstring."""

    def __init__(self, owner: str, config: RollupConfig) -> None:
        self.owner = owner
        self.config = config
        self.pending = 0
        """Samples staged and not folded yet."""
        self.taken_over = 0
        """Samples of other collectors' stages this one folded (their owners gone quiet)."""
        self._batches: list[tuple[int, Staged]] = []
        """The staged batches by number (0: staged before batches were numbered)."""
        self._seq = 1
        self._recorded = -math.inf
        """When this collector last recorded a fold (or its start) in the store."""

    def row(self, staged: Staged) -> tuple[str, int, bytes]:
        """The ``rollup_stage`` row of a batch (:data:`~collector.store.rollups.STAGE_SQL`)."""
        return (self.owner, self._seq, staged.encode())

    def committed(self, staged: Staged) -> None:
        """The batch's transaction committed: the next fold counts it."""
        self._batches.append((self._seq, staged))
        self._seq += 1
        self.pending += len(staged)

    async def read_back(self, store: FoldStore, now: float) -> None:
        """Take back the samples this collector staged and did not fold before it stopped
        (and those staged before stages had owners); record its start."""
        async with store.transaction("taking back the staged samples"):
            await store.lock_fold()  # after a takeover of these rows, or before it
            await store.execute(CLAIM_STAGE_SQL, (self.owner,))
            await store.execute(FOLDED_SQL, (self.owner, now))
            rows = await store.fetchall(STAGED_SQL, (self.owner,))
        self._recorded = now
        for seq, body in rows:
            try:
                self._batches.append((int(seq), Staged.decode(body, self.config.busy_util_pct)))
            except ValueError as exc:  # not this version's: those samples stay unrolled
                log.error("rollup_stage_unreadable", error=str(exc))
        self._seq = max((int(r[0]) for r in rows), default=0) + 1
        self.pending = sum(len(b) for _, b in self._batches)
        if self._batches:
            log.info("rollup_stage_restored", samples=self.pending)

    async def fold(self, store: FoldStore, now: float) -> int:
        """Fold the staged samples (and those of owners gone quiet) into the rollups, in one
        transaction; return how many samples that was."""
        batches = list(self._batches)
        if not batches and not await self._should_look(store, now):
            return 0
        new = await asyncio.to_thread(buckets, [b for _, b in batches])
        async with store.transaction("folding rollups"):
            await store.lock_fold()  # before reading the buckets it will write back
            owned = {int(r[0]) for r in await store.fetchall(OWNED_SQL, (self.owner,))}
            mine = [b for seq, b in batches if seq in owned]
            taken = await self._orphans(store, now)
            theirs = [b for _, staged in taken for b in staged]
            if len(mine) < len(batches) or theirs:
                new = await asyncio.to_thread(buckets, mine + theirs)
            if len(new.keys):
                await _write(store, new)
            await store.execute(CLEAR_STAGE_SQL, (self.owner,))
            for owner, _ in taken:
                await store.execute(CLEAR_STAGE_SQL, (owner,))
                await store.execute(FORGET_SQL, (owner,))
            await store.execute(FOLDED_SQL, (self.owner, now))
        self._recorded = now
        del self._batches[: len(batches)]
        self.pending -= sum(len(b) for _, b in batches)
        if len(mine) < len(batches):
            log.warning("rollup_stage_taken_by_another", batches=len(batches) - len(mine))
        mine_n, theirs_n = sum(map(len, mine)), sum(map(len, theirs))
        if taken:
            self.taken_over += theirs_n
            log.warning("rollup_stage_taken_over", owners=[o for o, _ in taken], samples=theirs_n)
        return mine_n + theirs_n

    async def _should_look(self, store: FoldStore, now: float) -> bool:
        """With nothing of its own staged: whether to fold anyway, to record that this
        collector is alive (now and then) or to take over another's rows."""
        if now - self._recorded >= self.config.takeover_after_s / 4:
            return True
        return bool(await store.fetchall(FOREIGN_SQL, (self.owner,)))

    async def _orphans(self, store: FoldStore, now: float) -> list[tuple[str, list[Staged]]]:
        """The staged batches of the owners that have not folded since the cutoff (an owner
        first seen with rows counts from now), by owner; an owner with a row this version
        cannot read is left to itself."""
        await store.execute(SEEN_SQL, (now,))
        cutoff = now - self.config.takeover_after_s
        owners = [str(r[0]) for r in await store.fetchall(ORPHANS_SQL, (self.owner, cutoff))]
        out: list[tuple[str, list[Staged]]] = []
        for owner in owners:
            rows = await store.fetchall(STAGED_SQL, (owner,))
            try:
                staged = [Staged.decode(body, self.config.busy_util_pct) for _, body in rows]
            except ValueError as exc:
                log.error("rollup_stage_unreadable", owner=owner, error=str(exc))
                continue
            out.append((owner, staged))
        return out


async def _write(store: FoldStore, new: Buckets) -> None:
    """Merge ``new`` into the stored buckets of its keys and write them back; mark their
    hours for the usage ledger (in the caller's transaction)."""
    keys = [(new.names[k[0]], k[1], k[2]) for k in new.keys.tolist()]
    stored: list[Any] = []
    per = max(1, min(_KEYS_PER_READ, store.max_variables // 3))
    for i in range(0, len(keys), per):
        chunk = keys[i : i + per]
        stored += await store.fetch_tuples(stored_sql(len(chunk)), [v for k in chunk for v in k])
    nan_is_null = store.nan_is_null
    rows = await asyncio.to_thread(lambda: merge(new, stored).rows(nan_is_null=nan_is_null))
    await store.insert_array(UPSERT_SQL, rows)
    hours = sorted({k[2] for k in keys if k[1] == HOUR})
    await store.insert_many(MARK_HOURS_SQL, [(h, 1) for h in hours])
