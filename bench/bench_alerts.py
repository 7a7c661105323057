"""Alert evaluation benchmark: one cycle of every built-in rule over a simulated fleet.

Builds a :class:`LiveView` from :class:`FleetSimulator` samples (default 12,500 nodes x 8
GPUs, status online, inventory), then times :meth:`Evaluator.evaluate` cycles: first with a
healthy fleet, then with 1% of the nodes in trouble (a hot GPU, a throttled GPU, an XID,
uncorrected ECC, clock-skew rejects), so the rules also build alerts; then every node stale
at once (a broker outage), whose first cycle makes one new alert per node. Prints ms per
cycle (target < 100 ms) and the cost of ``on_sample`` per sample; for the mass event also
what grouping costs on top (the default route: the dispatcher's first and next cycle, and
the one webhook body listing every alert). Not pass/fail.

Then the alert job's whole cycle as the collector runs it in its worker thread
(:meth:`collector.alerts.job.AlertJob`'s pure part: the rules, then the firing alerts'
groups, the inhibitions, the webhook bodies and the changes as the store records them),
in thread CPU time: a healthy fleet's cycle, a mass event's first (every node stale: one
new pending alert each) and the next ones while every node's alert is held (pending, then
firing: notified once, then only grouped and inhibited again each cycle).

Then the same cycles in a worker thread, as the collector runs them, while the event loop
makes round trips to another worker thread (what a sample batch's commit does, a few times
each): the longest round trip and the 99th percentile show how long the job's cycle holds
the GIL at a stretch (:mod:`collector.cooperate`: the loop's thread waits that long for
it), the ingest stall it makes (``--beside``: only that).

On a loaded machine (2 shared cores) CPU time varies by +-20 % from run to run;
instructions do not. ``--callgrind`` runs only the alert job's cycles, each phase inside
:func:`functools.reduce`, which callgrind can be told to count alone::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --dump-after=functools_reduce --callgrind-out-file=cg.out \
        .venv/bin/python bench/bench_alerts.py --callgrind
    # cg.out.1: --cycles healthy cycles; cg.out.2: the mass event's first cycle;
    # cg.out.3: --cycles cycles with every node's alert firing (each file's "summary:")

Then the mass event's record as the writer stores it (:class:`collector.alerts.job.AlertRecord`,
a fresh job's first evaluation of the stale fleet, one receiver): in one transaction, and in
parts of :data:`collector.alerts.job.PART_CHANGES` (ms per part: how long sample batches wait
at most), into a SQLite file in a temporary directory (``--dir``: elsewhere, e.g. /dev/shm),
or ``--db postgresql://...``.

Usage: ``.venv/bin/python bench/bench_alerts.py [--nodes 12500] [--gpus 8] [--cycles 20]
[--dir DIR | --db URL | --callgrind | --beside]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import numpy  # noqa: F401 (collector run has it loaded: the first mass event must not import it)

from agent.simulate import FleetSimulator
from collector import heap
from collector.alerts.builtin import HW_THERMAL_SLOWDOWN, builtin_rules
from collector.alerts.evaluator import Evaluator
from collector.alerts.group import Dispatcher, GroupAlert
from collector.alerts.job import PART_CHANGES, AlertJob
from collector.alerts.route import default_route
from collector.alerts.webhook import group_body
from collector.live import LiveView
from collector.paths import StoreTarget, parse_target
from collector.settings import ReceiverSettings
from collector.store.db import Store
from shared.clock import FakeClock
from shared.schema import GpuEcc, Sample, XidEvent

_T0 = 1_800_000_000.0


def _troubled(sample: Sample, k: int, ts: float) -> Sample:
    """One kind of trouble per node, chosen by ``k``."""
    gpus = list(sample.gpus)
    kind = k % 4
    if kind == 0:
        gpus[0] = msgspec.structs.replace(gpus[0], temp_c=92.0)
    elif kind == 1:
        gpus[1] = msgspec.structs.replace(gpus[1], clock_event_reasons=HW_THERMAL_SLOWDOWN)
    elif kind == 2:
        gpus[2] = msgspec.structs.replace(gpus[2], ecc=GpuEcc(uncorrected_volatile=3))
    else:
        return msgspec.structs.replace(sample, xids=[XidEvent(gpu_index=3, xid=79, ts=ts)])
    return msgspec.structs.replace(sample, gpus=gpus)


def _time_cycles(ev: Evaluator, view: LiveView, now: float, cycles: int) -> tuple[list[float], int]:
    times: list[float] = []
    changes = 0
    for c in range(cycles):
        t = time.perf_counter()
        changes += len(ev.evaluate(view, now + c * 0.1))
        times.append((time.perf_counter() - t) * 1e3)
    return times, changes


def main() -> None:
    """Build the view, time the cycles, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=12_500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="CPython's default GC policy instead of the daemon's (collector.heap)",
    )
    parser.add_argument("--dir", type=Path, help="where the SQLite stores go (default: /tmp)")
    parser.add_argument("--db", help="a PostgreSQL URL to write the records to instead")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="only the alert job's cycles, each phase inside functools.reduce (see above)",
    )
    parser.add_argument(
        "--beside",
        action="store_true",
        help="only the event loop's round trips beside the alert job's cycles (see above)",
    )
    args = parser.parse_args()

    if not args.default_gc:  # as `collector run` does: its view is built after the freeze
        heap.configure()
        heap.freeze_startup()
    sim = FleetSimulator(args.nodes, gpus_per_node=args.gpus, seed=1)
    samples = [sim.sample(i, _T0, 1) for i in range(args.nodes)]
    view = LiveView(max_nodes=max(args.nodes, 1))
    t = time.perf_counter()
    for s in samples:
        view.on_sample(s, _T0)
    per_sample_us = (time.perf_counter() - t) / args.nodes * 1e6
    for i, node in enumerate(sim.node_ids):
        view.on_status(node, "online", _T0)
        view.on_inventory(sim.inventory(i, _T0), _T0)
    if not args.default_gc:
        # In collector run the view has lived through many collections by the time a mass
        # event comes (inventories arrive once, at start), not just been built: its objects
        # are old, not young ones that the first cycle's collections would scan.
        gc.collect()

    if args.callgrind:
        _job_cycles(view, args.cycles, reduce=True)
        return
    if args.beside:
        asyncio.run(_loop_beside(view, args.cycles))
        return
    rules = builtin_rules()
    ev = Evaluator(rules)
    now = _T0 + 1
    healthy, changes = _time_cycles(ev, view, now, args.cycles)
    print(
        f"{args.nodes} nodes x {args.gpus} GPUs, {len(rules)} rules: healthy fleet "
        f"median {statistics.median(healthy):.1f} ms, max {max(healthy):.1f} ms per cycle "
        f"({changes} changes)"
    )

    ts = _T0 + 5
    troubled = range(0, args.nodes, 100)
    for k, i in enumerate(troubled):
        view.on_sample(_troubled(sim.sample(i, ts, 2), k, ts), ts)
        for _ in range(3):
            view.on_reject(sim.node_ids[i], "clock_skew", ts)
    now = ts + 1
    first = time.perf_counter()
    changes = len(ev.evaluate(view, now))
    first_ms = (time.perf_counter() - first) * 1e3
    sick, more = _time_cycles(ev, view, now + 1, args.cycles)
    print(
        f"{len(troubled)} troubled nodes: first cycle {first_ms:.1f} ms ({changes} changes), "
        f"then median {statistics.median(sick):.1f} ms, max {max(sick):.1f} ms "
        f"({len(ev.states())} alerts held, {more} changes)"
    )

    # A mass event (broker down): every node goes stale at once, one new alert per node.
    now = ts + 3 * sim.interval_s + 10
    first = time.perf_counter()
    changes = len(ev.evaluate(view, now))
    first_ms = (time.perf_counter() - first) * 1e3
    mass, _ = _time_cycles(ev, view, now + 1, args.cycles)
    print(
        f"every node stale: first cycle {first_ms:.1f} ms ({changes} changes), "
        f"then median {statistics.median(mass):.1f} ms ({len(ev.states())} alerts held)"
    )
    _time_grouping(ev, now)
    print(f"LiveView.on_sample: {per_sample_us:.1f} us per {args.gpus}-GPU sample")
    _job_cycles(view, args.cycles)
    asyncio.run(_loop_beside(view, args.cycles))
    with tempfile.TemporaryDirectory(prefix="capwatch-alerts-", dir=args.dir) as tmp:
        for part, label in ((1 << 30, "one transaction"), (PART_CHANGES, "in parts")):
            target = parse_target(args.db) if args.db else Path(tmp) / f"{part}.db"
            ms, changes = asyncio.run(_time_record(view, now, target, part))
            print(
                f"the mass event's record ({changes} changes), {label}: {len(ms)} part(s), "
                f"longest {max(ms):.1f} ms, median {statistics.median(ms):.1f} ms, "
                f"total {sum(ms):.0f} ms"
            )


async def _time_record(
    view: LiveView, now: float, target: StoreTarget, part_changes: int
) -> tuple[list[float], int]:
    """A fresh job's first evaluation of ``view`` at ``now`` (every node stale), its record
    written to ``target`` in parts of ``part_changes``: ms per part, and the changes."""
    hook = ReceiverSettings.model_validate({"name": "bench", "url": "http://127.0.0.1:9/"})
    job = AlertJob(
        Evaluator(builtin_rules()), FakeClock(start_wall=now), receivers=[hook],
        part_changes=part_changes,
    )  # fmt: skip
    ms: list[float] = []
    async with Store(target) as store:
        record = await job(store, view.snapshot())
        more = True
        while more:
            t = time.perf_counter()
            more = await record.write(store)
            ms.append((time.perf_counter() - t) * 1e3)
        if not isinstance(target, Path):  # PostgreSQL: leave it as found
            async with store.transaction("clearing the bench's alerts"):
                for table in ("alerts", "alert_history", "outbox", "alert_groups"):
                    await store.execute(f"DELETE FROM {table}")
    return ms, len(record.changes)


def _job_cycles(view: LiveView, cycles: int, *, reduce: bool = False) -> None:
    """A fresh alert job (one receiver, no silences) over ``view``: its cycles' thread CPU
    time, healthy (before the mass event's time), the mass event's first cycle, then every
    node's alert held; with ``reduce``, each phase inside :func:`functools.reduce` for
    callgrind (module docstring)."""
    hook = ReceiverSettings.model_validate({"name": "bench", "url": "http://127.0.0.1:9/"})
    job = AlertJob(Evaluator(builtin_rules()), FakeClock(start_wall=_T0), receivers=[hook])
    snapshot = view.snapshot()

    def cycle(now: float) -> float:
        t = time.thread_time()
        job._evaluate(snapshot, now, [], job.generation)
        return (time.thread_time() - t) * 1e3

    def phase(times: list[float]) -> list[float]:
        if reduce:
            functools.reduce(lambda _, now: cycle(now), times, 0.0)
            return [0.0]
        return [cycle(now) for now in times]

    cycle(_T0 + 0.5)  # warm-up: the first cycle of a job
    healthy = phase([_T0 + 1 + c * 0.1 for c in range(cycles)])
    stale = _T0 + 5 + 3 * 1.0 + 10  # as the mass event above: every node stale
    first = phase([stale])
    held = phase([stale + 1 + c for c in range(cycles)])
    if not reduce:
        print(
            f"the alert job's cycle (thread CPU): healthy median {statistics.median(healthy):.1f}"
            f" ms; every node stale: first {first[0]:.1f} ms, then median "
            f"{statistics.median(held):.1f} ms, max {max(held):.1f} ms "
            f"({sum(s.state == 'firing' for s in job._evaluator.states())} firing)"
        )


async def _loop_beside(view: LiveView, cycles: int) -> None:
    """A fresh alert job's cycles (healthy, the mass event's first, every node's alert
    held) each in a worker thread, while the loop makes round trips to another: the longest
    and the 99th percentile of those, per phase, in ms."""
    hook = ReceiverSettings.model_validate({"name": "bench", "url": "http://127.0.0.1:9/"})
    job = AlertJob(Evaluator(builtin_rules()), FakeClock(start_wall=_T0), receivers=[hook])
    snapshot = view.snapshot()

    async def phase(times: list[float]) -> list[float]:
        trips: list[float] = []
        for now in times:
            work = asyncio.create_task(
                asyncio.to_thread(job._evaluate, snapshot, now, [], job.generation)
            )
            while not work.done():
                t = time.perf_counter()
                await asyncio.to_thread(int)
                trips.append((time.perf_counter() - t) * 1e3)
            await work
        return sorted(trips)

    await phase([_T0 + 0.5])
    stale = _T0 + 5 + 3 * 1.0 + 10  # as _job_cycles
    parts = [
        ("healthy", await phase([_T0 + 1 + c * 0.1 for c in range(cycles)])),
        ("mass event's first", await phase([stale])),
        ("every alert held", await phase([stale + 1 + c for c in range(cycles)])),
    ]
    print(
        "the event loop's round trips to a worker thread beside the job's cycles: "
        + "; ".join(
            f"{name} longest {trips[-1]:.1f} ms, p99 "
            f"{trips[min(len(trips) - 1, round(0.99 * (len(trips) - 1)))]:.1f} ms "
            f"({len(trips)})"
            for name, trips in parts
        )
    )


def _time_grouping(ev: Evaluator, now: float) -> None:
    """The default route's dispatcher over every firing alert: first cycle, next cycle."""
    firing = [
        GroupAlert(s.fingerprint, s.labels, s.annotations, s.fired_at or now)
        for s in ev.states()
        if s.state == "firing"
    ]
    dispatcher = Dispatcher([default_route(["bench"])])
    t = time.perf_counter()
    dispatcher.observe(firing, [], now)
    flushes, _, _ = dispatcher.flush(now + 5, lambda a: False)
    first_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    bodies = [
        group_body(receiver="bench", route_key=f.route.key, group_labels=f.group_labels,
                   alerts=f.alerts)
        for f in flushes
    ]  # fmt: skip
    body_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    dispatcher.observe(firing, [], now + 1)
    dispatcher.flush(now + 1, lambda a: False)
    next_ms = (time.perf_counter() - t) * 1e3
    print(
        f"grouping them (default route): first cycle {first_ms:.1f} ms, webhook body "
        f"{body_ms:.1f} ms ({sum(map(len, bodies)) / 1e6:.1f} MB), next cycle {next_ms:.1f} ms"
    )


if __name__ == "__main__":
    main()
