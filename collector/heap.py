"""The collector daemon's garbage-collector policy, in one place (the daemon and its benches).

The daemon holds a large, long-lived heap: the live view (every node's latest sample) and
the alert states. Two settings keep CPython's cyclic collector from pausing the event loop:

- :func:`configure`: a first-generation threshold of 10,000 allocations instead of 700. With
  the default the collector ran so often, and promoted so much, that it cost ~20 µs per
  ingested sample at 12,500 nodes.
- :func:`freeze_startup`: everything loaded before serving (modules, settings, rules) lives
  as long as the process; moved to the permanent generation (``gc.freeze``), a full
  collection scans only what came after. With the wire schema's structs untracked and their
  arrays tuples, that is about two objects per node: a full pass over a 12,500-node live
  view takes ~5 ms instead of ~32 ms, and the first evaluation of a mass event (12,500 new
  alerts) ~90 ms instead of ~125 ms (``bench/bench_alerts.py``).

What is made per sample or per alert is untracked too: the live view's node states (a new
one per sample) and the alert states are ``msgspec`` structs with ``gc=False``
(:class:`collector.live.NodeState`, :class:`collector.alerts.evaluator.AlertState`), and the
inventories the view holds have tuples for arrays (untracked at their first collection:
50,000 lists fewer at 12,500 nodes: a full pass over the view 10-11.5 ms of CPU -> 0.7 ms;
``collector.live._untracked``). Still tracked, for whoever goes further: each node's XID
deque (12,500 objects), and the
per-node objects the governance and capacity cycles build each time (``Hardware`` and
``NodeMeasure``: a named tuple and a frozen dataclass, both tracked for good, since CPython
untracks only exact tuples; sqlite3 ``Row`` s: they survive a young pass while a cycle
runs, and a middle-generation pass then scans them, tens of milliseconds on a loaded
machine). ``msgspec`` structs with ``gc=False`` would do, where the module may import msgspec.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

__all__ = ["GEN0_THRESHOLD", "configure", "freeze_startup", "paused"]

GEN0_THRESHOLD: Final = 10_000


def configure() -> None:
    """Set the daemon's collection thresholds (call once, at start)."""
    gc.set_threshold(GEN0_THRESHOLD, 10, 10)


def freeze_startup() -> None:
    """Collect once, then exempt every object alive now from later collections."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside (every thread's allocations count): for a burst that
    makes many short-lived objects, acyclic, freed by reference counting when it ends (each
    part of the rollups' fold: its shard's keys, stored and merged rows). Collections
    triggered inside it scan what is young for them, the writer waiting: when the fold was
    one transaction of 100,000 samples (~25,000 keys) in ``bench/bench_ingest_stall.py``,
    8-83 ms of collections per fold at a load of ~2.5 on 2 cores (none with this), up to a
    middle- and a full-generation pass (~70 + ~170 ms) at ~6. What the other threads make
    meanwhile is collected after, as if made then."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
