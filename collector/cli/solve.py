"""``collector solve``: how many GPUs fit under a power cap, with a fabric that can be built.

Three modes: the maximum (default), ``--sweep`` (one parameter stepped through a range,
optionally drawn with ``--plot``) and ``--fixed`` (a given fleet's power, fabric and
headroom). The solver itself is :mod:`collector.power`; this module reads flags, prints and
draws. The solver is imported only when a plan is solved, so ``collector solve --help`` (and
``collector --help``) stay fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.cli import COMMANDS
from shared.errors import ConfigError, PlanError

if TYPE_CHECKING:
    from collector.power import FlatComparison, Plan, Solution, SweepPoint, SweepSpec

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Size a GPU cluster under a fixed power cap: the most nodes and GPUs that fit, with a fabric
that can really be built (switch radix, tiers, scalable units, rails, planes, optics), racks,
PUE and a reserve margin. The answer names the binding constraint and breaks the power down.

The plan is JSON or TOML: capwatch's own layout ([site], [[node_types]], [fabric]) or the
old sizing tool's JSON config, unchanged."""

_EPILOG = """\
examples:
  collector solve --config plan.toml
  collector solve --config old-tool.json --fabric-model flat     # the old tool's numbers
  collector solve --config plan.toml --sweep node.gpu_w=600:1000:50 --plot gpu_w.png
  collector solve --config plan.toml --sweep it_cap_mw=1:50:1 --json
  collector solve --config plan.toml --fixed DGX-H100=127        # a given fleet's headroom

sweep parameters: any numeric plan field, e.g. it_cap_mw, pue, reserve_fraction,
rack_power_kw, node.gpu_w (every node type), node_types[0].gpus_per_node,
fabric.leaf.ports, fabric.planes, fabric.optics.module_w.

exit status: 0 done (with --fixed: the fleet fits), 1 the --fixed fleet does not fit,
2 a bad flag or plan (one line naming the field)."""

_CONSTRAINT_WORDS = {
    "it_power": "IT power cap",
    "facility_power": "facility power cap (through PUE)",
    "rack_power": "rack count, racks filled by power",
    "rack_space": "rack count, racks filled by space",
    "fabric_radix": "fabric radix/tiers",
}


def _sweep_arg(text: str) -> SweepSpec:
    from collector.power import parse_sweep  # noqa: PLC0415

    try:
        return parse_sweep(text)
    except PlanError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{exc.field}: ")) from exc


def _fixed_arg(text: str) -> list[tuple[str | None, int]]:
    """``TYPE=COUNT[,TYPE=COUNT...]`` or a bare ``COUNT`` (plans with one node type)."""
    from collector.power import node_count  # noqa: PLC0415

    out: list[tuple[str | None, int]] = []
    for item in text.split(","):
        name, sep, count = item.strip().rpartition("=")
        if sep and not name.strip():
            raise argparse.ArgumentTypeError(f"missing node type name in {item!r}")
        try:
            n = node_count(count)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: the node count {exc}") from None
        out.append((name.strip() if sep else None, n))
    return out


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector solve``."""
    parser = sub.add_parser(
        "solve",
        help=COMMANDS["solve"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="PLAN",
        help="plan file, .json or .toml (the old sizing tool's JSON config works unchanged)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )
    parser.add_argument(
        "--fabric-model",
        choices=("fat_tree", "flat"),
        help="override the plan's fabric model: fat_tree (default; radix, tiers, SUs) or "
        "flat (the old tool's model, reproduces its numbers)",
    )
    parser.add_argument(
        "--power-basis",
        choices=("max", "typical"),
        help="override the plan's power basis: nameplate maximum or typical draw",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sweep",
        type=_sweep_arg,
        metavar="PARAM=START:STOP:STEP",
        help="solve at each value of one plan parameter (STOP included), e.g. "
        "node.gpu_w=600:1000:50 or it_cap_mw=1:50:1",
    )
    mode.add_argument(
        "--fixed",
        type=_fixed_arg,
        action="append",
        metavar="TYPE=COUNT[,...]",
        help="check a given fleet instead of finding the maximum: its total power, fabric "
        "and headroom under the cap (a bare COUNT when the plan has one node type; repeatable)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="with --sweep: draw GPUs against the swept parameter, binding constraint marked "
        "(needs matplotlib: pip install 'capwatch[plot]')",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``collector solve``; 0 done, 1 a ``--fixed`` fleet does not fit."""
    from dataclasses import replace  # noqa: PLC0415

    from collector.power import compare_with_flat, load_plan, solve_fixed, solve_max  # noqa: PLC0415

    config: Path = args.config
    plan = load_plan(config)
    if args.fabric_model is not None:
        plan = replace(plan, fabric=replace(plan.fabric, model=args.fabric_model))
    if args.power_basis is not None:
        plan = replace(plan, site=replace(plan.site, power_basis=args.power_basis))
    if args.plot is not None and args.sweep is None:
        raise ConfigError("--plot draws a sweep; add --sweep PARAM=START:STOP:STEP", field="--plot")
    if args.sweep is not None:
        return _run_sweep(plan, args.sweep, as_json=args.json, plot=args.plot)
    if args.fixed is not None:
        counts = _fixed_counts(plan, args.fixed)
        solution = solve_fixed(plan, counts)
        _print_solution(config, plan, solution, None, as_json=args.json)
        return 0 if solution.fits else 1
    solution = solve_max(plan)
    comparison = compare_with_flat(plan, solution)
    _print_solution(config, plan, solution, comparison, as_json=args.json)
    return 0


def _fixed_counts(plan: Plan, specs: Sequence[list[tuple[str | None, int]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for given, n in (item for spec in specs for item in spec):
        name = given
        if name is None:
            if len(plan.node_types) != 1:
                names = ", ".join(t.name for t in plan.node_types)
                raise ConfigError(
                    f"--fixed: the plan has several node types ({names}); give TYPE=COUNT",
                    field="--fixed",
                )
            name = plan.node_types[0].name
        if name in counts:
            raise ConfigError(f"--fixed: node type {name!r} given twice", field="--fixed")
        known = [t.name for t in plan.node_types]
        if name not in known:
            raise ConfigError(
                f"--fixed: the plan has no node type {name!r} (known: {', '.join(known)})",
                field="--fixed",
            )
        counts[name] = n
    return counts


def _w(watts: float) -> str:
    return f"{watts:,.0f} W"


def _json_solution(
    config: Path, plan: Plan, solution: Solution, comparison: FlatComparison | None
) -> dict[str, Any]:
    from dataclasses import asdict  # noqa: PLC0415

    return {
        "config": str(config),
        "old_tool_config": plan.legacy,
        "solution": asdict(solution),
        "flat_comparison": asdict(comparison) if comparison is not None else None,
    }


def _print_solution(
    config: Path,
    plan: Plan,
    solution: Solution,
    comparison: FlatComparison | None,
    *,
    as_json: bool,
) -> None:
    if as_json:
        print(json.dumps(_json_solution(config, plan, solution, comparison), indent=2))
        return
    print("\n".join(_solution_lines(config, plan, solution, comparison)))


def _budget_lines(s: Solution) -> list[str]:
    b = s.budget
    caps = []
    if b.it_cap_w is not None:
        caps.append(f"IT cap {b.it_cap_w / 1e6:g} MW")
    if b.facility_cap_w is not None and b.pue is not None:
        caps.append(f"facility cap {b.facility_cap_w / 1e6:g} MW at PUE {b.pue:g}")
    if b.reserve_fraction:
        caps.append(f"less a {b.reserve_fraction:.1%} reserve")
    sign = "headroom" if s.headroom_w >= 0 else "OVER the budget by"
    return [
        f"  IT budget {_w(b.it_budget_w)} ({', '.join(caps)}); "
        f"total IT {_w(s.power.total_it_w)}; {sign} {_w(abs(s.headroom_w))}",
        f"  GPUs per MW of IT power: {s.gpus_per_it_mw:,.1f}",
    ]


def _fleet_lines(s: Solution) -> list[str]:
    lines = ["Nodes"]
    for g in s.fleet:
        c = g.components
        parts = [
            f"GPU {c.gpu_w:,.0f}",
            f"CPU {c.cpu_w:,.0f}",
            f"DRAM {c.dram_w:,.0f}",
            f"NVMe {c.nvme_w:,.0f}",
            f"NICs {c.nic_w:,.0f}",
            f"aux {c.aux_w:,.0f}",
        ]
        if c.other_w:
            parts.append(f"other {c.other_w:,.0f}")
        lines.append(
            f"  {g.node_type}: {g.nodes:,} x {_w(g.node_w)} = {_w(g.power_w)}, {g.gpus:,} GPUs"
        )
        lines.append(f"    by component (W): {' · '.join(parts)}")
    return lines


def _fabric_lines(s: Solution) -> list[str]:
    f = s.fabric
    if f.model == "flat":
        return [
            "Fabric: flat leaf-spine (the old tool's model: no radix check)",
            f"  host ports {f.host_links:,} · leaves {f.leaves:,} · uplinks "
            f"{f.leaf_spine_links:,} · spines {f.spines:,}",
        ]
    su = f" in {f.scalable_units} scalable units" if f.scalable_units is not None else ""
    tiers = f"{f.tiers} tier{'s' if f.tiers != 1 else ''}" if f.feasible else "cannot be built"
    spine_word = "aggregation" if f.tiers == 3 else "spines"
    lines = [
        f"Fabric: fat tree, {tiers}, {f.planes} plane{'s' if f.planes != 1 else ''}, "
        f"{f.rails} rail{'s' if f.rails != 1 else ''}{su}",
        f"  host links {f.host_links:,} · leaves {f.leaves:,} · {spine_word} {f.spines:,}"
        + (f" · cores {f.cores:,}" if f.cores else ""),
        f"  leaf-spine links {f.leaf_spine_links:,}"
        + (f" · spine-core links {f.spine_core_links:,}" if f.spine_core_links else "")
        + f" · optic modules {f.optics_modules:,} · DAC cables {f.dac_cables:,}",
        f"  per plane: two tiers connect at most {f.two_tier_max_leaves:,} leaves, "
        f"three tiers {f.three_tier_max_leaves:,}",
    ]
    if f.reason:
        lines.append(f"  {f.reason}")
    return lines


def _power_lines(s: Solution) -> list[str]:
    p = s.power
    spine_word = "aggregation sw." if s.fabric.tiers == 3 else "spine switches"
    rows = [
        ("nodes", p.nodes_w),
        ("leaf switches", p.leaf_switches_w),
        (spine_word, p.spine_switches_w),
        ("core switches", p.core_switches_w),
        ("optics", p.optics_w),
        ("DAC cables", p.dac_w),
    ]
    total = p.total_it_w or 1.0
    lines = ["Power (W)"]
    lines.extend(
        f"  {name:<16}{watts:>14,.0f}  {watts / total:6.1%}" for name, watts in rows if watts
    )
    lines.append(f"  {'switching':<16}{p.switching_w:>14,.0f}  {p.switching_w / total:6.1%}")
    lines.append(f"  {'total IT':<16}{p.total_it_w:>14,.0f}")
    if p.facility_w is not None and s.budget.pue is not None:
        lines.append(f"  {f'facility (PUE {s.budget.pue:g})':<16}{p.facility_w:>14,.0f}")
    return lines


def _rack_lines(s: Solution) -> list[str]:
    r = s.racks
    if r is None:
        return []
    limit = f" of {r.max_racks} allowed" if r.max_racks is not None else ""
    lines = [
        f"Racks: {r.racks:,}{limit} ({r.node_racks:,} for nodes, {r.network_racks:,} for "
        f"switches); rack power {'binds' if r.rack_power_binds else 'does not bind'}"
    ]
    lines.extend(
        f"  {f.node_type}: {f.nodes_per_rack} per rack (limited by {f.limited_by}), "
        f"{f.racks:,} racks"
        for f in r.fills
    )
    return lines


def _solution_lines(
    config: Path, plan: Plan, s: Solution, comparison: FlatComparison | None
) -> list[str]:
    kind = "the old tool's config" if plan.legacy else "capwatch plan"
    lines = [f"Plan {config} ({kind}); fabric model {s.fabric_model}, power basis {s.power_basis}"]
    if s.mode == "max":
        lines.append(f"Answer: at most {s.nodes:,} nodes, {s.gpus:,} GPUs")
        for b in s.binding:
            lines.append(f"  binding: {_CONSTRAINT_WORDS[b.constraint]}: one more node: {b.detail}")
    else:
        verdict = "fits" if s.fits else "does NOT fit"
        lines.append(f"Fleet: {s.nodes:,} nodes, {s.gpus:,} GPUs: {verdict}")
        for b in s.binding:
            lines.append(f"  violated: {_CONSTRAINT_WORDS[b.constraint]}: {b.detail}")
        spare = ", ".join(f"{x.nodes:,} x {x.node_type}" for x in s.spare_nodes)
        lines.append(f"  room for more (one type at a time): {spare}")
    lines.extend(_budget_lines(s))
    lines += ["", *_fleet_lines(s), "", *_fabric_lines(s), "", *_power_lines(s)]
    racks = _rack_lines(s)
    if racks:
        lines += ["", *racks]
    if s.notes:
        lines += ["", "Notes", *(f"  - {n}" for n in s.notes)]
    if comparison is not None:
        lines += [
            "",
            f"The old tool (flat model) on this plan: {comparison.nodes:,} nodes, "
            f"{comparison.gpus:,} GPUs, {comparison.leaves:,} leaves, "
            f"{comparison.leaf_spine_links:,} uplinks, {comparison.spines:,} spines, "
            f"{_w(comparison.total_it_w)}",
        ]
        if comparison.reasons:
            delta = s.nodes - comparison.nodes
            lines.append(f"  capwatch's answer differs ({delta:+,} nodes) because:")
            lines.extend(f"  - {r}" for r in comparison.reasons)
    return lines


def _run_sweep(plan: Plan, spec: SweepSpec, *, as_json: bool, plot: Path | None) -> int:
    from dataclasses import asdict  # noqa: PLC0415

    from collector.power import sweep  # noqa: PLC0415

    points = sweep(plan, spec.param, spec.values)
    if plot is not None:
        _plot_sweep(spec.param, points, plot)
    if as_json:
        payload = {"param": spec.param, "points": [asdict(p) for p in points]}
        print(json.dumps(payload, indent=2))
        return 0
    width = max(len(spec.param), 8)
    print(
        f"{spec.param:>{width}} {'nodes':>8} {'GPUs':>9} {'GPUs/MW':>8} {'total IT W':>13} "
        f"{'tiers':>5} {'leaves':>7} {'spines':>7} {'cores':>6}  binding"
    )
    for p in points:
        binding: str = p.binding or "-"
        if not p.feasible:
            binding += " (below min_nodes)"
        print(
            f"{p.value:>{width}g} {p.nodes:>8,} {p.gpus:>9,} {p.gpus_per_it_mw:>8,.1f} "
            f"{p.total_it_w:>13,.0f} {p.tiers:>5} {p.leaves:>7,} {p.spines:>7,} "
            f"{p.cores:>6,}  {binding}"
        )
    if plot is not None:
        print(f"plot written to {plot}")
    return 0


def _plot_sweep(param: str, points: Sequence[SweepPoint], path: Path) -> None:
    """Draw GPUs against the swept value, each point marked by its binding constraint."""
    try:
        import matplotlib  # noqa: PLC0415  (optional extra, imported only to plot)

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed: pip install 'capwatch[plot]'",
            field="--plot",
        ) from exc
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = [p.value for p in points]
    ax.plot(xs, [p.gpus for p in points], color="0.6", linewidth=1, zorder=1)
    markers = {"it_power": "o", "facility_power": "s", "rack_power": "^", "rack_space": "v"}
    for constraint in dict.fromkeys(p.binding for p in points):
        chosen = [p for p in points if p.binding == constraint]
        ax.scatter(
            [p.value for p in chosen],
            [p.gpus for p in chosen],
            marker=markers.get(constraint or "", "D"),
            label=f"binding: {_CONSTRAINT_WORDS.get(constraint or '', 'none')}",
            zorder=2,
        )
    ax.set_xlabel(param)
    ax.set_ylabel("GPUs")
    ax.set_title(f"GPUs under the cap as {param} varies")
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc="best")
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise ConfigError(f"cannot write plot {path}: {exc.strerror}", field="--plot") from exc
