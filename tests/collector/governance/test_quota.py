"""Kueue's cohort arithmetic: the four documented cases, lending limits, over-nominal use."""

from __future__ import annotations

import pytest

from collector.governance.quota import Quota, QuotaTree


def _most(tree: QuotaTree, tenant: str, usage: dict[str, float]) -> float:
    """The most ``tenant`` can hold with the others at ``usage`` (it starts from 0)."""
    return tree.available(tenant, {**usage, tenant: 0.0})


def test_case1_idle_member_lends_everything() -> None:
    """A 9, B 12 in one cohort, B idle: A may use up to 21."""
    tree = QuotaTree({"a": (Quota(9), "c"), "b": (Quota(12), "c")})
    assert _most(tree, "a", {"b": 0}) == 21
    assert tree.potential("a") == 21
    assert tree.check("a", 21, {}).admitted
    assert not tree.check("a", 22, {}).admitted


def test_case2_borrowing_limit_caps_the_borrower_only() -> None:
    """A with borrowingLimit 1: A at most 10; B (unlimited) at most 21."""
    tree = QuotaTree({"a": (Quota(9, borrowing_limit=1), "c"), "b": (Quota(12), "c")})
    assert _most(tree, "a", {}) == 10
    assert tree.potential("a") == 10
    assert _most(tree, "b", {}) == 21
    # Halfway: A at 9.5 has 0.5 left.
    assert tree.available("a", {"a": 9.5}) == 0.5


def test_case3_lending_limit_keeps_the_rest_for_the_lender() -> None:
    """B 12 with lendingLimit 1, A 9: A at most 10 while B uses <= 11; B at most 21."""
    tree = QuotaTree({"a": (Quota(9), "c"), "b": (Quota(12, lending_limit=1), "c")})
    for b_use in (0, 5, 11):
        assert _most(tree, "a", {"b": b_use}) == 10
    assert _most(tree, "a", {"b": 12}) == 9  # B now uses the one GPU it lent
    assert _most(tree, "b", {}) == 21
    assert tree.lendable("b", {"b": 11}) == 1
    assert tree.lendable("b", {"b": 12}) == 0


def test_case4_cohort_quota_serves_a_member_of_nominal_zero() -> None:
    """A cohort's own nominal 12 and a member with nominal 0: the member can use 12."""
    tree = QuotaTree({"z": (Quota(0), "c")}, {"c": 12})
    assert _most(tree, "z", {}) == 12
    check = tree.check("z", 12, {})
    assert check.admitted
    assert check.from_own == 0
    assert check.lenders == [("<c>", 12)]


def test_lending_limits_with_three_queues() -> None:
    """A 10 (LL 2), B 10 (LL 4), C 0: C gets 6; B using 8 leaves C 4; A can reach 14."""
    tree = QuotaTree(
        {
            "a": (Quota(10, lending_limit=2), "c"),
            "b": (Quota(10, lending_limit=4), "c"),
            "c": (Quota(0), "c"),
        }
    )
    assert tree.cohort_subtree("c") == 6
    assert _most(tree, "c", {}) == 6
    assert _most(tree, "c", {"b": 8}) == 4  # B's 8 eat 2 of the 4 it lends
    assert _most(tree, "a", {}) == 14  # its own 10 + B's 4 (C has nothing to lend)
    check = tree.check("c", 5, {"b": 7})
    assert check.admitted
    assert check.lenders == [("b", 3), ("a", 2)]  # most unused lendable first
    assert not tree.check("c", 6, {"b": 7}).admitted


def test_queue_over_its_nominal_borrows_and_can_be_reclaimed() -> None:
    """A 5 using 8 borrows 3 of B's 5: B has 2 now, and 3 more by reclaim (preemption)."""
    tree = QuotaTree({"a": (Quota(5), "c"), "b": (Quota(5), "c")})
    usage = {"a": 8.0}
    fa = tree.figures("a", usage)
    assert (fa.borrowed, fa.available, fa.lendable) == (3, 2, 0)
    fb = tree.figures("b", usage)
    assert (fb.borrowed, fb.available, fb.lendable) == (0, 2, 5)  # lends all it does not use
    refused = tree.check("b", 5, usage)
    assert not refused.admitted
    assert refused.reclaimable == 3
    ok = tree.check("a", 2, usage)
    assert ok.admitted
    assert ok.lenders == [("b", 2)]


def test_over_admitted_is_clamped_at_zero_and_exceeded() -> None:
    """Quota lowered under running use: available is 0 (Kueue's ClusterQueueSnapshot.
    Available clamps), and the tenant is over its limit."""
    tree = QuotaTree({"solo": (Quota(4), None)})
    assert tree.available("solo", {"solo": 6}) == 0
    assert not tree.check("solo", 1, {"solo": 6}).admitted
    f = tree.figures("solo", {"solo": 6})
    assert (f.limit, f.exceeded) == (4, True)


def test_oversubscription_spills_into_the_cohort_but_only_the_spiller_is_exceeded() -> None:
    """Kueue's "cq oversubscription spills into cohort" (pkg/cache/scheduler/
    resource_test.go): cq1 (10) uses 31 of a cohort of 10 + 10 + 10 in which cq2 lends
    nothing: both have 0 available; only cq1 is over its nominal plus what it may borrow,
    and the cohort is overcommitted."""
    tree = QuotaTree(
        {"cq1": (Quota(10), "cohort"), "cq2": (Quota(10, 0, 0), "cohort")}, {"cohort": 10}
    )
    use = {"cq1": 31}
    assert (tree.available("cq1", use), tree.available("cq2", use)) == (0, 0)
    assert (tree.potential("cq1"), tree.potential("cq2")) == (20, 10)
    assert tree.figures("cq1", use).exceeded
    assert not tree.figures("cq2", use).exceeded
    assert tree.figures("cq2", use).limit == 10
    assert tree.overcommit("cohort", use) == (20, 31)


def test_a_neighbour_forced_over_leaves_an_idle_tenant_unexceeded() -> None:
    """a idle and b at 20 of nominals 8 + 8: a has 0 available, keeps its nominal as its
    limit and is not exceeded; b's limit is 16 (a's 8 lent), so b is."""
    tree = QuotaTree({"a": (Quota(8), "c"), "b": (Quota(8), "c")})
    use = {"a": 0, "b": 20}
    assert tree.available("a", use) == 0
    assert (tree.limit("a", use), tree.figures("a", use).exceeded) == (8, False)
    assert (tree.limit("b", use), tree.figures("b", use).exceeded) == (16, True)


def test_tenant_without_cohort_has_its_nominal_only() -> None:
    """No cohort, no borrowing: available = nominal - usage."""
    tree = QuotaTree({"a": (Quota(8), None), "b": (Quota(8), "c")})
    assert tree.available("a", {"a": 3, "b": 0}) == 5
    assert tree.potential("a") == 8


def test_bad_quota_values_are_refused() -> None:
    """Negative or NaN quotas raise naming the field."""
    with pytest.raises(ValueError, match="nominal must be a number >= 0"):
        Quota(-1)
    with pytest.raises(ValueError, match="borrowing_limit"):
        Quota(1, borrowing_limit=float("nan"))
    with pytest.raises(KeyError):
        QuotaTree({}).available("nobody", {})
