"""A flood of invented node names against a full fleet: validation CPU per message. Prints
figures (not pass/fail).

A broker that lets any client write any node's topics lets one client invent node names
without end. The collector tracks at most ``max_nodes`` nodes (:class:`collector.live.
LiveView`); a message of a new node past that is rejected as ``fleet_full`` by the validator
(:class:`collector.ingest.validate.Ingestor`) before it is decoded. The live view is filled
with ``--nodes`` real nodes (a status each, as a running fleet's), then ``--messages``
8-GPU samples of as many invented names go through :meth:`Ingestor.handle`, then the same
through the view alone (:meth:`LiveView.on_status` of a new name): microseconds a message,
best of ``--rounds``. A held node's sample is timed too, for scale.

Usage: ``.venv/bin/python bench/bench_flood.py [--nodes 50000] [--messages 5000]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simulate import FleetSimulator
from collector.counters import value
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from shared.clock import FakeClock
from shared.logging import configure_logging
from shared.schema import encode
from shared.topics import sample_topic

__all__ = ["main"]


def main() -> None:
    """Fill a view, flood it, print µs per message."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=50_000, help="real nodes held (max_nodes)")
    p.add_argument("--messages", type=int, default=5_000, help="invented names sent")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    configure_logging("error")  # one warning per reason every 10 s: not what is timed
    fleet = FleetSimulator(args.nodes, gpus_per_node=0, seed=1)
    view = LiveView(max_nodes=args.nodes)
    for node in fleet.node_ids:
        view.on_status(node, "online", 1.8e9)
    ing = Ingestor(FakeClock(start_wall=1.8e9 + 1), live=view)
    invented = FleetSimulator(args.messages, gpus_per_node=8, seed=2, first_index=args.nodes)
    flood = [
        (sample_topic(node), encode(invented.sample(k, 1.8e9, 0)))
        for k, node in enumerate(invented.node_ids)
    ]
    held = FleetSimulator(1, gpus_per_node=8, seed=2)  # its node is the fleet's first
    mine = (sample_topic(held.node_ids[0]), encode(held.sample(0, 1.8e9, 0)))
    names = [f"invented-{k}" for k in range(args.messages)]

    def best(run: Callable[[], object]) -> float:
        times: list[float] = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) / args.messages * 1e6)
        return min(times)

    rejected = best(lambda: [ing.handle(t, p) for t, p in flood])

    def statuses() -> None:
        for n in names:
            view.on_status(n, "online", 1.8e9)

    refused = best(statuses)
    stored = best(lambda: [ing.handle(*mine) for _ in flood])
    print(f"fleet: {args.nodes:,} real nodes held; {args.messages:,} messages of invented names")
    print(f"  validator, an invented name's 8-GPU sample (fleet_full)  {rejected:8.2f} us")
    print(f"  live view alone, an invented name refused                 {refused:8.2f} us")
    print(f"  validator, a held node's 8-GPU sample (for scale)        {stored:8.2f} us")
    print(f"  rejected as fleet_full: {value(ing.metrics.rejected_by['fleet_full']):,.0f}")


if __name__ == "__main__":
    main()
