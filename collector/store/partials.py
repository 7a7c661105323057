"""Rollup arithmetic: new samples into partial aggregates per bucket, merged by key (numpy).

A *partial* is what a bucket holds of some of its samples: counts and sums add, minima and
maxima compare (NaN: nothing reported). A sample is a partial of one; a minute is the merge
of its samples' partials; an hour the merge of its minutes'; a bucket already stored merges
with new partials the same way. Merging is order-independent (up to float rounding), so a
late sample lands in its own bucket whatever was stored before it.

Everything here works on whole columns (a fold's samples at once), never sample by sample
in Python: a batch of new samples becomes a :class:`Staged` (a few arrays, built in one
pass over the rows), a fold's staged batches become :class:`Buckets` with :func:`buckets`,
and :func:`merge` folds stored buckets in. :func:`buckets` does not sort: each sample gets
the dense id of its node-minute (``node x minutes + minute`` where the fold spans few
minutes), each GPU row that of its node-minute and index, and one ``bincount`` (sums) or
``fmin.at``/``fmax.at`` (extremes) per column adds them up, in key order.

**A node that reports more time than a bucket spans is held to the bucket's length** (or
to the longest interval one of its samples reported, where that is longer: a node sampling
every 20 minutes puts each sample's 20 minutes in the minute of its stamp, whole).
Each sample counts its own ``interval_s`` (the schema allows up to an hour), so a node that
sends many samples claiming long intervals would otherwise fill a minute with hours of
GPU-seconds and energy. After the merge with the stored bucket (:func:`merge`), a bucket
whose samples reported more seconds (``reported_s``, the sum of their intervals) than it
may hold (:func:`_cap`: its length, or ``longest_s``) has its sums over time (:data:`TIMED`:
seconds, GPU-seconds, utilisation-weighted and busy GPU-seconds, GPU, CPU and node energy,
the node power's coverage; and each GPU's energy) scaled by cap / reported: it holds that
much, at the node's reported mean rates. So an hour never holds more than an hour (the
schema's longest interval is one), and a flood fills a minute with at most one sample's
claim. ``reported_s`` keeps what was reported, for the operator and for the next merge,
which takes a held bucket back to its reported sums before adding (so a bucket holds the
same whatever the folds and the order its samples came in). Means (utilisation, power,
temperature: sum / n) count samples, not time, and are not held. A read of raw samples
holds their energy the same way (:func:`gpu_minutes`).

Each resolution is held on its own: a fold's hours are made from its samples' own sums (its
minutes before they are held), never from held minutes. An honest node's samples stamped in
a bucket reach back into the one before by the part of the first interval that lies there,
so they report the bucket's length give or take one interval: such a bucket is untouched,
or loses at most that one interval's share. Measured on a node sampling every 5 s +/- 0.5 s
(intervals the time between samples) over a day, five seeds: the hours lose 0.020-0.027 %
of its time and energy (10-12 of 24 held), the minutes 0.98-1.04 % (about half held).

Per-GPU statistics are packed into their node's bucket (:data:`GPU_COLUMNS`, float32, one
record of :data:`GPU_RECORD_BYTES` per GPU): one row per node and bucket instead of one per
GPU, a quarter of the bytes.

No SQL here: :mod:`collector.store.rollups` reads and writes the rows.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from collector.store.rows import SampleRow
from shared.schema import MAX_INTERVAL_S

__all__ = [
    "FOLDED",
    "GPU_COLUMNS",
    "GPU_RECORD_BYTES",
    "MAX",
    "MIN",
    "NODES_PER_SHARD",
    "NODE_COLUMNS",
    "SUM",
    "TIMED",
    "Buckets",
    "NodeRanges",
    "Staged",
    "buckets",
    "decode_gpus",
    "gpu_minutes",
    "gpu_steps",
    "merge",
    "stage",
]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

SUM, MIN, MAX = 0, 1, 2

NODE_COLUMNS: Final = (
    ("samples", SUM),
    ("seconds", SUM),
    ("gpus", MAX),
    ("gpu_s", SUM),
    ("util_gpu_s", SUM),
    ("busy_gpu_s", SUM),
    ("util_n", SUM),
    ("util_sum", SUM),
    ("util_min", MIN),
    ("util_max", MAX),
    ("power_n", SUM),
    ("power_sum", SUM),
    ("power_min", MIN),
    ("power_max", MAX),
    ("temp_max", MAX),
    ("mem_n", SUM),
    ("mem_sum", SUM),
    ("mem_min", MIN),
    ("mem_max", MAX),
    ("gpu_energy_j", SUM),
    ("cpu_n", SUM),
    ("cpu_sum", SUM),
    ("cpu_min", MIN),
    ("cpu_max", MAX),
    ("cpu_energy_j", SUM),
    ("node_n", SUM),
    ("node_sum", SUM),
    ("node_max", MAX),
    ("node_s", SUM),
    ("node_energy_j", SUM),
    ("reported_s", SUM),
    ("longest_s", MAX),
)
"""A node's bucket: the ``rollups`` columns after its key, and how two partials merge.
``node_*``: the node's input power (BMC/PSU) where it reported it; ``node_s`` the seconds
it covered, ``node_energy_j`` power x interval over them. ``reported_s``: the seconds its
samples reported (the sum of their intervals), of which ``seconds`` is what the bucket
holds (:data:`TIMED`); ``longest_s`` the longest interval one of them reported."""

TIMED: Final = (
    "seconds",
    "gpu_s",
    "util_gpu_s",
    "busy_gpu_s",
    "gpu_energy_j",
    "cpu_energy_j",
    "node_s",
    "node_energy_j",
)
"""The node's sums over time (each sample's value x its interval), held to the bucket's
length (:func:`merge`); with its GPUs' ``energy_j``. ``seconds`` first."""
FOLDED: Final = ("reported_s", "longest_s", *TIMED)
"""The columns the fold merges with the stored bucket itself (:func:`merge`; the others
merge in SQL): ``reported_s`` and ``longest_s`` first, then :data:`TIMED`."""

GPU_COLUMNS: Final = (
    ("gpu", MAX),
    ("util_n", SUM),
    ("util_sum", SUM),
    ("util_min", MIN),
    ("util_max", MAX),
    ("power_n", SUM),
    ("power_sum", SUM),
    ("power_min", MIN),
    ("power_max", MAX),
    ("temp_n", SUM),
    ("temp_sum", SUM),
    ("temp_max", MAX),
    ("mem_n", SUM),
    ("mem_sum", SUM),
    ("mem_max", MAX),
    ("energy_j", SUM),
)
"""One GPU's record in its node's bucket (``rollups.gpu_stats``: little-endian float32,
these values in this order, GPUs by index). float32 holds a count exactly up to 2^24 and a
sum to ~7 digits: finer than the sensors. A GPU's samples are the most of its counts."""

GPU_RECORD_BYTES: Final = 4 * len(GPU_COLUMNS)
_GPU_DTYPE: Final = np.dtype("<f4")

_SAMPLE: Final = ("interval_s", "gpus", "util", "power", "mem", "cpu", "node_w")
"""A staged sample's values (:attr:`Staged.values`): a :class:`~collector.store.rows.SampleRow`'s
interval, GPUs, mean utilisation, GPU power, GPU memory, CPU power and node power."""
_PACKED: Final = 5
"""A staged GPU's values: index, utilisation %, power W, temperature C, memory bytes
(:func:`collector.store.rollups.pack_gpus`, float32)."""
_F32: Final = np.dtype("<f4")
_F64: Final = np.dtype("<f8")
_STAGE_VERSION: Final = 2
MINUTE_S: Final = 60
HOUR_S: Final = 3600


def _ops(spec: Sequence[tuple[str, int]]) -> tuple[list[int], list[int], list[int]]:
    return tuple([i for i, (_, op) in enumerate(spec) if op == k] for k in (SUM, MIN, MAX))  # type: ignore[return-value]


_NODE_OPS: Final = _ops(NODE_COLUMNS)
_GPU_OPS: Final = _ops(GPU_COLUMNS)
_GPU_AT: Final = {c: i for i, (c, _) in enumerate(GPU_COLUMNS)}
_NODE_AT: Final = {c: i for i, (c, _) in enumerate(NODE_COLUMNS)}
_TIMED_AT: Final = [_NODE_AT[c] for c in TIMED]
_REPORTED: Final = _NODE_AT["reported_s"]
_LONGEST: Final = _NODE_AT["longest_s"]
_SECONDS: Final = _NODE_AT["seconds"]
_GPU_ENERGY: Final = _GPU_AT["energy_j"]


NODES_PER_SHARD: Final = 64
"""Fewest nodes in one shard of :class:`NodeRanges` (a fold's part writes their buckets):
a small site folds in one part, 12,500 nodes in 128 (the ``[rollups] fold_shards`` default)."""
RANGE_NAMES: Final = 1 << 16
"""Most names :meth:`NodeRanges.from_names` sorts to choose its bounds (a sample of them
beyond): 65,536 sort in ~40 ms."""
_SAMPLER: Final = random.Random(0x5EED)
_CACHED_NAMES: Final = 1 << 18
"""Names :meth:`NodeRanges.shards` remembers beyond those it was built from (new nodes)."""


class NodeRanges:
    """Shards of a store's staged samples as ranges of node names, in the rollups' key
    order (``rollups`` is keyed by node first; SQLite compares text as UTF-8 bytes, the
    order of Python's ``str``; PostgreSQL's ``rollups.node`` keeps the database's collation,
    a growing table's (:data:`~collector.store.migrations.GROWING_TABLES`), whose order may
    differ; the shards are chosen here, never by a range in SQL, so the server's order can
    only make them less neighbouring, never wrong): a fold's part then rewrites neighbouring
    rows of the table, a few pages, where shards by a hash of the name touched pages all
    over it in every part.
    Measured (``bench/bench_rollups.py --part parts``, 100,000 samples of 12,500 8-GPU
    nodes in 128 shards): by hash the parts summed 970-985 ms (median 5.3 ms, longest
    19-21), by range 696-727 ms (median 4.3-4.4, longest 14-17), the fold in one
    transaction 704-1,074 ms.

    Built from the names a collector sees (:meth:`from_names`: the nodes it knows at start,
    then those it staged since a fold, when they change; a new store's, from its first
    batch): ``count`` shards of equal numbers of those names, no fewer than
    :data:`NODES_PER_SHARD` each. A name not among them falls
    in the range that holds it. Ranges may move between folds; a node's samples then sit in
    two shards, and its buckets are merged twice: the merge adds (order-independent), so
    nothing counts twice; only that part costs a little more."""

    __slots__ = ("_bounds", "_of", "count", "names")

    def __init__(self, names: frozenset[str], bounds: list[str]) -> None:
        self.names = names
        """The names the ranges were built from."""
        self._bounds = bounds
        self.count = len(bounds) + 1
        """Shards: ``0 .. count - 1``."""
        self._of: dict[str, int] = {}

    @classmethod
    def from_names(
        cls, names: Iterable[str], most: int, fewest: int = NODES_PER_SHARD
    ) -> NodeRanges:
        """At most ``most`` ranges of equal numbers of ``names``, ``fewest`` names each at
        least. Past :data:`RANGE_NAMES` names, the bounds are those of a random sample of
        that many (a flood of made-up node names then costs ~0.1 s a fold, not seconds of
        sorting on the event loop); the names not in it find their range by bisection."""
        pool = names if isinstance(names, set | frozenset) else set(names)
        if len(pool) > RANGE_NAMES:
            ordered = sorted(_SAMPLER.sample(list(pool), RANGE_NAMES))
            known = frozenset(ordered)
        else:
            known = frozenset(pool)
            ordered = sorted(known)
        count = max(1, min(most, len(ordered) // max(1, fewest)))
        bounds = [ordered[len(ordered) * k // count] for k in range(1, count)]
        ranges = cls(known, bounds)
        k = 0
        for name in ordered:  # sorted: each name's range in one pass
            while k < len(bounds) and bounds[k] <= name:
                k += 1
            ranges._of[name] = k
        return ranges

    def outdated(self, seen: set[str]) -> bool:
        """Whether the names seen since differ enough to build the ranges again: a name
        not among them, or a tenth of them gone (past :data:`RANGE_NAMES`: always, without
        comparing them)."""
        if len(seen) > RANGE_NAMES:
            return True
        return not seen <= self.names or len(seen) < 0.9 * len(self.names)

    def shards(self, nodes: Sequence[str]) -> npt.NDArray[np.int64]:
        """Each name's shard."""
        of = self._of
        out = np.fromiter(map(of.get, nodes, repeat(-1)), np.int64, len(nodes))
        for i in np.flatnonzero(out < 0).tolist():  # names it was not built from
            name = nodes[i]
            out[i] = k = bisect.bisect_right(self._bounds, name)
            if len(of) < len(self.names) + _CACHED_NAMES:
                of[name] = k
        return out


@dataclass(slots=True)
class Staged:
    """New samples (one batch's), as columns, as staged in the store (the samples' values
    float64, the GPUs' float32, as their records keep them), so a fold of samples read back
    after a crash adds exactly what it would have added."""

    nodes: list[str]
    ts_ms: I64
    values: F64
    """One row per sample: :data:`_SAMPLE`."""
    gpu_counts: npt.NDArray[np.uint8]
    gpus: F32
    """One row per GPU of each sample in turn (``gpu_counts`` of them): :data:`_PACKED`."""
    busy_util_pct: float
    """The busy threshold in force when these samples were stored."""

    def __len__(self) -> int:
        return len(self.nodes)

    def encode(self) -> bytes:
        """The bytes staged in the store (read back by :meth:`decode` after a crash): ~240 B
        a sample of 8 GPUs, the arrays' own bytes (no conversion)."""
        return msgspec.msgpack.encode(
            (
                _STAGE_VERSION,
                self.busy_util_pct,
                self.nodes,
                self.ts_ms.astype("<i8", copy=False).tobytes(),
                self.values.tobytes(),
                self.gpu_counts.tobytes(),
                self.gpus.tobytes(),
            )
        )

    @classmethod
    def decode(cls, body: bytes, busy_util_pct: float) -> Staged:
        """What :meth:`encode` wrote (or version 1 wrote: its busy GPUs, counted then, are
        counted again at ``busy_util_pct``); ``ValueError`` if it is not that."""
        try:
            fields = msgspec.msgpack.decode(body)
            version = fields[0]
            if version == 1:
                _, nodes, ts, values, counts, gpus = fields
                old = np.frombuffer(values, _F32).reshape(-1, 9).astype("<f8")
                values = old[:, [0, 1, 2, 4, 6, 7, 8]].tobytes()  # less busy and hottest
            elif version == _STAGE_VERSION:
                _, busy_util_pct, nodes, ts, values, counts, gpus = fields
            else:
                raise ValueError(f"staged rollup batch of version {version!r}")
            return cls(
                list(nodes),
                np.frombuffer(ts, "<i8").astype(np.int64),
                np.frombuffer(values, _F64).reshape(-1, len(_SAMPLE)),
                np.frombuffer(counts, np.uint8),
                np.frombuffer(gpus, _F32).reshape(-1, _PACKED),
                float(busy_util_pct),
            )
        except ValueError:
            raise
        except (msgspec.DecodeError, TypeError, IndexError) as exc:
            raise ValueError(f"unreadable staged rollup batch: {exc}") from exc

    def split(self, ranges: NodeRanges) -> list[tuple[int, Staged]]:
        """The samples by shard (:class:`NodeRanges`: a range of node names each). Each
        shard present, with its samples (in the batch's order) as a :class:`Staged` of its
        own."""
        n = len(self.nodes)
        shards = ranges.count
        if shards <= 1 or n == 0:
            return [(0, self)] if n else []
        shard = ranges.shards(self.nodes)
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(shards + 1)).tolist()
        per = self.gpu_counts.astype(np.int64)
        first = np.cumsum(per) - per  # each sample's first GPU row
        per_o = per[order]
        ends = np.cumsum(per_o)
        rows = np.repeat(first[order] - (ends - per_o), per_o) + np.arange(int(ends[-1]))
        # np.take copies each row whole (a memcpy a row): ~4x faster than indexing by an array
        gpus, gpu_at = np.take(self.gpus, rows, axis=0), [0, *ends.tolist()]
        nodes = [self.nodes[i] for i in order.tolist()]
        ts, values = np.take(self.ts_ms, order), np.take(self.values, order, axis=0)
        counts = np.take(self.gpu_counts, order)
        out: list[tuple[int, Staged]] = []
        for k in range(shards):
            a, b = bounds[k], bounds[k + 1]
            if a < b:
                piece = Staged(
                    nodes[a:b],
                    ts[a:b],
                    values[a:b],
                    counts[a:b],
                    gpus[gpu_at[a] : gpu_at[b]],
                    self.busy_util_pct,
                )
                out.append((k, piece))
        return out


_SAMPLE_FIELDS: Final = [
    SampleRow._fields.index(f)
    for f in (
        "interval_s",
        "gpu_count",
        "gpu_util_pct",
        "gpu_power_w",
        "gpu_mem_used_bytes",
        "cpu_power_w",
        "node_power_w",
    )
]
"""Where a :class:`~collector.store.rows.SampleRow`'s :data:`_SAMPLE` values are among its
fields."""
_NODE, _TS, _GPU_STATS = (SampleRow._fields.index(f) for f in ("node", "ts_ms", "gpu_stats"))


def stage(
    rows: Sequence[SampleRow],
    busy_util_pct: float,
    *,
    fields: Sequence[Sequence[Any]] | None = None,
) -> Staged:
    """New sample rows as columns, with the busy threshold in force now (``fields``: the
    rows' fields as columns, ``list(zip(*rows))``, where the caller has them). Little
    work, on the writer's path: the rows turned into columns in C, one conversion of
    their values, the GPUs' packed bytes joined (the fold does the arithmetic)."""
    n = len(rows)
    if fields is None:
        fields = list(zip(*rows, strict=True)) if n else [() for _ in SampleRow._fields]
    # One pass over the values (None: NaN), without np.array's discovery of their shape.
    values = np.fromiter(
        chain.from_iterable(fields[i] for i in _SAMPLE_FIELDS), _F64, len(_SAMPLE) * n
    ).reshape(len(_SAMPLE), n)
    blobs = fields[_GPU_STATS]
    gpus = np.frombuffer(b"".join(blobs), dtype=_F32).reshape(-1, _PACKED)
    counts = np.fromiter(map(len, blobs), dtype=np.int64, count=n) // (4 * _PACKED)
    ts = np.fromiter(fields[_TS], dtype=np.int64, count=n)
    return Staged(
        list(fields[_NODE]),
        ts,
        np.ascontiguousarray(values.T),
        counts.astype(np.uint8),
        gpus,
        busy_util_pct,
    )


@dataclass(slots=True)
class Buckets:
    """Partials per ``(node, res, bucket)`` and per ``(node, res, bucket, gpu)``; nodes as
    codes into :attr:`names` (the same codes in both)."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    keys: I64 = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    """code, res, bucket (start, Unix s)."""
    values: F64 = field(default_factory=lambda: np.zeros((0, len(NODE_COLUMNS))))
    gpu_keys: I64 = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    gpu_values: F64 = field(default_factory=lambda: np.zeros((0, len(GPU_COLUMNS))))
    """``GPU_COLUMNS`` (the GPU's index first, part of the key)."""
    held: int = 0
    """Buckets :func:`merge` held to their length (their samples reported more)."""
    flooded: list[tuple[str, int, int, float]] = field(default_factory=list)
    """Of those, the ones whose samples reported more than any honest node can (the
    bucket's length plus one interval of the longest the schema allows): node, resolution,
    start, seconds reported."""

    def codes(self, names: Sequence[str]) -> I64:
        """Codes of ``names``, new ones added (in the order they first appear)."""
        index = self.index
        new = [n for n in dict.fromkeys(names) if n not in index]
        if new:
            index.update(zip(new, range(len(index), len(index) + len(new)), strict=True))
            self.names.extend(new)
        return np.fromiter(map(index.__getitem__, names), np.int64, len(names))

    def rows(self, *, nan_is_null: bool = False) -> npt.NDArray[np.object_]:
        """``(node, res, bucket, *NODE_COLUMNS, gpu_stats)`` per bucket, a row of an object
        array each: parameters without a tuple per row, so a fold leaves the garbage
        collector nothing to scan. NaN (nothing reported) as ``None``, unless the store
        takes NaN for NULL (``nan_is_null``: SQLite binds a NaN as NULL). In the table's
        key order (node name, resolution, bucket): the rows then go into its B-tree one
        after the other, not each into the middle of a full page (which costs time, and
        half-empty pages)."""
        n = len(self.keys)
        out = np.empty((n, 4 + len(NODE_COLUMNS)), dtype=object)
        if not n:
            return out
        by_name = np.empty(len(self.names), np.int64)
        by_name[sorted(range(len(self.names)), key=self.names.__getitem__)] = np.arange(
            len(self.names)
        )
        # Ordered before the objects are made (not the object rows copied in that order).
        order = np.lexsort((self.keys[:, 2], self.keys[:, 1], by_name[self.keys[:, 0]]))
        keys, values = np.take(self.keys, order, axis=0), np.take(self.values, order, axis=0)
        gk = _combined(self.gpu_keys)
        nk = _combined(keys)
        size = GPU_RECORD_BYTES
        lo = (np.searchsorted(gk, nk, "left") * size).tolist()
        hi = (np.searchsorted(gk, nk, "right") * size).tolist()
        packed = np.ascontiguousarray(self.gpu_values, dtype=_GPU_DTYPE).tobytes()
        out[:, 0] = np.array(self.names, dtype=object)[keys[:, 0]]
        out[:, 1:3] = keys[:, 1:3]
        out[:, 3:-1] = values
        if not nan_is_null:
            out[:, 3:-1][np.isnan(values)] = None
        out[:, -1] = [packed[a:b] if b > a else None for a, b in zip(lo, hi, strict=True)]
        return out


def _combined(keys: I64) -> I64:
    """(code, res, bucket) as one sortable integer: the minutes (by node, then time) before
    the hours (likewise), so a fold's minutes and hours, each made in order, are in order
    one after the other. Room for 2^23 nodes and, shifted by 7, a GPU index."""
    hour: I64 = (keys[:, 1] != 60).astype(np.int64)
    out: I64 = (hour << 55) | (keys[:, 0] << 32) | (keys[:, 2] // 60)
    return out


def _pairs(major: I64, minor: I64, majors: int) -> tuple[I64, I64, I64]:
    """Dense ids of the distinct ``(major, minor)`` pairs, numbered in their sorted order
    (``major`` in ``[0, majors)``): each pair's id, and each id's major and minor. Through
    ``major x K + minor`` where that leaves few numbers unused (K: the span of ``minor``:
    a fold's minutes, a node's GPUs), else through a sort."""
    lo = int(minor.min())
    minor = minor - lo
    k = int(minor.max()) + 1
    if majors * k <= 4 * len(minor) + 1024:
        slot = major * k + minor
        seen = np.zeros(majors * k, np.bool_)
        seen[slot] = True
        present = np.flatnonzero(seen)
        rank = np.cumsum(seen) - 1
        return rank[slot], present // k, present % k + lo
    distinct, ids = np.unique(major << 32 | minor, return_inverse=True)
    return ids.reshape(-1), distinct >> 32, (distinct & 0xFFFFFFFF) + lo


def _reduce_ids(ids: I64, cols: F64, ops: tuple[list[int], list[int], list[int]], out: F64) -> F64:
    """Columns ``cols`` (one row of the array per column) merged per id into ``out`` (a row
    per column, a column per id): sums add (``bincount``), minima and maxima compare
    ignoring NaN (``fmin.at``/``fmax.at``). No sort, no copy of the inputs in id order."""
    sums, mins, maxs = ops
    groups = out.shape[1]
    for c in sums:
        out[c] = np.bincount(ids, weights=cols[c], minlength=groups)
    out[mins + maxs] = np.nan
    for c in mins:
        np.fmin.at(out[c], ids, cols[c])
    for c in maxs:
        np.fmax.at(out[c], ids, cols[c])
    return out


def _zero(x: F64) -> F64:
    """NaN (unreported) as 0 (``np.nan_to_num`` also tests for infinities: 3 passes more)."""
    return np.where(np.isnan(x), 0.0, x)


def _known(x: F64) -> F64:
    return (~np.isnan(x)).astype(np.float64)


def _sample_partials(v: F64) -> F64:
    """Each sample as a partial of one: a row per :data:`NODE_COLUMNS` (``v``: a row per
    :data:`_SAMPLE` value)."""
    dt, g, util, busy, power, tmax, mem, cpu, node_w = v
    return np.stack(
        (
            np.ones_like(dt),
            dt,
            g,
            g * dt,
            _zero(g * util / 100.0 * dt),
            busy * dt,
            _known(util),
            _zero(util),
            util,
            util,
            _known(power),
            _zero(power),
            power,
            power,
            tmax,
            _known(mem),
            _zero(mem),
            mem,
            mem,
            _zero(power * dt),
            _known(cpu),
            _zero(cpu),
            cpu,
            cpu,
            _zero(cpu * dt),
            _known(node_w),
            _zero(node_w),
            node_w,
            _known(node_w) * dt,
            _zero(node_w * dt),
            dt,
            dt,
        )
    )


def _gpu_records(ids: I64, index: I64, g: F64, dt: F64, out: F64) -> None:
    """Each id's GPU record (:data:`GPU_COLUMNS`, a row of ``out`` each; ``index``: each
    id's GPU) from the staged GPU rows ``g`` (a row of the array per :data:`_PACKED` value;
    ``dt``: each GPU row's interval): one ``bincount`` per count or sum, one
    ``fmin.at``/``fmax.at`` per extreme, straight over the rows. The bulk of a fold's
    arithmetic."""
    n = out.shape[1]
    out[0] = index
    rows = np.bincount(ids, minlength=n)
    at = _GPU_AT
    for name, x in zip(("util", "power", "temp", "mem"), g[1:], strict=True):
        missing = np.isnan(x)
        weights = x
        if missing.any():
            out[at[f"{name}_n"]] = rows - np.bincount(ids[missing], minlength=n)
            weights = np.where(missing, 0.0, x)
        else:
            out[at[f"{name}_n"]] = rows
        out[at[f"{name}_sum"]] = np.bincount(ids, weights=weights, minlength=n)
        if name == "power":
            out[at["energy_j"]] = np.bincount(ids, weights=weights * dt, minlength=n)
        for fn, end in ((np.fmin, "min"), (np.fmax, "max")):
            if f"{name}_{end}" in at:
                out[at[f"{name}_{end}"]] = np.nan
                fn.at(out[at[f"{name}_{end}"]], ids, x)


def _sample_values(parts: Sequence[Staged], per: I64, g: F64) -> F64:
    """The staged samples' values (a row each: interval, GPUs, utilisation, busy GPUs,
    GPU power, hottest GPU, GPU memory, CPU power, node power) with their busy GPUs (at or
    above each batch's threshold; NaN, unreported, is not busy) and hottest GPU counted
    from the GPU rows ``g`` (``per`` sample)."""
    n = len(per)
    sample = np.repeat(np.arange(n), per)
    threshold = np.repeat([b.busy_util_pct for b in parts], [len(b.gpus) for b in parts])
    hottest = np.full(n, np.nan)
    np.fmax.at(hottest, sample, g[3])
    interval, gpus, util, power, mem, cpu, node_w = np.vstack([b.values for b in parts]).T
    busy = np.bincount(sample, weights=g[1] >= threshold, minlength=n)
    out = (interval, gpus, util, busy, power, hottest, mem, cpu, node_w)
    return np.stack(out, dtype=np.float64)


def buckets(staged: Sequence[Staged], into: Buckets | None = None) -> Buckets:
    """The 1-minute and 1-hour partials of the ``staged`` batches' samples (the hours made
    from the minutes); node codes from ``into`` (new ones added to it). Made in key order
    (:func:`_combined`): no sort afterwards."""
    out = Buckets() if into is None else into
    parts = [b for b in staged if len(b)]
    if not parts:
        return out
    codes = np.concatenate([out.codes(b.nodes) for b in parts])
    per = np.concatenate([b.gpu_counts for b in parts]).astype(np.int64)
    # A row per value, contiguous; float64, as fmin.at and fmax.at take it without a cast.
    g = np.concatenate([b.gpus.T for b in parts], axis=1, dtype=np.float64)
    values = _sample_values(parts, per, g)
    minute = np.concatenate([b.ts_ms for b in parts]) // 60_000
    # Each sample's node-minute, each node-minute's node-hour (ids in key order).
    sid, code, minute = _pairs(codes, minute, len(out.names))
    hid, hcode, hour = _pairs(code, minute // 60, len(out.names))
    nm, nh = len(code), len(hcode)
    out.keys = np.empty((nm + nh, 3), np.int64)
    out.keys[:, 0] = np.concatenate((code, hcode))
    out.keys[:nm, 1], out.keys[nm:, 1] = MINUTE_S, HOUR_S
    out.keys[:, 2] = np.concatenate((minute * 60, hour * 3600))
    v = np.empty((len(NODE_COLUMNS), nm + nh))
    _reduce_ids(sid, _sample_partials(values), _NODE_OPS, v[:, :nm])
    _reduce_ids(hid, v[:, :nm], _NODE_OPS, v[:, nm:])
    out.values = v.T
    if not g.shape[1]:
        out.gpu_keys = np.zeros((0, 3), np.int64)
        out.gpu_values = np.zeros((0, len(GPU_COLUMNS)))
        return out
    # The GPUs: an id per node-minute and index, then per node-hour and index.
    gid, gm, gindex = _pairs(np.repeat(sid, per), g[0].astype(np.int64), nm)
    ghid, gh, _ = _pairs(hid[gm], gindex, nh)
    ng = len(gm)
    gv = np.empty((len(GPU_COLUMNS), ng + len(gh)))
    _gpu_records(gid, gindex, g, np.repeat(values[0], per), gv[:, :ng])
    _reduce_ids(ghid, gv[:, :ng], _GPU_OPS, gv[:, ng:])
    out.gpu_keys = out.keys[np.concatenate((gm, gh + nm))]
    out.gpu_values = gv.T
    return out


def gpu_minutes(
    ts_ms: I64, interval_s: F64, gpu_stats: Sequence[bytes], hold_s: int = MINUTE_S
) -> tuple[I64, F64]:
    """One node's samples (time stamps, intervals, GPUs as
    :func:`~collector.store.rollups.pack_gpus` packs them) as its GPUs' 1-minute records
    (:data:`GPU_COLUMNS`) with each one's minute, by minute then GPU: what a fold makes of
    them, for a read of raw samples; their energy held as the fold holds a bucket of
    ``hold_s`` seconds (:func:`_hold`: the resolution the read merges them into)."""
    n = len(ts_ms)
    g = np.frombuffer(b"".join(gpu_stats), _F32).reshape(-1, _PACKED).T.astype(np.float64)
    if not g.shape[1]:
        return np.zeros(0, np.int64), np.zeros((0, len(GPU_COLUMNS)))
    per = np.fromiter(map(len, gpu_stats), np.int64, n) // (4 * _PACKED)
    sid, _, minute = _pairs(np.zeros(n, np.int64), np.asarray(ts_ms) // 60_000, 1)
    gid, gm, gindex = _pairs(np.repeat(sid, per), g[0].astype(np.int64), len(minute))
    out = np.empty((len(GPU_COLUMNS), len(gm)))
    dt = np.asarray(interval_s, np.float64)
    _gpu_records(gid, gindex, g, np.repeat(dt, per), out)
    held, bucket = np.unique(minute * 60 // hold_s, return_inverse=True)  # minute -> bucket
    of = bucket[sid]  # each sample's bucket
    reported = np.bincount(of, weights=dt, minlength=len(held)).astype(np.float64, copy=False)
    longest = np.zeros(len(held))
    np.fmax.at(longest, of, dt)
    cap = _cap(np.full(len(held), float(hold_s)), longest)
    out[_GPU_ENERGY] *= _kept(cap, reported)[bucket[gm]]
    return minute[gm] * 60, out.T


def gpu_steps(times: I64, records: F64, step: int) -> tuple[I64, F64]:
    """GPU records (:data:`GPU_COLUMNS`, each at its bucket's start in ``times``) merged per
    GPU and ``step`` seconds (whole minutes) as buckets merge: each step's start and
    record, by step then GPU."""
    if not len(times):
        return times, records
    sid, _, start = _pairs(np.zeros(len(times), np.int64), times // step, 1)
    gid, gs, _ = _pairs(sid, records[:, 0].astype(np.int64), len(start))
    out = np.empty((len(GPU_COLUMNS), len(gs)))
    _reduce_ids(gid, np.ascontiguousarray(records.T), _GPU_OPS, out)
    return start[gs] * step, out.T


def _sort(b: Buckets) -> None:
    """Order both by key (the order :meth:`Buckets.rows` pairs them in)."""
    order = np.argsort(_combined(b.keys), kind="stable")
    b.keys, b.values = b.keys[order], b.values[order]
    gpu = b.gpu_values[:, 0].astype(np.int64)
    gorder = np.argsort((_combined(b.gpu_keys) << 7) | gpu, kind="stable")
    b.gpu_keys, b.gpu_values = b.gpu_keys[gorder], b.gpu_values[gorder]


def decode_gpus(blob: bytes | None) -> F64:
    """A bucket's packed GPU records as rows of :data:`GPU_COLUMNS`."""
    if not blob:
        return np.zeros((0, len(GPU_COLUMNS)))
    return np.frombuffer(blob, _GPU_DTYPE).astype(np.float64).reshape(-1, len(GPU_COLUMNS))


def _merge_into(
    into: F64, at: I64, values: F64, ops: tuple[list[int], list[int], list[int]]
) -> None:
    """Merge ``values`` into the rows ``at`` of ``into`` (distinct rows), column by op, a
    column at a time (:func:`buckets` makes ``into`` a column after another in memory)."""
    columns, merged = into.T, np.ascontiguousarray(values.T)
    for cols, fn in zip(ops, (np.add, np.fmin, np.fmax), strict=True):
        for c in cols:
            column = columns[c]
            column[at] = fn(column[at], merged[c])


def merge(new: Buckets, stored: Sequence[Sequence[Any]]) -> Buckets:
    """``new`` with the ``stored`` buckets of its keys merged in, then each held to its
    length (:func:`_hold`). ``stored``: rows ``(node, res, bucket, gpu_stats, *FOLDED)``
    read from the store (:data:`FOLDED` merged here, the node's other columns in SQL,
    :data:`collector.store.rollups.UPSERT_SQL`); a ``reported_s`` below 0 (NULL: a bucket
    written before it was kept) is its ``seconds``, as reported, and its ``longest_s``
    those seconds too, at most the schema's longest interval. A stored bucket's sums
    over time are taken back to what its samples reported (``x reported_s / seconds``)
    before the new ones add to them: a bucket holds the same whatever the folds its samples
    came in. No re-sort: each stored GPU record is looked up among ``new``'s (sorted) ones,
    in their order (so the lookups and the merge walk ``new``'s records forward); only a
    GPU that ``new`` lacks is added."""
    if not stored:
        return _hold(new)
    n = len(stored)
    cols = list(zip(*stored, strict=True))  # the rows as columns, in C
    keys = np.column_stack(
        (
            new.codes(cols[0]),
            np.fromiter(cols[1], np.int64, n),
            np.fromiter(cols[2], np.int64, n),
        )
    )
    order = np.argsort(_combined(keys), kind="stable")
    keys = keys[order]
    folded = np.array(cols[4:], np.float64).T[order]
    reported, longest, timed = folded[:, 0], folded[:, 1], folded[:, 2:]
    before = reported < 0
    reported[before] = timed[before, 0]
    # Before both were kept, a bucket's seconds are what it reported, never held: read as
    # one sample's interval (at most the schema's longest), so a slow node's old minute
    # keeps its time when a late sample lands in it.
    longest[before] = np.minimum(reported[before], MAX_INTERVAL_S)
    cap = _cap(keys[:, 1].astype(np.float64), longest)
    undo = np.where(before, 1.0, 1.0 / _kept(cap, reported))
    at = np.searchsorted(_combined(new.keys), _combined(keys))
    new.values[at, _REPORTED] += reported
    new.values[at, _LONGEST] = np.fmax(new.values[at, _LONGEST], longest)
    new.values[at[:, None], _TIMED_AT] += timed * undo[:, None]
    blobs = [cols[3][i] or b"" for i in order.tolist()]
    gvals = decode_gpus(b"".join(blobs))
    if not len(gvals):
        return _hold(new)
    per = np.fromiter(map(len, blobs), dtype=np.int64, count=n) // GPU_RECORD_BYTES
    gvals[:, _GPU_ENERGY] *= np.repeat(undo, per)
    gkeys = np.repeat(keys.astype(np.int64), per, axis=0)
    want = (_combined(gkeys) << 7) | gvals[:, 0].astype(np.int64)
    have = (_combined(new.gpu_keys) << 7) | new.gpu_values[:, 0].astype(np.int64)
    at = np.searchsorted(have, want)
    found = at < len(have)
    found[found] = have[at[found]] == want[found]
    _merge_into(new.gpu_values, at[found], gvals[found], _GPU_OPS)
    if not found.all():  # GPUs stored that reported nothing new: kept as they were
        new.gpu_keys = np.vstack((new.gpu_keys, gkeys[~found]))
        new.gpu_values = np.vstack((new.gpu_values, gvals[~found]))
        _sort(new)
    return _hold(new)


def _cap(length: F64, longest: F64) -> F64:
    """The most seconds a bucket holds: its length, or the longest interval one of its
    samples reported where that is longer (a node sampling every 20 minutes puts each
    sample's 20 minutes in the minute of its stamp: kept whole). ``longest`` below 0 (NULL:
    a bucket written before it was kept): the length."""
    return np.maximum(length, longest)


def _kept(cap: F64, reported: F64) -> F64:
    """The share of its samples' sums over time a bucket keeps: all of it, or ``cap`` /
    ``reported`` where they reported more seconds than it may hold (:func:`_cap`)."""
    return cap / np.maximum(reported, cap)


def _hold(b: Buckets) -> Buckets:
    """Each bucket of ``b`` whose samples reported more seconds than it may hold
    (:func:`_cap`) held to that: its :data:`TIMED` sums and its GPUs' energy scaled by
    cap / reported (so its ``seconds`` is the cap); ``reported_s`` kept as reported.
    Counted in :attr:`Buckets.held`, and :attr:`Buckets.flooded` named."""
    length = _cap(b.keys[:, 1].astype(np.float64), b.values[:, _LONGEST])
    reported = b.values[:, _REPORTED]
    over = np.flatnonzero(reported > length)
    b.held = len(over)
    if not len(over):
        return b
    scale = _kept(length, reported)
    b.values[over[:, None], _TIMED_AT] *= scale[over, None]
    b.values[over, _SECONDS] = length[over]  # exactly, not to the rounding of the scale
    if len(b.gpu_keys):
        row = np.searchsorted(_combined(b.keys), _combined(b.gpu_keys))
        b.gpu_values[:, _GPU_ENERGY] *= scale[row]
    flooded = over[reported[over] > length[over] + MAX_INTERVAL_S]
    b.flooded = [
        (b.names[code], res, start, float(rep))
        for (code, res, start), rep in zip(
            b.keys[flooded].tolist(), reported[flooded].tolist(), strict=True
        )
    ]
    return b
