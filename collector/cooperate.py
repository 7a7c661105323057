"""Yield points for long pure work that runs in a worker thread beside the event loop.

CPython runs one thread's Python code at a time (the GIL). The evaluator's cycles run in a
worker thread (:mod:`collector.evaluate`); a cycle that computes for hundreds of
milliseconds would hold the GIL for a whole switch interval (``sys.getswitchinterval()``,
5 ms) each time the event loop's thread asks for it, and that thread asks at every await
that crosses a thread or the kernel (each SQLite statement, each socket read): a batch
commit then took as long as the evaluation beside it (``bench/bench_ingest_stall.py``).
Handing the GIL over every few hundred nodes (``time.sleep(0)`` releases it) lets the loop
take it at once: measured with one core kept busy by another process, the loop's worst
step beside 300 ms of pure work went from 50 ms (20 ms at a 0.5 ms switch interval) to
under 10 ms. Called on the loop's own thread (a command, a test) it costs a system call.

Work that has no yield point (one C call: a mass event's webhook body encoded as JSON, its
thousands of alerts sorted; the Python loops that group them and build the body do yield)
still holds the GIL until the switch interval forces it out, at every one of the loop's
waits on a thread or the kernel: :func:`configure` sets the interval to
2 ms for the daemon. Measured here (13 round trips to a worker thread beside a thread of
pure work with no yield point, a loaded 2-core machine): the slowest of ~1,000 such batches
75-143 ms at CPython's 5 ms, 32-49 ms at 1 ms (p99 30-33 ms -> 16-20 ms); beside work that
yields, no difference. Since a write transaction runs as one call in the store's thread
(:meth:`collector.store.db.Store.transact`: its Python, building rows and staging, beside
the loop's validating), 1 ms cost ~15-18 us of collector CPU a sample in
``bench/bench_pipeline.py --mode drain`` (rollups off 119 -> 101 us at 5 ms; on 135 ->
120) in GIL hand-overs; 2 ms keeps the drain's 120 us and the stall bench's p99 gap
(157 ms; 148 at 1 ms, 239 at 5 ms; 12,500 nodes, one run each).
"""

from __future__ import annotations

import sys
import time
from typing import Final

__all__ = ["SWITCH_INTERVAL_S", "YIELD_EVERY", "configure", "yield_gil"]

SWITCH_INTERVAL_S: Final = 0.002
"""How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms)."""

YIELD_EVERY: Final = 256
"""Nodes (or alerts) between two yield points: well under a millisecond of work."""


def yield_gil() -> None:
    """Let another thread (the event loop's) take the GIL now, if it is waiting for it."""
    time.sleep(0)


def configure() -> None:
    """Set the daemon's GIL switch interval (call once, at start)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
