"""Seeded mutation: 5,000 hostile variants of a realistic sample, each rejected or in bounds.

The issue found disk and NIC rates of 1e300 B/s, energy 1e300 J, load 2**80, 150,000
per-core entries, a GPU uuid "NaN" and int64-overflowing GPU memory among 5,000 mutated
samples. Same experiment, deterministic (``random.Random(0)``), as a test.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

import shared.schema as s
from shared.errors import SchemaError
from tests.shared.documented_bounds import (
    LISTS,
    assert_within_documented_bounds,
    generic_path,
    walk,
)
from tests.shared.wire_samples import RAW, Raw, encode, get, sample_dict

_ABSURD: list[Any] = [
    1e300,
    -1e300,
    2**80,
    -(2**80),
    2**63,
    2**64,
    2**62,
    2**53,
    1e13,
    101,
    -1,
    -0.5,
    0,
    Raw("1e400"),
    Raw("-1e400"),
    Raw("NaN"),
    "NaN",
    "",
    "x" * 70_000,
    "GPU-00000000-0000-0000-0000-00000000000G",
    None,
    True,
    [],
    {},
    [1e300],
]


def _mutate(rng: random.Random, d: dict[str, Any], spots: list[list[list[str | int]]]) -> list[Raw]:
    """Apply one hostile change to ``d`` at a random field (each field equally likely, then a
    random element of its lists); return the raw JSON texts it needs."""
    path = rng.choice(rng.choice(spots))
    try:
        parent = get(d, path[:-1])
        value = parent[path[-1]]
    except (KeyError, IndexError, TypeError):
        return []  # an earlier fault removed or replaced this part
    roll = rng.random()
    if isinstance(value, list) and value and roll < 0.5:
        # Grow the list to its limit, just past it, far past it (150,000 per-core entries).
        limit = LISTS["sample"][generic_path(path)]
        length = rng.choice([limit, limit + 1, 2 * limit + 7, 150_000 if limit > 4096 else 0])
        parent[path[-1]] = [value[i % len(value)] for i in range(length)]
        return []
    if isinstance(parent, dict) and roll < 0.55:
        del parent[path[-1]]
        return []
    new = rng.choice(_ABSURD)
    if isinstance(new, Raw):
        parent[path[-1]] = RAW
        return [new]
    parent[path[-1]] = new
    return []


def test_seeded_mutations_are_rejected_or_stay_within_documented_bounds() -> None:
    """5,000 hostile mutations of a realistic sample (random.Random(0)): each one is rejected
    as 'invalid' (or 'not_json' / 'version'), or decodes to values inside every bound."""
    rng = random.Random(0)
    base = msgspec.json.encode(sample_dict())
    by_field: dict[str, list[list[str | int]]] = {}
    for path, _ in walk(sample_dict(), []):
        if path:
            by_field.setdefault(generic_path(path), []).append(path)
    spots = list(by_field.values())
    outcomes: dict[str, int] = {"accepted": 0, "invalid": 0, "not_json": 0, "version": 0}
    unnamed: list[str] = []
    for _ in range(5000):
        d = msgspec.json.decode(base)
        raws = _mutate(rng, d, spots)
        for _ in range(rng.choice([0, 0, 1, 2])):  # sometimes several faults at once
            raws += _mutate(rng, d, spots)
        try:
            sample = s.decode_sample(encode(d, raws))
        except SchemaError as exc:
            outcomes[exc.reason] += 1
            if "`" not in str(exc) and exc.reason != "not_json":
                unnamed.append(str(exc))  # every rejection names the field
            continue
        outcomes["accepted"] += 1
        assert_within_documented_bounds("sample", msgspec.to_builtins(sample))
    assert unnamed == []
    # Both branches are exercised: a test that rejects everything proves nothing.
    assert outcomes["accepted"] > 300, outcomes
    assert outcomes["invalid"] > 3000, outcomes
