"""Alert fingerprints computed exactly as Alertmanager computes them.

prometheus/common ``model/signature.go`` (``labelSetToFingerprint``): FNV-1a 64 over, for each
label name in sorted order, the name's UTF-8 bytes, the byte 0xFF, the value's bytes, 0xFF.
0xFF never occurs in UTF-8, so it separates unambiguously. An empty label set hashes nothing
and gives the bare offset basis. Printed as ``%016x``, as Alertmanager's webhook and API do.
Python's ``sorted`` orders by code point, which is the same order as Go's byte-wise sort of
the UTF-8 encodings.

A mass event (every node stale at once) needs thousands of new fingerprints in one
evaluation: :func:`fingerprints_of_items` hashes them together (:func:`_fnv1a_rows`, numpy:
12,500 node alerts in ~1 ms instead of ~8 ms with Python integers), from one encoding of them
all while every name and value is ASCII (:func:`_hash_ascii`), and remembers the last
:data:`_MEMO_SIZE` of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "FNV64_OFFSET",
    "FNV64_PRIME",
    "fingerprint",
    "fingerprint_int",
    "fingerprint_of_items",
    "fingerprints_of_items",
]

FNV64_OFFSET: Final = 14695981039346656037
FNV64_PRIME: Final = 1099511628211
_MASK: Final = 2**64 - 1
_SEP: Final = b"\xff"
_LANES_MIN: Final = 16
"""Fewer label sets of one length than this are hashed one by one (the lanes' set-up costs more)."""
_MEMO_SIZE: Final = 1 << 15

Items = tuple[tuple[str, str], ...]
"""A label set as its items sorted by name (the evaluator's key)."""

_memo: dict[Items, str] = {}


def _encode(items: Items) -> bytes:
    return _SEP.join([s.encode() for s in chain.from_iterable(items)]) + _SEP if items else b""


def _fnv1a(data: bytes) -> int:
    h = FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV64_PRIME) & _MASK
    return h


def _fnv1a_rows(rows: np.ndarray[Any, np.dtype[np.uint8]]) -> list[str]:
    """FNV-1a 64 of each row of a byte matrix (byte strings of one length), all at once, as
    ``%016x``.

    One unsigned 64-bit lane per row (numpy): at each byte position, one XOR of every lane
    with that byte of its row and one multiplication by the prime, each a loop in C; uint64
    arithmetic wraps modulo 2**64 as FNV's does. The bytes every row starts with
    (``alertname``, the rule's name, the next label's name) are hashed once.
    """
    import numpy as np  # noqa: PLC0415 (the collector has it; commands reading alerts need not)

    n, length = rows.shape
    differs = (rows != rows[0]).any(axis=0)
    start = int(differs.argmax()) if differs.any() else length  # what they all start with
    columns = rows[:, start:].T.copy()  # byte j of every row, contiguous
    h = np.full(n, _fnv1a(rows[0, :start].tobytes()), dtype=np.uint64)
    prime = np.uint64(FNV64_PRIME)
    for column in columns:
        h ^= column
        h *= prime
    digits = h.astype(">u8").tobytes().hex()
    return [digits[16 * i : 16 * (i + 1)] for i in range(n)]


def _hash_ascii(keys: Sequence[Items]) -> list[str] | None:
    """The fingerprints of ``keys``, none remembered, when every name and value is ASCII
    (``None`` otherwise): encoded all at once, then hashed together by encoded length.

    Joined with U+00FF, the label sets are one Latin-1 string whose bytes are the UTF-8
    encodings Alertmanager hashes, each string followed by 0xFF, one label set after the
    other: while every character is ASCII, Latin-1 and UTF-8 write the same byte. One
    encode and a few numpy passes instead of an encode per name and value (~0.8 µs a label
    set, most of a mass event's hashing)."""
    import numpy as np  # noqa: PLC0415 (see _fnv1a_rows)

    text = "\xff".join(chain.from_iterable(chain.from_iterable(keys))) + "\xff"
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:  # beyond U+00FF: not ASCII
        return None
    data = np.frombuffer(raw, np.uint8)
    seps = np.flatnonzero(data == _SEP[0])  # where each name and value ends
    strings = np.cumsum(np.fromiter(map(len, keys), np.intp, len(keys))) * 2  # so far
    if len(seps) != strings[-1] or np.count_nonzero(data >= 0x80) != len(seps):
        return None  # a name or value holds a non-ASCII character (U+00FF: a 0xFF more)
    # Where each label set ends: after its last string's separator (an empty one: where
    # the one before it ended).
    ends = np.concatenate(([-1], seps))[strings] + 1
    starts = np.concatenate(([0], ends[:-1]))
    return _hash_spans(raw, starts, ends - starts)


def _hash_spans(
    raw: bytes,
    starts: np.ndarray[Any, np.dtype[np.intp]],
    lengths: np.ndarray[Any, np.dtype[np.intp]],
) -> list[str]:
    """The fingerprint of each span ``raw[start : start + length]`` (an encoded label set):
    the spans of one length hashed together (:func:`_fnv1a_rows`) where there are at least
    :data:`_LANES_MIN` of them, the others one by one."""
    import numpy as np  # noqa: PLC0415 (see _fnv1a_rows)

    data = np.frombuffer(raw, np.uint8)
    out = [""] * len(starts)
    # The lengths there are (not np.unique: its first call imports numpy.ma, ~10-30 ms).
    for length in np.flatnonzero(np.bincount(lengths)).tolist():
        which = np.flatnonzero(lengths == length)
        if length and len(which) >= _LANES_MIN:
            fps = _fnv1a_rows(data[starts[which, None] + np.arange(length)])
        else:
            fps = [f"{_fnv1a(raw[a : a + length]):016x}" for a in starts[which].tolist()]
        for j, fp in zip(which.tolist(), fps, strict=True):
            out[j] = fp
    return out


def _remember(new: Mapping[Items, str]) -> None:
    _memo.update(new)
    excess = len(_memo) - _MEMO_SIZE
    if excess > 0:  # forget the oldest
        for items in list(islice(_memo, excess)):
            del _memo[items]


def fingerprint_int(labels: Mapping[str, str]) -> int:
    """The label set's fingerprint as an unsigned 64-bit integer."""
    return _fnv1a(_encode(tuple(sorted(labels.items()))))


def fingerprint(labels: Mapping[str, str]) -> str:
    """The label set's fingerprint as Alertmanager prints it: 16 lowercase hex digits."""
    return f"{fingerprint_int(labels):016x}"


def fingerprint_of_items(items: Items) -> str:
    """:func:`fingerprint` of a label set given as its sorted items, remembered."""
    fp = _memo.get(items)
    if fp is None:
        fp = f"{_fnv1a(_encode(items)):016x}"
        _remember({items: fp})
    return fp


def fingerprints_of_items(keys: Sequence[Items]) -> list[str]:
    """:func:`fingerprint_of_items` of each key, the new ones hashed together: a second mass
    event (every node stale again) costs a lookup per alert, the first one a fraction of a
    hash per alert."""
    out = [_memo.get(items, "") for items in keys]
    missing = [i for i, fp in enumerate(out) if not fp]
    if not missing:
        return out
    new = [keys[i] for i in missing]
    fps = _hash_ascii(new) if len(new) >= _LANES_MIN else None
    if fps is None:
        fps = _hash_each(new)
    for i, fp in zip(missing, fps, strict=True):
        out[i] = fp
    _remember(dict(zip(new, fps, strict=True)))
    return out


def _hash_each(keys: Sequence[Items]) -> list[str]:
    """The fingerprints of ``keys``, none remembered, each encoded on its own (what
    :func:`_hash_ascii` does not take), hashed together by encoded length."""
    datas = [_encode(items) for items in keys]
    if len(datas) < _LANES_MIN:  # no length can have lanes: one by one, numpy not needed
        return [f"{_fnv1a(data):016x}" for data in datas]
    import numpy as np  # noqa: PLC0415 (see _fnv1a_rows)

    lengths = np.fromiter(map(len, datas), np.intp, len(datas))
    return _hash_spans(b"".join(datas), np.cumsum(lengths) - lengths, lengths)
