"""Kueue's own cases of ``available`` and ``potentialAvailable``, flat and hierarchical.

Ported from kubernetes-sigs/kueue ``pkg/cache/scheduler/resource_test.go`` (``TestAvailable``,
Apache-2.0), one resource flavor ("red", cpu; amounts in CPUs instead of millicores). Each
case checks, as Kueue's test does: with no usage, available equals potentialAvailable; with
the usage, the wanted available and the same potentialAvailable. ``Quota(n, b, l)`` is
Kueue's ``Resource("cpu", n, b, l)``: nominal, borrowing limit, lending limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from collector.governance.quota import Quota, QuotaTree


@dataclass(frozen=True)
class Case:
    tenants: dict[str, tuple[Quota, str | None]]
    usage: dict[str, float]
    available: dict[str, float]
    potential: dict[str, float]
    cohorts: dict[str, Quota] = field(default_factory=dict)
    parents: dict[str, str | None] = field(default_factory=dict)


CASES = {
    "base cqs": Case(
        tenants={"cq1": (Quota(0), None), "cq2": (Quota(5), None)},
        usage={"cq1": 1, "cq2": 2.5},
        available={"cq1": 0, "cq2": 2.5},  # cq1 over its 0: clamped, not -1
        potential={"cq1": 0, "cq2": 5},
    ),
    "cqs with cohort": Case(
        tenants={"cq1": (Quota(10), "cohort"), "cq2": (Quota(10, None, 9), "cohort")},
        cohorts={"cohort": Quota(10)},
        usage={"cq1": 1, "cq2": 0.5},
        available={"cq1": 28, "cq2": 28.5},
        potential={"cq1": 29, "cq2": 30},
    ),
    "cq borrows from cohort": Case(
        tenants={"cq1": (Quota(10), "cohort")},
        cohorts={"cohort": Quota(10)},
        usage={"cq1": 11},
        available={"cq1": 9},
        potential={"cq1": 20},
    ),
    "cq oversubscription spills into cohort": Case(
        tenants={"cq1": (Quota(10), "cohort"), "cq2": (Quota(10, 0, 0), "cohort")},
        cohorts={"cohort": Quota(10)},
        usage={"cq1": 31},
        available={"cq1": 0, "cq2": 0},
        potential={"cq1": 20, "cq2": 10},
    ),
    "lending and borrowing limits respected": Case(
        tenants={
            "cq1": (Quota(10), "cohort"),
            "cq2": (Quota(10, 2), "cohort"),
            "cq3": (Quota(10, None, 5), "cohort"),
        },
        cohorts={"cohort": Quota(10)},
        usage={"cq1": 20, "cq2": 10, "cq3": 6},
        available={"cq1": 4, "cq2": 2, "cq3": 4},
        potential={"cq1": 35, "cq2": 12, "cq3": 40},
    ),
    "hierarchical cohort": Case(
        #        root
        #       /    \
        #    left    right
        #     |        |
        #    cq1      cq2
        tenants={"cq1": (Quota(10), "left"), "cq2": (Quota(10, None, 0), "right")},
        cohorts={"root": Quota(0), "left": Quota(10), "right": Quota(10)},
        parents={"left": "root", "right": "root"},
        usage={"cq1": 10, "cq2": 5},
        available={"cq1": 20, "cq2": 25},
        potential={"cq1": 30, "cq2": 40},
    ),
    "hierarchical cohort respects borrowing limit": Case(
        #             root
        #           5/    \
        #         left    right -- right-cq
        #        /    5\
        #  left-cq1   left-cq2
        tenants={
            "left-cq1": (Quota(10), "left"),
            "left-cq2": (Quota(10, 5), "left"),
            "right-cq": (Quota(10), "right"),
        },
        cohorts={"root": Quota(0), "left": Quota(10, 5), "right": Quota(10)},
        parents={"left": "root", "right": "root"},
        usage={},
        available={"left-cq1": 35, "left-cq2": 15, "right-cq": 50},
        potential={"left-cq1": 35, "left-cq2": 15, "right-cq": 50},
    ),
    "hierarchical cohort respects lending limit": Case(
        #             root -- root-cq
        #           5/    \
        #         left    right -- right-cq
        #       5/    \
        #  left-cq1   left-cq2
        tenants={
            "left-cq1": (Quota(10, None, 5), "left"),
            "left-cq2": (Quota(10), "left"),
            "right-cq": (Quota(0), "right"),
            "root-cq": (Quota(0), "root"),
        },
        cohorts={"root": Quota(0), "left": Quota(0, None, 5), "right": Quota(0)},
        parents={"left": "root", "right": "root"},
        usage={},
        available={"left-cq1": 20, "left-cq2": 15, "right-cq": 5, "root-cq": 5},
        potential={"left-cq1": 20, "left-cq2": 15, "right-cq": 5, "root-cq": 5},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kueue_available_and_potential(name: str) -> None:
    """available and potentialAvailable as Kueue's TestAvailable wants them."""
    case = CASES[name]
    tree = QuotaTree(case.tenants, case.cohorts, case.parents)
    idle = {t: tree.available(t, {}) for t in case.tenants}
    assert idle == case.potential
    assert {t: tree.potential(t) for t in case.tenants} == case.potential
    used = {t: tree.available(t, case.usage) for t in case.tenants}
    assert used == pytest.approx(case.available)
    assert {t: tree.potential(t) for t in case.tenants} == case.potential


def test_kep_79_subtree_and_guaranteed_quota_per_level() -> None:
    """The lending-limit case's cohorts: left's subtree is left-cq1's 10 (5 guaranteed to it)
    less its local 5, plus left-cq2's 10 = 15, of which 10 stay in left (lending limit 5):
    root's subtree is 5."""
    case = CASES["hierarchical cohort respects lending limit"]
    tree = QuotaTree(case.tenants, case.cohorts, case.parents)
    left = tree.cohort_figures("left", {})
    assert (left["subtree"], left["guaranteed"]) == (15, 10)
    assert tree.cohort_subtree("root") == 5
    assert tree.children("root") == (["left", "right"], ["root-cq"])
    assert tree.roots() == (["root"], [])


def test_a_cycle_of_parents_is_found_and_cut() -> None:
    """a -> b -> a is a cycle; the tree treats its cohorts as roots rather than looping."""
    from collector.governance.quota import find_cycle  # noqa: PLC0415

    assert find_cycle({"a": "b", "b": "a", "c": None}) == ["a", "b", "a"]
    assert find_cycle({"a": "b", "b": None}) is None
    tree = QuotaTree({"t": (Quota(4), "a")}, {"a": Quota(2)}, {"a": "b", "b": "a"})
    assert tree.available("t", {}) == 6
