"""The fewest whole nodes that give a pool a pattern's components: an integer program.

clstr takes the highest-scoring free node until every need is met, which does not promise the
fewest nodes. Here, for pool P and pattern needs q_t (terms t):

- candidates: P's nodes (whatever their state: they are already held) and the ``free`` nodes
  that are online and not excluded (leased to someone, or told so). An excluded node of P
  stays in P (a note names them: a leased pool is shrunk by ``pool remove``, never by a
  pattern); an excluded free node stays free.
- identical candidates are one group (same units of every term, same side: in the pool or
  free), an integer variable x_g in [0, size_g]: 10,000 nodes are a few thousand groups.
- solve 1: minimise sum x_g subject to sum_g a_{g,t} x_g >= q_t for every t;
- solve 2: with sum x_g fixed at that minimum, minimise the nodes taken from free (the pool
  keeps its own first);
- then, with both counts fixed, as few racks as possible (:func:`collector.nodefacts.rack_of`):
  see :mod:`collector.governance.racks` (exact when HiGHS proves it in time, else the best
  of three answers, with a note).

Both solves are SciPy's ``milp`` (HiGHS) with a zero MIP gap, so the node count and the
pool's share are proven, not estimated. The rack step is the hard one (a facility location
problem) and gets :data:`RACK_TIME_LIMIT_S`. Past
:data:`MILP_GROUP_LIMIT` groups, or when HiGHS cannot prove the node count within
:data:`MILP_TIME_LIMIT_S`, the answer is the greedy one and says so. The greedy answer is
computed every time, so a plan can say how many nodes clstr's way would have taken.

Greedy (clstr's rule): start empty; while some need is unmet, take the node
that scores highest, where a node scores ``sum over unmet terms t of min(a_t, remaining_t) /
available_t`` (units it brings, weighted by scarcity: fewer units left among the candidates
weigh more) minus 0.01 per component kind it has that no term asks for; ties go to nodes
already in the pool, then by name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from collector.governance.inventory import NodeComponents
from collector.governance.pattern import Pattern
from collector.governance.racks import Group, fewest_racks
from collector.store.pools import FREE
from shared.cli import first_named
from shared.errors import ConfigError

__all__ = [
    "MILP_GROUP_LIMIT",
    "MILP_TIME_LIMIT_S",
    "RACK_TIME_LIMIT_S",
    "ImpossiblePatternError",
    "Plan",
    "plan_pool",
]

MILP_GROUP_LIMIT: Final = 20_000
"""More candidate groups than this (near-unique nodes by the thousands) go greedy."""
MILP_TIME_LIMIT_S: Final = 10.0
"""Per solve; past it the greedy answer is used unless HiGHS proved its own."""
RACK_TIME_LIMIT_S: Final = 1.0
"""The rack preference (after the node count and the pool's own nodes, both proven) gets this
long; then the answer with the fewest racks found (collector.governance.racks), with a note."""


class ImpossiblePatternError(ConfigError):
    """The pool and the free nodes together cannot meet the pattern; nothing changes.

    ``missing``: (term, needed, held) for each short term.
    """

    def __init__(self, message: str, missing: list[tuple[str, int, int]]) -> None:
        super().__init__(message, field="--pattern")
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``pool apply`` would do, and how the answer was found."""

    pool: str
    pattern: Pattern
    final: list[str]
    take: list[str]
    release: list[str]
    units: dict[str, int]
    """Units of each term the pool holds after the plan."""
    method: str
    """``milp`` (proven fewest) or ``greedy`` (past the size or time limit)."""
    greedy_nodes: int
    """How many nodes the greedy rule takes for the same pattern."""
    racks: int
    solve_s: float
    """Seconds to the whole plan (racks included, imports of numpy/scipy not)."""
    count_s: float
    """Seconds to the fewest-node answer (the node count and the pool's share)."""
    notes: list[str] = field(default_factory=list)


def plan_pool(
    nodes: Sequence[NodeComponents],
    pattern: Pattern,
    *,
    excluded: Iterable[str] = (),
    group_limit: int = MILP_GROUP_LIMIT,
    time_limit_s: float = MILP_TIME_LIMIT_S,
    rack_time_limit_s: float = RACK_TIME_LIMIT_S,
) -> Plan:
    """The plan that gives ``pattern.pool`` the pattern with the fewest nodes.

    Raises :class:`ImpossiblePatternError` naming every short term when even all candidates fall
    short.
    """
    import numpy as np  # noqa: PLC0415 (heavy: only the command that plans pays for it)

    t0 = time.perf_counter()
    pool = pattern.pool
    terms = [n.term for n in pattern.needs]
    need = np.array([n.qty for n in pattern.needs], dtype=np.int64)
    excluded_set = set(excluded)
    members = [n for n in nodes if n.pool == pool]
    fixed = [n for n in members if n.node in excluded_set]
    candidates = [n for n in members if n.node not in excluded_set] + [
        n for n in nodes if n.pool == FREE and n.state == "online" and n.node not in excluded_set
    ]
    held = np.array([[n.count(t) for t in terms] for n in fixed], dtype=np.int64).reshape(
        -1, len(terms)
    )
    need_left = np.maximum(need - held.sum(axis=0), 0)
    units = np.array([[n.count(t) for t in terms] for n in candidates], dtype=np.int64).reshape(
        -1, len(terms)
    )
    available = units.sum(axis=0) + held.sum(axis=0)
    if (available < need).any():
        raise _impossible(pattern, nodes, available, excluded_set)
    member_flag = np.array([n.pool == pool for n in candidates], dtype=bool)
    greedy = _greedy(units, need_left, member_flag, candidates)
    groups = _groups(candidates, units, member_flag)
    notes: list[str] = []
    if fixed:
        # They count towards the pattern whatever it needs: say so, or "keep 3, release 0"
        # under "fewest nodes proven" reads as a wrong answer.
        stay = first_named([n.node for n in fixed], 5)
        notes.append(
            f"{len(fixed)} of the pool's nodes stay (leased, or given with --exclude): "
            f"{stay}; the fewest nodes are counted on top of them; `collector pool "
            f"remove {pool} NODE...` releases a leased node (it leaves its lease)"
        )
    chosen: list[int] | None = None
    method = "greedy"
    count_s = 0.0
    if not need_left.any():
        chosen, method = [], "milp"
    elif len(groups) <= group_limit:
        counts = _milp(groups, need_left, time_limit_s)
        count_s = time.perf_counter() - t0
        if counts is None:
            notes.append(f"HiGHS found no proven answer within {time_limit_s:g} s: greedy used")
        else:
            chosen, rack_notes = fewest_racks(
                groups, counts, need_left, candidates, rack_time_limit_s
            )
            notes.extend(rack_notes)
            method = "milp"
    else:
        notes.append(f"{len(groups):,} node groups > {group_limit:,}: greedy used")
    if chosen is None:
        chosen = greedy
    final = sorted([n.node for n in fixed] + [candidates[i].node for i in chosen])
    final_set = set(final)
    got = held.sum(axis=0) + (units[chosen].sum(axis=0) if chosen else 0)
    return Plan(
        pool=pool,
        pattern=pattern,
        final=final,
        take=sorted(set(final) - {m.node for m in members}),
        release=sorted(m.node for m in members if m.node not in final_set),
        units={t: int(got[i]) for i, t in enumerate(terms)},
        method=method,
        greedy_nodes=len(greedy) + len(fixed),
        racks=len({n.rack or n.node for n in nodes if n.node in final_set}),
        solve_s=time.perf_counter() - t0,
        count_s=count_s or time.perf_counter() - t0,
        notes=notes,
    )


def _impossible(
    pattern: Pattern, nodes: Sequence[NodeComponents], available: Any, excluded: set[str]
) -> ImpossiblePatternError:
    missing = []
    parts = []
    for i, n in enumerate(pattern.needs):
        if available[i] >= n.qty:
            continue
        held = int(available[i])
        missing.append((n.term, n.qty, held))
        # What the candidates lack may sit on nodes the plan may not take: say so.
        elsewhere = sum(
            x.count(n.term)
            for x in nodes
            if (x.pool == FREE and (x.state != "online" or x.node in excluded))
        )
        other_pools = sum(x.count(n.term) for x in nodes if x.pool not in (FREE, pattern.pool))
        extra = []
        if elsewhere:
            extra.append(f"{elsewhere} more on free nodes not online or excluded")
        if other_pools:
            extra.append(f"{other_pools} in other pools")
        tail = f" ({'; '.join(extra)})" if extra else ""
        if not any(x.count(n.term) for x in nodes):
            tail = f" (no component matches {n.term!r}: see `collector inventory`)"
        parts.append(f"need {n.qty} {n.term}, pool + free hold {held}{tail}")
    return ImpossiblePatternError(
        f"pattern {pattern} cannot be met, nothing changed: " + "; ".join(parts), missing
    )


def _groups(candidates: Sequence[NodeComponents], units: Any, member: Any) -> list[Group]:
    """Interchangeable candidates: the same units of every term, on the same side."""
    by_key: dict[tuple[tuple[int, ...], bool], list[int]] = {}
    for i in range(len(candidates)):
        by_key.setdefault((tuple(int(v) for v in units[i]), bool(member[i])), []).append(i)
    # Within a group nodes are taken by name: the same inputs give the same plan.
    return [(k[0], k[1], sorted(v, key=lambda i: candidates[i].node)) for k, v in by_key.items()]


def _milp(groups: list[Group], need: Any, time_limit_s: float) -> list[int] | None:
    """Nodes to take from each group: proven fewest in all, then proven most from the pool
    itself; ``None`` without a proof of the node count."""
    import numpy as np  # noqa: PLC0415
    from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: PLC0415

    ng = len(groups)
    a = np.array([g[0] for g in groups], dtype=np.float64).T  # terms x groups
    size = np.array([len(g[2]) for g in groups], dtype=np.float64)
    options = {"time_limit": time_limit_s, "mip_rel_gap": 0.0}
    cover = LinearConstraint(a, lb=need.astype(np.float64), ub=np.inf)
    bounds = Bounds(np.zeros(ng), size)
    ones = np.ones(ng)
    # Solve 1: the fewest nodes.
    first = milp(c=ones, constraints=[cover], integrality=ones, bounds=bounds, options=options)
    if first.status != 0 or first.x is None:
        return None
    x = first.x
    outsiders = np.array([0.0 if g[1] else 1.0 for g in groups])
    if outsiders.any() and not outsiders.all():
        # Solve 2: as few nodes, as many of them already in the pool as possible.
        fewest = round(float(first.fun))
        second = milp(
            c=outsiders,
            constraints=[cover, LinearConstraint(ones.reshape(1, -1), lb=fewest, ub=fewest)],
            integrality=ones,
            bounds=bounds,
            options=options,
        )
        if second.status == 0 and second.x is not None:
            x = second.x
    return [round(float(v)) for v in x]


def _greedy(units: Any, need: Any, member: Any, candidates: Sequence[NodeComponents]) -> list[int]:
    """clstr's rule (module docstring): candidate indices in the order taken."""
    import numpy as np  # noqa: PLC0415

    # Ties: members first, then by name (argmax takes the first of equal scores).
    order = sorted(range(len(candidates)), key=lambda i: (not member[i], candidates[i].node))
    u = units.astype(np.float64)[order]
    kinds = np.array([len(candidates[i].components) for i in order], dtype=np.float64)
    unasked = np.maximum(kinds - (u > 0).sum(axis=1), 0.0)
    remaining = need.astype(np.float64).copy()
    free = np.ones(len(order), dtype=bool)
    taken: list[int] = []
    while (remaining > 0).any():
        open_ = remaining > 0
        left = u[free][:, open_].sum(axis=0)
        if (left <= 0).any():
            break  # a need no candidate can meet (excluded by the availability check)
        gain = (np.minimum(u[:, open_], remaining[open_]) / left).sum(axis=1)
        score = gain - 0.01 * unasked
        score[~free | (gain <= 0)] = -np.inf
        best = int(np.argmax(score))
        if score[best] == -np.inf:
            break
        free[best] = False
        remaining -= u[best]
        taken.append(order[best])
    return taken
