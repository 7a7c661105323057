"""Cutting an upsert's rows into statements that name each key once
(:func:`collector.store.dialect.distinct_runs`): what PostgreSQL requires of one statement,
in the order SQLite applies the rows."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from collector.store.dialect import distinct_runs, upsert_key

_HEAD = "INSERT INTO rollups (node, res, bucket, samples)"


def test_the_key_is_the_conflict_target_of_a_do_update() -> None:
    """Positions of the target's columns in the head's list; none for an insert or ``DO
    NOTHING`` (PostgreSQL takes a key twice there); ``()`` when the target is not columns."""
    assert upsert_key(_HEAD, " ON CONFLICT (bucket, node) DO UPDATE SET samples = 1") == (2, 0)
    assert upsert_key(_HEAD, " on conflict (RES) do update set samples = 1") == (1,)
    assert upsert_key(_HEAD, " ON CONFLICT (node, res, bucket) DO NOTHING") is None
    assert upsert_key(_HEAD, "") is None
    assert upsert_key(_HEAD, " ON CONFLICT ON CONSTRAINT pk DO UPDATE SET samples = 1") == ()
    assert upsert_key(_HEAD, " ON CONFLICT (other) DO UPDATE SET samples = 1") == ()


@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers()), max_size=40),
    per=st.integers(1, 7),
    key=st.sampled_from([None, (), (0,), (0, 1), (1, 0)]),
)
def test_runs_keep_the_order_stay_short_and_name_each_key_once(
    rows: list[tuple[int, int, int]], per: int, key: tuple[int, ...] | None
) -> None:
    runs = [list(r) for r in distinct_runs(rows, per, key)]
    assert list(itertools.chain.from_iterable(runs)) == rows
    assert all(0 < len(r) <= per for r in runs)
    if key == ():
        assert all(len(r) == 1 for r in runs)
    elif key is not None:
        for run in runs:
            keys = [tuple(row[i] for i in key) for row in run]
            assert len(set(keys)) == len(keys)
        # Only a repeated key or the size ends a run early: no more statements than needed.
        for run, after in itertools.pairwise(runs):
            first = tuple(after[0][i] for i in key)
            assert len(run) == per or first in {tuple(row[i] for i in key) for row in run}
    else:
        assert len(runs) == -(-len(rows) // per)
