"""The daemon's garbage-collector policy (collector/heap.py)."""

from __future__ import annotations

import gc

import pytest

from collector import heap


def test_no_collection_runs_inside_paused_and_the_collector_is_back_after_it() -> None:
    """Inside: automatic collection off; after (an error too): as it was before."""
    assert gc.isenabled()
    with heap.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), heap.paused():
        raise RuntimeError("the fold failed")
    assert gc.isenabled()


def test_paused_leaves_a_disabled_collector_disabled() -> None:
    """A caller that had turned collection off keeps it off."""
    gc.disable()
    try:
        with heap.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
