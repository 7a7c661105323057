"""Alert fingerprints computed exactly as Alertmanager computes them.

prometheus/common ``model/signature.go`` (``labelSetToFingerprint``): FNV-1a 64 over, for each
label name in sorted order, the name's UTF-8 bytes, the byte 0xFF, the value's bytes, 0xFF.
0xFF never occurs in UTF-8, so it separates unambiguously. An empty label set hashes nothing
and gives the bare offset basis. Printed as ``%016x``, as Alertmanager's webhook and API do.
Python's ``sorted`` orders by code point, which is the same order as Go's byte-wise sort of
the UTF-8 encodings.

A mass event (every node stale at once) needs thousands of new fingerprints in one
evaluation: :func:`fingerprints_of_items` hashes them together (:func:`_fnv1a_lanes`, numpy:
12,500 node alerts in ~1 ms instead of ~8 ms with Python integers), and remembers the last
:data:`_MEMO_SIZE` of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, islice
from typing import Final

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


def _fnv1a_lanes(datas: Sequence[bytes]) -> list[str]:
    """FNV-1a 64 of byte strings of one length, all at once, as ``%016x``.

    One unsigned 64-bit lane per string (numpy): at each byte position, one XOR of every
    lane with that byte of its string and one multiplication by the prime, each a loop in
    C; uint64 arithmetic wraps modulo 2**64 as FNV's does. The bytes every string starts
    with (``alertname``, the rule's name, the next label's name) are hashed once.
    """
    import numpy as np  # noqa: PLC0415 (the collector has it; commands reading alerts need not)

    n, length = len(datas), len(datas[0])
    first, last = min(datas), max(datas)  # what they all start with, these two do
    start = next((j for j, (a, b) in enumerate(zip(first, last, strict=True)) if a != b), length)
    # Byte j of every string, contiguous: one row per position after the common start.
    columns = np.frombuffer(b"".join(datas), np.uint8).reshape(n, length)[:, start:].T.copy()
    h = np.full(n, _fnv1a(datas[0][:start]), dtype=np.uint64)
    prime = np.uint64(FNV64_PRIME)
    for column in columns:
        h ^= column
        h *= prime
    digits = h.astype(">u8").tobytes().hex()
    return [digits[16 * i : 16 * (i + 1)] for i in range(n)]


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
    datas = [_encode(keys[i]) for i in missing]
    by_length: dict[int, list[int]] = {}  # positions in `missing`
    for j, data in enumerate(datas):
        by_length.setdefault(len(data), []).append(j)
    for length, which in by_length.items():
        if length and len(which) >= _LANES_MIN:
            fps = _fnv1a_lanes([datas[j] for j in which])
        else:
            fps = [f"{_fnv1a(datas[j]):016x}" for j in which]
        for j, fp in zip(which, fps, strict=True):
            out[missing[j]] = fp
    if missing:
        _remember({keys[i]: out[i] for i in missing})
    return out
