"""Alert fingerprints computed exactly as Alertmanager computes them.

prometheus/common ``model/signature.go`` (``labelSetToFingerprint``): FNV-1a 64 over, for each
label name in sorted order, the name's UTF-8 bytes, the byte 0xFF, the value's bytes, 0xFF.
0xFF never occurs in UTF-8, so it separates unambiguously. An empty label set hashes nothing
and gives the bare offset basis. Printed as ``%016x``, as Alertmanager's webhook and API do.
Python's ``sorted`` orders by code point, which is the same order as Go's byte-wise sort of
the UTF-8 encodings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["FNV64_OFFSET", "FNV64_PRIME", "fingerprint", "fingerprint_int"]

FNV64_OFFSET: Final = 14695981039346656037
FNV64_PRIME: Final = 1099511628211
_MASK: Final = 2**64 - 1
_SEP: Final = b"\xff"


def fingerprint_int(labels: Mapping[str, str]) -> int:
    """The label set's fingerprint as an unsigned 64-bit integer."""
    h = FNV64_OFFSET
    for name in sorted(labels):
        data = name.encode() + _SEP + labels[name].encode() + _SEP
        for byte in data:
            h = ((h ^ byte) * FNV64_PRIME) & _MASK
    return h


def fingerprint(labels: Mapping[str, str]) -> str:
    """The label set's fingerprint as Alertmanager prints it: 16 lowercase hex digits."""
    return f"{fingerprint_int(labels):016x}"
