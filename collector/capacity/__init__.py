"""Live power and headroom under the site's cap, calling the solver (:mod:`collector.power`).

- :mod:`collector.capacity.config`: the site plan plus ``[capacity]`` (node-type matching,
  racks, the fallback for unmatched nodes).
- :mod:`collector.capacity.compute`: each node's draw, the fleet's fabric and headroom.
- :mod:`collector.capacity.picture`: what it answers (:class:`Picture`).
- :mod:`collector.capacity.whatif`: ``--add`` / ``--remove`` through the solver.
- :mod:`collector.capacity.job`: the collector's periodic snapshot.
- :mod:`collector.capacity.rules`: the capacity alert rules.
"""

from __future__ import annotations

from collector.capacity.compute import NodeModel, TypeMatcher, compute_picture, fleet_solution
from collector.capacity.config import CapacityPlan, load_capacity_plan, parse_capacity
from collector.capacity.picture import (
    NodeDraw,
    Picture,
    RackDraw,
    StaleBasis,
    TypeDraw,
    picture_from_dict,
    picture_to_dict,
)

__all__ = [
    "CapacityPlan",
    "NodeDraw",
    "NodeModel",
    "Picture",
    "RackDraw",
    "StaleBasis",
    "TypeDraw",
    "TypeMatcher",
    "compute_picture",
    "fleet_solution",
    "load_capacity_plan",
    "parse_capacity",
    "picture_from_dict",
    "picture_to_dict",
]
