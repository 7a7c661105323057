"""governance.usage.FactsCache: measures reused while the live view holds the same sample,
without holding the sample itself (each node's previous one outlived the view's next one:
~6.7 KB an 8-GPU node, 84 MB at 12,500 nodes)."""

from __future__ import annotations

import time

import msgspec

from agent.simulate import FleetSimulator
from collector.governance.usage import FactsCache, node_facts
from collector.live import LiveView
from collector.nodefacts import Staleness
from shared.schema import Sample

T0 = float(int(time.time()))
STALENESS = Staleness(intervals=3, expected_interval_s=5)


def test_measures_are_reused_for_the_same_sample_and_remade_for_the_next() -> None:
    sim = FleetSimulator(2, seed=3, interval_s=5)
    view = LiveView()
    first = sim.sample(0, T0 - 1, 1)
    view.on_status(first.node, "online", T0 - 1)
    view.on_sample(first, T0 - 1)
    cache = FactsCache()
    _, m1 = node_facts(view.nodes(), T0, staleness=STALENESS, busy_util_pct=10.0, cache=cache)
    _, m2 = node_facts(view.nodes(), T0, staleness=STALENESS, busy_util_pct=10.0, cache=cache)
    assert m2[first.node] is m1[first.node]  # the same sample: not measured again
    idle = msgspec.structs.replace(
        first,
        ts=T0,
        seq=2,
        gpus=tuple(msgspec.structs.replace(g, util_pct=0.0) for g in first.gpus),
    )
    view.on_sample(idle, T0)
    _, m3 = node_facts(view.nodes(), T0, staleness=STALENESS, busy_util_pct=10.0, cache=cache)
    assert m3[first.node] is not m1[first.node]
    assert m3[first.node].busy_gpus == 0


def test_the_cache_holds_no_sample() -> None:
    """What it keeps of a node's sample is a key and the measures: the view's next sample
    frees the one before, as if no evaluation had read it."""
    sim = FleetSimulator(3, seed=3, interval_s=5)
    view = LiveView()
    for i in range(3):
        s = sim.sample(i, T0 - 1, 1)
        view.on_status(s.node, "online", T0 - 1)
        view.on_sample(s, T0 - 1)
    cache = FactsCache()
    node_facts(view.nodes(), T0, staleness=STALENESS, busy_util_pct=10.0, cache=cache)
    held = [x for pair in cache.measured.values() for x in pair]
    assert held
    assert not any(isinstance(x, Sample) for x in held)
