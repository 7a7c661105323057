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

Usage: ``.venv/bin/python bench/bench_validate.py [--nodes 2500] [--ticks 8] [--rounds 5]
[--callgrind]``
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from agent.simulate import FleetSimulator
from collector.ingest.metrics import IngestMetrics
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from shared.budget import NodeBudget
from shared.clock import FakeClock
from shared.logging import configure_logging
from shared.schema import encode
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
    args = p.parse_args()
    configure_logging("error")
    messages = _messages(args.nodes, args.ticks)
    if args.callgrind:
        _counted_round(messages, args.nodes)
        print(f"{len(messages):,} samples")
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
