"""The unreported parts of each node type, calibrated from the nodes that report both.

A node whose BMC (or PSU sensors) reports its input power and whose agent reports every GPU's
power and the CPU package power shows what no sensor reports: node - GPUs - CPU (DRAM, NVMe,
NICs, fans, PSU losses). The median of that residual over a type's nodes is the type's
calibrated figure for its nodes that report GPUs and CPU only; its quartiles are the spread.
A type with fewer than :data:`MIN_NODES` such nodes keeps its model (``rest_basis`` decides
which, see :func:`rest_figure`). Pure: no I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from collector.capacity.picture import RestBasis, RestFrom

__all__ = ["MIN_NODES", "RestFigure", "rest_figure"]

MIN_NODES: Final = 3
"""Nodes reporting both a type needs before its calibration replaces the model: one or two
nodes' residual is a sensor's error as much as a figure."""


@dataclass(frozen=True, slots=True)
class RestFigure:
    """What one node's unreported parts count at, and where that came from."""

    rest_w: float
    rest_from: RestFrom
    nodes: int = 0
    """Nodes the calibration came from (0: the model)."""
    p25_w: float | None = None
    p75_w: float | None = None


def rest_figure(
    basis: RestBasis, parts_w: float, slack_w: float, residuals: Sequence[float]
) -> RestFigure:
    """The figure of one node type.

    ``parts_w``: the model's unreported parts at their maximum (DRAM, NVMe, NICs, aux);
    ``slack_w``: the nameplate above the parts' sum; ``residuals``: node - GPUs - CPU of the
    type's nodes that report all three (used only on ``basis`` ``calibrated``).
    """
    if basis == "nameplate":
        return RestFigure(parts_w + slack_w, "nameplate")
    if basis == "calibrated" and len(residuals) >= MIN_NODES:
        q1, median, q3 = statistics.quantiles(residuals, n=4, method="inclusive")
        return RestFigure(max(median, 0.0), "calibrated", len(residuals), q1, q3)
    return RestFigure(parts_w, "model")
