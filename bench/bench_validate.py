"""Validation CPU per 8-GPU sample: :meth:`Ingestor.handle` as the collector runs it. Prints
figures (not pass/fail).

The event loop's share of a drain (``bench_pipeline.py --mode drain``) is mostly this call:
decode, check, feed the live view, count, pack the row. The collector's own set-up is
reproduced (one registry with the ingest metrics, a live view, the default ingest budget,
rollups on); ``--nodes`` simulated nodes (:mod:`agent.simulate`, as the pipeline bench) send
``--ticks`` samples each, in tick order, pre-encoded. Each round starts a fresh view and
ingestor and times every message in CPU time (``time.process_time``, the garbage collector
included, as in the daemon); prints each round and the best, in microseconds a sample.

On a loaded machine (2 shared cores) CPU time varies by +-20 % from run to run; instructions
do not. ``--callgrind`` runs one warm-up round, then one round inside :func:`functools.reduce`,
which callgrind can be told to count alone::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=cg.out .venv/bin/python bench/bench_validate.py --nodes 250 \
        --callgrind
    # instructions per sample: the "summary:" line of cg.out / (nodes x ticks)

``--steps`` (with ``--callgrind``) then counts the parts of that call one by one, each in a
round of its own (inside :func:`functools.reduce` too, on the same messages, its inputs made
beforehand): the decode, the packing of the payload, the one pass over the GPUs, the row,
the live view's update, the ingest budget. Add ``--dump-after=functools_reduce`` to the
valgrind line above: callgrind then writes one file per round, ``cg.out.1`` (the whole call)
to ``cg.out.7``, in the order the bench prints. Each round's count includes ~1,000
instructions a sample of its own calls (reduce's, a lambda's).

Usage: ``.venv/bin/python bench/bench_validate.py [--nodes 2500] [--ticks 8] [--rounds 5]
[--callgrind [--steps]]``
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from agent.simulate import FleetSimulator
from collector.ingest.budgets import NodeBudgets
from collector.ingest.metrics import IngestMetrics
from collector.ingest.validate import Ingestor, sample_row
from collector.live import LiveView
from collector.nodefacts import gpu_facts
from collector.store.codec import pack_sample
from shared.budget import NodeBudget
from shared.clock import FakeClock
from shared.logging import configure_logging
from shared.schema import decode_sample, encode
from shared.topics import sample_topic

__all__ = ["main"]

_T0 = 1.8e9


def _messages(nodes: int, ticks: int) -> list[tuple[str, bytes]]:
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=7, interval_s=1.0)
    topics = [sample_topic(node) for node in sim.node_ids]
    out: list[tuple[str, bytes]] = []
    for t in range(ticks):
        seq = sim.next_seq()
        out += [(topics[i], encode(sim.sample(i, _T0 + t, seq))) for i in range(nodes)]
    return out


def _ingestor(nodes: int) -> Ingestor:
    """A fresh ingestor set up as the collector sets up its own."""
    return Ingestor(
        FakeClock(start_wall=_T0 + 10),
        live=LiveView(max_nodes=max(nodes, 50_000)),
        metrics=IngestMetrics(CollectorRegistry(auto_describe=False)),
        budget=NodeBudget(),
    )


def _all_valid(ing: Ingestor, messages: list[tuple[str, bytes]]) -> None:
    counted = ing.metrics.counter_rows()["samples"]
    if counted != len(messages):
        raise SystemExit(f"{len(messages) - counted} samples were not valid: fix the bench")


def _round(messages: list[tuple[str, bytes]], nodes: int) -> float:
    """CPU microseconds per message through a fresh ingestor."""
    ing = _ingestor(nodes)
    handle = ing.handle
    t0 = time.process_time()
    for topic, payload in messages:
        handle(topic, payload)
    took = time.process_time() - t0
    _all_valid(ing, messages)
    return took / len(messages) * 1e6


def _counted_round(messages: list[tuple[str, bytes]], nodes: int) -> None:
    """One round inside functools.reduce, after a warm-up round (see the module docstring)."""
    _round(messages, nodes)
    ing = _ingestor(nodes)
    handle = ing.handle
    functools.reduce(lambda _, m: handle(m[0], m[1]), messages, None)
    _all_valid(ing, messages)


def _count(step: Callable[[Any], object], items: list[Any]) -> None:
    """``step`` of each item, inside functools.reduce (what callgrind counts)."""
    functools.reduce(lambda _, x: step(x), items, None)


def _counted_steps(messages: list[tuple[str, bytes]], nodes: int) -> list[str]:
    """One round per part of :meth:`Ingestor.handle`, each inside functools.reduce (see the
    module docstring); returns their names, in order."""
    now = _T0 + 10
    samples = [decode_sample(payload) for _, payload in messages]
    facts = [gpu_facts(s.gpus) for s in samples]
    packed = [pack_sample(s) for s in samples]
    view = LiveView(max_nodes=max(nodes, 50_000))
    budgets = NodeBudgets(NodeBudget(), keep=view.max_nodes)
    steps: list[tuple[str, Callable[[Any], object], list[Any]]] = [
        ("decode_sample", lambda m: decode_sample(m[1]), messages),
        ("pack_sample", pack_sample, samples),
        ("gpu_facts", lambda s: gpu_facts(s.gpus), samples),
        (
            "sample_row",
            lambda x: sample_row(x[0], x[1], now, facts=x[2]),
            [*zip(samples, packed, facts, strict=True)],
        ),
        (
            "live.on_sample",
            lambda x: view.on_sample(x[0], now, facts=x[1]),
            [*zip(samples, facts, strict=True)],
        ),
        ("budget take", lambda m: budgets.take(m[0], len(m[1]), 0.0), messages),
    ]
    for _, step, items in steps:
        _count(step, items)
    return [name for name, _, _ in steps]


def main() -> None:
    """Time the rounds; print µs per sample."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=2_500, help="8-GPU nodes (default 2500)")
    p.add_argument("--ticks", type=int, default=8, help="samples per node (default 8)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--callgrind", action="store_true", help="one round for callgrind to count (see above)"
    )
    p.add_argument("--steps", action="store_true", help="with --callgrind: then one round per part")
    args = p.parse_args()
    configure_logging("error")
    messages = _messages(args.nodes, args.ticks)
    if args.callgrind:
        _counted_round(messages, args.nodes)
        names = ["Ingestor.handle"]
        if args.steps:
            names += _counted_steps(messages, args.nodes)
        print(f"{len(messages):,} samples; rounds counted: " + ", ".join(names))
        return
    rounds = [_round(messages, args.nodes) for _ in range(args.rounds)]
    if args.json:
        print(json.dumps({"us_per_sample": rounds, "best": min(rounds)}))
        return
    print(f"Ingestor.handle, {len(messages):,} 8-GPU samples of {args.nodes:,} nodes, CPU time")
    print("  rounds (us/sample)  " + "  ".join(f"{r:.2f}" for r in rounds))
    print(f"  best                {min(rounds):.2f}")


if __name__ == "__main__":
    main()
