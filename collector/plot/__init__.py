"""``collector plot``'s pictures (matplotlib, the optional ``plot`` extra).

- :mod:`collector.plot.figures`: a node's or the fleet's utilisation and power over time,
  and capacity history (IT draw against the cap).
- :mod:`collector.plot.treemap`: site -> rack -> node -> GPU, coloured by power.
"""

from __future__ import annotations

__all__: list[str] = []
