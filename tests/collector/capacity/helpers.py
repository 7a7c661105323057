"""The simulator's truth for capacity tests, and a live view filled from it."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from agent.simulate import FleetSimulator
from collector.capacity.config import CapacityPlan, load_capacity_plan
from collector.capacity.node import NodeModel
from collector.capacity.picture import RestBasis
from collector.live import LiveView
from shared.schema import Sample

PLAN: Final = Path(__file__).parents[2] / "data" / "power" / "capacity_site.toml"


def site_plan() -> CapacityPlan:
    """The capacity tests' site plan (DGX-H100, HGX-B200, CPU-2S; xname cabinets)."""
    return load_capacity_plan(PLAN)


def true_node_w(sample: Sample, rest_w: float) -> float:
    """A simulated node's true draw: its GPUs' interval power (the simulator's own model),
    its CPU package power, and the parts no sensor reports (the type's model)."""
    gpus = sum(g.power_interval_w or 0.0 for g in sample.gpus)
    return gpus + (sample.cpu_power_w or 0.0) + rest_w


def dgx_rest_w(cplan: CapacityPlan, basis: RestBasis = "model") -> float:
    """DGX-H100's unreported parts: DRAM, NVMe, NICs, aux (``model``; also what
    ``calibrated`` counts with no node reporting its input power), plus the nameplate above
    the parts' sum on ``nameplate``."""
    return NodeModel.of(cplan.types["DGX-H100"]).rest_w(basis)


def filled_view(
    sim: FleetSimulator, ts: float, seq: int = 0, *, received: float | None = None
) -> tuple[LiveView, list[Sample]]:
    """A live view holding every simulated node's inventory and one sample at ``ts``."""
    view = LiveView()
    samples = []
    for i in range(len(sim.node_ids)):
        view.on_inventory(sim.inventory(i, ts), ts)
        s = sim.sample(i, ts, seq)
        samples.append(s)
        view.on_sample(s, ts if received is None else received)
    return view, samples
