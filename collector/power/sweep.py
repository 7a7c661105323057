"""Sensitivity sweeps: how the answer moves as one plan parameter steps through a range."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from collector.power.model import Plan
from collector.power.plan import with_param
from collector.power.result import Constraint
from collector.power.solver import solve_max
from shared.errors import PlanError

__all__ = ["MAX_SWEEP_POINTS", "SweepPoint", "SweepSpec", "parse_sweep", "sweep"]

MAX_SWEEP_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """``PARAM=START:STOP:STEP``; ``STOP`` is included when a step lands on it."""

    param: str
    start: float
    stop: float
    step: float

    @property
    def count(self) -> int:
        """How many values :attr:`values` holds, counted without listing them."""
        return math.floor((self.stop - self.start) / self.step + 1e-9) + 1

    @property
    def values(self) -> tuple[float, ...]:
        """The swept values, rounded so that 0.1 steps do not drift."""
        return tuple(round(self.start + i * self.step, 12) for i in range(self.count))


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """The answer at one value of the swept parameter."""

    value: float
    nodes: int
    gpus: int
    total_it_w: float
    gpus_per_it_mw: float
    tiers: int
    leaves: int
    spines: int
    cores: int
    binding: Constraint | None
    """What stops one more node at this value."""
    feasible: bool
    """At least ``min_nodes`` nodes fit."""


def parse_sweep(text: str) -> SweepSpec:
    """Parse ``PARAM=START:STOP:STEP`` (e.g. ``node.gpu_w=600:1000:50``)."""
    param, sep, span = text.partition("=")
    bounds = span.split(":")
    if not sep or not param.strip() or len(bounds) != 3:
        raise PlanError(f"expected PARAM=START:STOP:STEP, got {text!r}", field="--sweep")
    try:
        start, stop, step = (float(b) for b in bounds)
    except ValueError as exc:
        raise PlanError(f"START, STOP and STEP must be numbers: {text!r}", field="--sweep") from exc
    if not all(math.isfinite(x) for x in (start, stop, step)):
        raise PlanError(f"START, STOP and STEP must be finite: {text!r}", field="--sweep")
    if step <= 0 or stop < start:
        raise PlanError(
            f"STEP must be > 0 and STOP ≥ START, got {start:g}:{stop:g}:{step:g}", field="--sweep"
        )
    if not math.isfinite((stop - start) / step):  # a subnormal STEP, or STOP - START > 1.8e308
        raise PlanError(
            f"{start:g}:{stop:g}:{step:g} is more than {MAX_SWEEP_POINTS:,} points; "
            "use a larger STEP",
            field="--sweep",
        )
    spec = SweepSpec(param.strip(), start, stop, step)
    if spec.count > MAX_SWEEP_POINTS:  # counted: listing 10^18 values first took all memory
        raise PlanError(
            f"{spec.count:,} points is more than {MAX_SWEEP_POINTS:,}; use a larger STEP",
            field="--sweep",
        )
    return spec


def sweep(plan: Plan, param: str, values: Sequence[float]) -> tuple[SweepPoint, ...]:
    """Solve the maximum at each value of ``param`` (a :func:`with_param` path).

    A value that makes the plan invalid (a negative power, ports that do not add up) raises
    :class:`PlanError`; a value where fewer than ``min_nodes`` fit gives a point with
    ``feasible`` false.
    """
    points = []
    for value in values:
        solution = solve_max(with_param(plan, param, value), require_min_nodes=False)
        points.append(
            SweepPoint(
                value=value,
                nodes=solution.nodes,
                gpus=solution.gpus,
                total_it_w=solution.power.total_it_w,
                gpus_per_it_mw=solution.gpus_per_it_mw,
                tiers=solution.fabric.tiers,
                leaves=solution.fabric.leaves,
                spines=solution.fabric.spines,
                cores=solution.fabric.cores,
                binding=solution.binding[0].constraint if solution.binding else None,
                feasible=solution.nodes >= plan.site.min_nodes,
            )
        )
    return tuple(points)
