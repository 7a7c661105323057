"""The site plan as the live capacity check reads it: the solver's plan plus ``[capacity]``.

``[capacity]`` (optional, ignored by ``collector solve``) says how live nodes map onto the
plan's node types and racks::

    [capacity]
    fallback_type = "DGX-H100"   # unmatched nodes count as this type (default: the largest)
    fallback_w = 12000           # ... at this power (default: that type's nameplate)

    [[capacity.assign]]          # explicit: node names or fnmatch patterns -> a node type
    node_type = "DGX-H100"
    nodes = ["x1000c*", "gpu-00[0-9]"]

    [[capacity.match]]           # by inventory: every field given must match
    node_type = "HGX-B200"
    gpu_model = "B200"           # case-insensitive substring of the GPUs' name
    gpus = 8                     # GPU count
    cpu_model = "Xeon"           # case-insensitive substring of the CPU model

    [[capacity.racks]]           # racks by pattern (default: the xname cabinet, x1000...)
    name = "row-a-1"
    nodes = ["gpu-00*"]
    limit_kw = 41                # default: [site] rack_power_kw

The racks are every consumer's (:func:`collector.nodefacts.rack_of`: these rules first, then
the xname cabinet): the picture's rack limits and PDU readings, ``/sd``'s ``rack`` label,
``collector inventory`` and ``pool apply``'s fewest racks (:func:`rack_rules`).

Order of matching: explicit assignment, then ``match`` rules in order, then (no rule
matched) the only node type with the node's GPU count. Every key is checked: an unknown
key or a wrong type raises :class:`~shared.errors.PlanError` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import translate
from pathlib import Path

from collector.nodefacts import rack_name, rack_of
from collector.power import NodeType, Plan, parse_plan
from collector.power.plan import load_plan_file
from shared.errors import PlanError

__all__ = [
    "Assign",
    "CapacityPlan",
    "Match",
    "RackRule",
    "load_capacity_plan",
    "parse_capacity",
    "rack_rules",
]


@dataclass(frozen=True, slots=True)
class Assign:
    """Nodes named by ``patterns`` (fnmatch) are of ``node_type``."""

    node_type: str
    patterns: tuple[str, ...]
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Match:
    """A node whose inventory matches every given field is of ``node_type``."""

    node_type: str
    gpu_model: str | None = None
    gpus: int | None = None
    cpu_model: str | None = None


@dataclass(frozen=True, slots=True)
class RackRule:
    """Nodes named by ``patterns`` stand in rack ``name`` (limit in W, ``None``: the site's)."""

    name: str
    patterns: tuple[str, ...]
    regex: re.Pattern[str]
    limit_w: float | None


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """The solver's plan plus how live nodes map onto its node types and racks."""

    plan: Plan
    assign: tuple[Assign, ...] = ()
    match: tuple[Match, ...] = ()
    racks: tuple[RackRule, ...] = ()
    fallback_type: str = ""
    fallback_w: float = 0.0
    source: str = ""
    """The plan file, for messages."""

    @property
    def types(self) -> dict[str, NodeType]:
        """Node types by name."""
        return {t.name: t for t in self.plan.node_types}

    @property
    def rack_limit_w(self) -> float | None:
        """The site's rack power limit in W (``[site] rack_power_kw``), if any."""
        kw = self.plan.site.rack_power_kw
        return kw * 1e3 if kw is not None else None

    def rack_of(self, node: str) -> tuple[str, float | None]:
        """The node's rack (:func:`collector.nodefacts.rack_of` over :attr:`racks`) and its
        limit in W (the first ``limit_kw`` a rule of that name gives, else the site's);
        ``"-"`` and no limit when no rack is known."""
        rack = rack_of(node, self.racks)
        if rack is None:
            return "-", None
        limits = (r.limit_w for r in self.racks if r.name == rack and r.limit_w is not None)
        return rack, next(limits, self.rack_limit_w)

    def assigned_type(self, node: str) -> str | None:
        """The node type ``[[capacity.assign]]`` gives ``node``, if any."""
        for a in self.assign:
            if a.regex.match(node):
                return a.node_type
        return None


def _patterns(raw: object, path: str) -> tuple[tuple[str, ...], re.Pattern[str]]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        raise PlanError("must be a non-empty list of node names or fnmatch patterns", field=path)
    pats = tuple(str(p) for p in raw)
    return pats, re.compile("|".join(f"(?:{translate(p)})" for p in pats))


def _table(
    raw: object, path: str, known: Sequence[str], required: Sequence[str]
) -> dict[str, object]:
    if not isinstance(raw, Mapping):
        raise PlanError(f"must be a table, got {raw!r}", field=path)
    for key in raw:
        if key not in known:
            raise PlanError(
                f"unknown key; expected one of: {', '.join(known)}", field=f"{path}.{key}"
            )
    for key in required:
        if key not in raw:
            raise PlanError("missing (required)", field=f"{path}.{key}")
    return dict(raw)


def _str(raw: object, path: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise PlanError(f"must be a non-empty string, got {raw!r}", field=path)
    return raw


def _number(raw: object, path: str, *, whole: bool = False) -> float:
    ok = isinstance(raw, int) if whole else isinstance(raw, int | float)
    if isinstance(raw, bool) or not ok or not math.isfinite(float(raw)) or float(raw) <= 0:  # type: ignore[arg-type]
        kind = "whole number" if whole else "number"
        raise PlanError(f"must be a {kind} > 0, got {raw!r}", field=path)
    return float(raw)  # type: ignore[arg-type]


def _type_name(raw: object, path: str, plan: Plan) -> str:
    name = _str(raw, path)
    known = [t.name for t in plan.node_types]
    if name not in known:
        raise PlanError(
            f"no node type {name!r} in the plan (known: {', '.join(known)})", field=path
        )
    return name


def _list(raw: object, path: str) -> list[object]:
    if not isinstance(raw, list):
        raise PlanError("must be a list of tables ([[...]])", field=path)
    return raw


def parse_capacity(data: Mapping[str, object], *, source: str = "") -> CapacityPlan:
    """A checked :class:`CapacityPlan` from a parsed plan document."""
    plan = parse_plan(data)
    cap = _table(
        data.get("capacity", {}),
        "capacity",
        ("fallback_type", "fallback_w", "assign", "match", "racks"),
        (),
    )
    assign = []
    for i, raw in enumerate(_list(cap.get("assign", []), "capacity.assign")):
        path = f"capacity.assign[{i}]"
        t = _table(raw, path, ("node_type", "nodes"), ("node_type", "nodes"))
        pats, regex = _patterns(t["nodes"], f"{path}.nodes")
        assign.append(Assign(_type_name(t["node_type"], f"{path}.node_type", plan), pats, regex))
    match = []
    for i, raw in enumerate(_list(cap.get("match", []), "capacity.match")):
        path = f"capacity.match[{i}]"
        t = _table(raw, path, ("node_type", "gpu_model", "gpus", "cpu_model"), ("node_type",))
        if len(t) == 1:
            raise PlanError("give at least one of gpu_model, gpus, cpu_model", field=path)
        gpus = t.get("gpus")
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
            raise PlanError(f"must be a whole number ≥ 0, got {gpus!r}", field=f"{path}.gpus")
        match.append(
            Match(
                _type_name(t["node_type"], f"{path}.node_type", plan),
                _str(t["gpu_model"], f"{path}.gpu_model").lower() if "gpu_model" in t else None,
                gpus,
                _str(t["cpu_model"], f"{path}.cpu_model").lower() if "cpu_model" in t else None,
            )
        )
    racks = []
    for i, raw in enumerate(_list(cap.get("racks", []), "capacity.racks")):
        path = f"capacity.racks[{i}]"
        t = _table(raw, path, ("name", "nodes", "limit_kw"), ("name", "nodes"))
        pats, regex = _patterns(t["nodes"], f"{path}.nodes")
        limit = _number(t["limit_kw"], f"{path}.limit_kw") * 1e3 if "limit_kw" in t else None
        racks.append(RackRule(rack_name(_str(t["name"], f"{path}.name")), pats, regex, limit))
    largest = max(plan.node_types, key=lambda nt: nt.max_w)
    fallback_type = (
        _type_name(cap["fallback_type"], "capacity.fallback_type", plan)
        if "fallback_type" in cap
        else largest.name
    )
    fallback_w = (
        _number(cap["fallback_w"], "capacity.fallback_w")
        if "fallback_w" in cap
        else next(t.max_w for t in plan.node_types if t.name == fallback_type)
    )
    return CapacityPlan(
        plan=plan,
        assign=tuple(assign),
        match=tuple(match),
        racks=tuple(racks),
        fallback_type=fallback_type,
        fallback_w=fallback_w,
        source=source,
    )


def load_capacity_plan(path: Path) -> CapacityPlan:
    """Read and check a plan file (``.toml`` or ``.json``) with its ``[capacity]`` table (an
    error names the file)."""
    source = str(path.resolve())
    return load_plan_file(path, lambda document: parse_capacity(document, source=source))


def rack_rules(plan: Path | None) -> tuple[RackRule, ...]:
    """The operator's racks in the plan file ``plan`` (``[[capacity.racks]]``; none without a
    plan), for the consumers of :func:`collector.nodefacts.rack_of` outside the picture."""
    return () if plan is None else load_capacity_plan(plan).racks
