"""Alert fingerprints computed exactly as Alertmanager computes them.

prometheus/common ``model/signature.go`` (``labelSetToFingerprint``): FNV-1a 64 over, for each
label name in sorted order, the name's UTF-8 bytes, the byte 0xFF, the value's bytes, 0xFF.
0xFF never occurs in UTF-8, so it separates unambiguously. An empty label set hashes nothing
and gives the bare offset basis. Printed as ``%016x``, as Alertmanager's webhook and API do.
Python's ``sorted`` orders by code point, which is the same order as Go's byte-wise sort of
the UTF-8 encodings.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

__all__ = ["FNV64_OFFSET", "FNV64_PRIME", "fingerprint", "fingerprint_int", "fingerprint_of_items"]

FNV64_OFFSET: Final = 14695981039346656037
FNV64_PRIME: Final = 1099511628211
_MASK: Final = 2**64 - 1
_SEP: Final = b"\xff"


def _fnv1a(items: tuple[tuple[str, str], ...]) -> int:
    data = b"".join(n.encode() + _SEP + v.encode() + _SEP for n, v in items)
    h = FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV64_PRIME) & _MASK
    return h


def fingerprint_int(labels: Mapping[str, str]) -> int:
    """The label set's fingerprint as an unsigned 64-bit integer."""
    return _fnv1a(tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=1 << 15)
def fingerprint_of_items(items: tuple[tuple[str, str], ...]) -> str:
    """:func:`fingerprint` of a label set given as its items sorted by name (the evaluator's
    key), remembered: a second mass event (every node stale again) costs a lookup per alert,
    not a hash over every byte."""
    return f"{_fnv1a(items):016x}"


def fingerprint(labels: Mapping[str, str]) -> str:
    """The label set's fingerprint as Alertmanager prints it: 16 lowercase hex digits."""
    return f"{fingerprint_int(labels):016x}"
