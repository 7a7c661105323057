"""The last tie preference of ``pool apply``: as few racks as possible (each node's rack as
every consumer names it, :func:`collector.nodefacts.rack_of`: the operator's
``[[capacity.racks]]``, else the xname cabinet).

By the time this runs, the node count and the number of nodes taken from ``free`` are fixed
(proven by :mod:`collector.governance.allocate`). Choosing which nodes then is a facility
location problem, hard at 10,000 nodes, so three answers are compared and the one with the
fewest racks kept:

1. a greedy fill of the proven answer's group counts, rack by rack (the rack that supplies
   most of what is still wanted first);
2. rack-first: racks ranked (those of the pool's own nodes first, then by the share of the
   pattern they could supply alone), and the first k racks tried as the only source, k
   growing until a choice with the fixed node and member counts exists there (a small
   feasibility program each time);
3. the exact integer program (per group and rack how many nodes, a binary per rack used),
   whatever HiGHS finds within the time limit.

The answer is proven fewest when it meets a lower bound (per term, and for the node count,
the fewest racks whose supply alone reaches it) or HiGHS proves it; a note says when not. A
node in no rack is a rack of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from collector.governance.inventory import NodeComponents

__all__ = ["Group", "fewest_racks"]

Group = tuple[tuple[int, ...], bool, list[int]]
"""(units per pattern term, already in the pool, candidate indices sorted by node name)."""

_Cell = tuple[int, str, list[int]]
"""(group, rack, the group's candidates in that rack, by name)."""


def fewest_racks(
    groups: list[Group],
    counts: list[int],
    need: Any,
    candidates: Sequence[NodeComponents],
    time_limit_s: float,
) -> tuple[list[int], list[str]]:
    """Candidate indices: ``sum(counts)`` nodes, as many from the pool as ``counts`` has,
    meeting ``need``, from as few racks as found; plus notes."""
    deadline = time.perf_counter() + time_limit_s
    cells: list[_Cell] = []
    for gi, g in enumerate(groups):
        by_rack: dict[str, list[int]] = {}
        for i in g[2]:
            by_rack.setdefault(candidates[i].rack or candidates[i].node, []).append(i)
        cells.extend((gi, r, nodes) for r, nodes in by_rack.items())
    total = sum(counts)
    outside = sum(n for gi, n in enumerate(counts) if not groups[gi][1])
    best = _greedy_fill(cells, counts)
    notes: list[str] = []
    if _racks_used(best, cells) > 1:
        first = _rack_first(
            groups, cells, need=need, total=total, outside=outside, deadline=deadline
        )
        if first is not None and _racks_used(first, cells) < _racks_used(best, cells):
            best = first
        proven = _racks_used(best, cells) <= _lower_bound(groups, cells, need, total)
        left = deadline - time.perf_counter()
        if not proven and left > 0.05:
            exact, proven = _exact(
                groups, cells, need=need, total=total, outside=outside, time_limit_s=left
            )
            if exact is not None and _racks_used(exact, cells) <= _racks_used(best, cells):
                best = exact
        if not proven:
            notes.append(
                f"rack choice: the fewest racks found in {time_limit_s:g} s, not proven fewest"
            )
    chosen: list[int] = []
    for k, n in best.items():
        chosen.extend(cells[k][2][:n])
    return chosen, notes


def _lower_bound(groups: list[Group], cells: list[_Cell], need: Any, total: int) -> int:
    """No answer uses fewer racks: for each term, and for the node count, the fewest racks
    whose supply alone reaches it (the biggest suppliers first)."""
    import numpy as np  # noqa: PLC0415

    supply: dict[str, Any] = {}
    for g, r, nodes in cells:
        row = np.append(np.asarray(groups[g][0], dtype=np.float64), 1.0) * len(nodes)
        supply[r] = supply.get(r, 0) + row
    table = np.array(list(supply.values()))  # racks x (terms + node count)
    wanted = np.append(need.astype(np.float64), float(total))
    bound = 1
    for j, want in enumerate(wanted):
        if want <= 0:
            continue
        reach = np.cumsum(np.sort(table[:, j])[::-1])
        bound = max(bound, int(np.searchsorted(reach, want - 1e-9)) + 1)
    return bound


def _racks_used(take: dict[int, int], cells: list[_Cell]) -> int:
    return len({cells[k][1] for k, n in take.items() if n})


def _greedy_fill(cells: list[_Cell], counts: list[int]) -> dict[int, int]:
    """Fill the group counts rack by rack, the rack that supplies most of what is left first."""
    left = {g: n for g, n in enumerate(counts) if n}
    by_rack: dict[str, list[int]] = {}
    for k, c in enumerate(cells):
        if c[0] in left:
            by_rack.setdefault(c[1], []).append(k)
    take: dict[int, int] = {}
    while any(left.values()):
        rack = max(
            sorted(by_rack),
            key=lambda r: sum(min(len(cells[k][2]), left[cells[k][0]]) for k in by_rack[r]),
        )
        for k in by_rack.pop(rack):
            n = min(len(cells[k][2]), left[cells[k][0]])
            if n:
                take[k] = n
                left[cells[k][0]] -= n
    return take


def _rack_first(
    groups: list[Group],
    cells: list[_Cell],
    *,
    need: Any,
    total: int,
    outside: int,
    deadline: float,
) -> dict[int, int] | None:
    """The first k ranked racks that can hold the answer alone (see the module docstring)."""
    import numpy as np  # noqa: PLC0415

    supply: dict[str, Any] = {}
    members: set[str] = set()
    for g, r, nodes in cells:
        supply[r] = supply.get(r, 0) + np.asarray(groups[g][0], dtype=np.float64) * len(nodes)
        if groups[g][1]:
            members.add(r)
    need_f = np.maximum(need.astype(np.float64), 1.0)
    order = sorted(
        supply,
        key=lambda r: (r not in members, -float(np.minimum(supply[r] / need_f, 1.0).sum()), r),
    )
    k = len(members)
    have = sum((supply[r] for r in order[:k]), np.zeros(len(need)))
    while k < len(order) and not (have >= need).all():
        have = have + supply[order[k]]
        k += 1
    while k <= len(order) and time.perf_counter() < deadline:
        allowed = set(order[:k])
        sub = [i for i, c in enumerate(cells) if c[1] in allowed]
        found = _feasible(
            groups, cells, sub, need=need, total=total, outside=outside, deadline=deadline
        )
        if found is not None:
            return found
        k = max(k + 1, round(k * 1.2))
    return None


def _feasible(
    groups: list[Group],
    cells: list[_Cell],
    sub: list[int],
    *,
    need: Any,
    total: int,
    outside: int,
    deadline: float,
) -> dict[int, int] | None:
    """A choice among cells ``sub`` with exactly ``total`` nodes, ``outside`` of them from
    free, meeting ``need``; ``None`` if there is none (or no time to find it)."""
    import numpy as np  # noqa: PLC0415
    from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: PLC0415

    left = deadline - time.perf_counter()
    if left <= 0 or not sub:
        return None
    a = np.array([groups[cells[i][0]][0] for i in sub], dtype=np.float64).T
    rows = np.vstack([a, np.ones(len(sub)), [0.0 if groups[cells[i][0]][1] else 1.0 for i in sub]])
    lb = np.concatenate([need.astype(np.float64), [total, outside]])
    ub = np.concatenate([np.full(len(need), np.inf), [total, outside]])
    res = milp(
        c=np.zeros(len(sub)),
        constraints=[LinearConstraint(rows, lb=lb, ub=ub)],
        integrality=np.ones(len(sub)),
        bounds=Bounds(np.zeros(len(sub)), [len(cells[i][2]) for i in sub]),
        options={"time_limit": left},
    )
    if res.status != 0 or res.x is None:
        return None
    return {i: round(float(v)) for i, v in zip(sub, res.x, strict=True) if round(float(v))}


def _exact(
    groups: list[Group],
    cells: list[_Cell],
    *,
    need: Any,
    total: int,
    outside: int,
    time_limit_s: float,
) -> tuple[dict[int, int] | None, bool]:
    """HiGHS on the whole rack program: (its best answer or ``None``, proven optimal)."""
    import numpy as np  # noqa: PLC0415
    from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: PLC0415
    from scipy.sparse import coo_array  # noqa: PLC0415

    racks = sorted({c[1] for c in cells})
    rack_index = {r: k for k, r in enumerate(racks)}
    nc, nr = len(cells), len(racks)
    nv = nc + nr
    a = np.array([groups[c[0]][0] for c in cells], dtype=np.float64).T
    cover = np.zeros((a.shape[0] + 2, nv))
    cover[: a.shape[0], :nc] = a
    cover[-2, :nc] = 1.0
    cover[-1, :nc] = [0.0 if groups[c[0]][1] else 1.0 for c in cells]
    lb = np.concatenate([need.astype(np.float64), [total, outside]])
    ub = np.concatenate([np.full(a.shape[0], np.inf), [total, outside]])
    sizes = np.array([len(c[2]) for c in cells], dtype=np.float64)
    cols = np.concatenate([np.arange(nc), nc + np.array([rack_index[c[1]] for c in cells])])
    link = coo_array(
        (np.concatenate([np.ones(nc), -sizes]), (np.concatenate([np.arange(nc)] * 2), cols)),
        shape=(nc, nv),
    )
    res = milp(
        c=np.concatenate([np.zeros(nc), np.ones(nr)]),
        constraints=[
            LinearConstraint(cover, lb=lb, ub=ub),
            LinearConstraint(link.tocsr(), lb=-np.inf, ub=0.0),
        ],
        integrality=np.ones(nv),
        bounds=Bounds(np.zeros(nv), np.concatenate([sizes, np.ones(nr)])),
        options={"time_limit": time_limit_s, "mip_rel_gap": 0.0},
    )
    if res.x is None or res.status not in (0, 1):
        return None, False
    return {k: round(float(res.x[k])) for k in range(nc)}, res.status == 0
