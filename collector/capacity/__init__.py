"""Live power and headroom under the site's cap, calling the solver (:mod:`collector.power`).

- :mod:`collector.capacity.config`: the site plan plus ``[capacity]`` (node-type matching,
  racks, the fallback for unmatched nodes).
- :mod:`collector.capacity.node`: one node's type and what it counts at.
- :mod:`collector.capacity.compute`: the fleet's draw per type and rack, its fabric and
  headroom.
- :mod:`collector.capacity.picture`: what it answers (:class:`Picture`).
- :mod:`collector.capacity.whatif`: ``--add`` / ``--remove`` through the solver.
- :mod:`collector.capacity.job`: the collector's periodic snapshot.
- :mod:`collector.capacity.rules`: the capacity alert rules.
"""

from __future__ import annotations

# No re-exports: `collector capacity` showing a snapshot imports only the picture module
# (its dataclasses), not the solver, the live view and the wire schema.
__all__: list[str] = []
