"""Pool patterns (:mod:`collector.governance.pattern`) and the fewest-node plan that meets one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from collector.governance.allocate import ImpossiblePatternError, plan_pool
from collector.governance.inventory import Component, NodeComponents
from collector.governance.ops import validate_tenant_name
from collector.governance.pattern import Need, parse_pattern, validate_pool_name
from collector.nodefacts import rack_of
from shared.errors import ConfigError
from shared.topics import validate_node_id


def _node(
    name: str,
    *,
    gpus: int = 4,
    gpu: str = "NVIDIA A100-SXM4-80GB",
    sockets: int = 2,
    cpu: str = "AMD EPYC 7763 64-Core Processor",
    mem_units: int = 32,
    pool: str = "free",
    state: str = "online",
) -> NodeComponents:
    comps = [Component("cpu", cpu, sockets), Component("memory", "16 GiB", mem_units)]
    if gpus:
        comps.insert(1, Component("gpu", gpu, gpus))
    return NodeComponents(name, pool, state, rack_of(name), tuple(comps), ())


def test_pattern_parses_terms_case_insensitively_with_counts() -> None:
    """`zinal:A100:4:epyc:30:memory:80` is pool zinal with three needs, terms lower-cased."""
    p = parse_pattern("zinal:A100:4:epyc:30:memory:80")
    assert p.pool == "zinal"
    assert p.needs == (Need("a100", 4), Need("epyc", 30), Need("memory", 80))
    assert str(p) == "zinal:a100:4:epyc:30:memory:80"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zinal", "needs a pool name and at least one component:qty pair"),
        ("zinal:a100", "needs a pool name and at least one component:qty pair"),
        ("zinal:a100:4:epyc", "component 'epyc' has no quantity"),
        ("zinal:a100:four", "quantity 'four' of 'a100' must be a whole number"),
        ("zinal:a100:-4", "quantity '-4' of 'a100' must be a whole number"),
        ("zinal:a100:0", "must be within 1..10,000,000, got 0"),
        ("zinal::4", "component 1 is empty"),
        ("zinal:a100:4:A100:2", "component 'a100' is given twice"),
        ("free:a100:4", "'free' is the implicit pool"),
        ("import:a100:4", "'import' is a word of `collector inventory`"),
        ("bad name:a100:4", "pool name 'bad name' must be"),
    ],
)
def test_bad_pattern_is_one_clear_error(text: str, message: str) -> None:
    """Each malformed pattern names what is wrong."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_pattern(text)


def test_counts_are_components_rounded_up_to_whole_nodes() -> None:
    """`a100:2` on 4-GPU nodes takes one node: the pool holds 4."""
    plan = plan_pool([_node("n1"), _node("n2")], parse_pattern("p:a100:2"))
    assert (len(plan.final), plan.units) == (1, {"a100": 4})


def test_terms_match_case_insensitive_substrings_of_the_description() -> None:
    """`a100` matches "NVIDIA A100-SXM4-80GB" only; `gpu` matches every GPU; `EPYC` the CPUs."""
    nodes = [_node("a", gpu="NVIDIA A100-SXM4-80GB"), _node("h", gpu="NVIDIA H100 80GB HBM3")]
    assert plan_pool(nodes, parse_pattern("p:a100:4")).final == ["a"]
    assert plan_pool(nodes, parse_pattern("p:h100:1")).final == ["h"]
    assert len(plan_pool(nodes, parse_pattern("p:gpu:8")).final) == 2
    assert plan_pool(nodes, parse_pattern("p:EPYC:4")).units == {"epyc": 4}


def test_memory_counts_16_gib_units() -> None:
    """`memory:40` (640 GiB) needs two 512 GiB nodes, or one 1 TiB node."""
    small = [_node("s1", mem_units=32), _node("s2", mem_units=32)]
    assert plan_pool(small, parse_pattern("p:memory:40")).final == ["s1", "s2"]
    big = [*small, _node("b", mem_units=64)]
    assert plan_pool(big, parse_pattern("p:memory:40")).final == ["b"]


def test_fewest_nodes_where_greedy_takes_more() -> None:
    """Need 8 GPUs and 8 sockets: two 4-GPU/4-socket nodes do it. Greedy grabs the 8-GPU node
    first (most of the scarcest need) and then needs three 2-socket... more nodes."""
    nodes = [
        _node("big-gpu", gpus=8, sockets=1),
        _node("cpu-a", gpus=0, sockets=4),
        _node("cpu-b", gpus=0, sockets=4),
        _node("mix-a", gpus=4, sockets=4),
        _node("mix-b", gpus=4, sockets=4),
    ]
    plan = plan_pool(nodes, parse_pattern("p:a100:8:epyc:8"))
    assert plan.method == "milp"
    assert plan.final == ["mix-a", "mix-b"]
    assert plan.greedy_nodes > len(plan.final)


def test_ties_prefer_nodes_already_in_the_pool_then_the_same_rack() -> None:
    """Of equal nodes, the pool keeps its own; then the nodes that share one rack win."""
    nodes = [
        _node("x1000c0s0b0n0"),
        _node("x1000c0s1b0n0", pool="p"),
        _node("x2000c0s0b0n0"),
    ]
    assert plan_pool(nodes, parse_pattern("p:a100:4")).final == ["x1000c0s1b0n0"]
    spread = [  # in an order where, without the rack preference, HiGHS picks other pairs
        _node("x3000c0s1b0n0"),
        _node("x1000c0s0b0n0"),
        _node("x2000c0s0b0n0"),
        _node("x3000c0s0b0n0", gpus=5),  # unlike its rack mate: not one group
    ]
    plan = plan_pool(spread, parse_pattern("p:a100:8"))
    assert plan.final == ["x3000c0s0b0n0", "x3000c0s1b0n0"]
    assert plan.racks == 1


def test_excluded_and_offline_nodes_are_untouchable() -> None:
    """An excluded (leased) or offline free node is never taken; an excluded member stays."""
    nodes = [
        _node("leased"),
        _node("down", state="stale"),
        _node("ok"),
        _node("mine", pool="p"),
    ]
    plan = plan_pool(nodes, parse_pattern("p:a100:4"), excluded={"leased", "mine"})
    assert plan.final == ["mine"]
    plan = plan_pool(nodes, parse_pattern("p:a100:8"), excluded={"leased", "mine"})
    assert (plan.final, plan.take) == (["mine", "ok"], ["ok"])
    with pytest.raises(ImpossiblePatternError) as info:
        plan_pool(nodes, parse_pattern("p:a100:12"), excluded={"leased", "mine"})
    assert "need 12 a100, pool + free hold 8" in str(info.value)
    assert "8 more on free nodes not online or excluded" in str(info.value)


def test_shrink_releases_nodes_while_the_pattern_stays_met() -> None:
    """A pool of four 4-GPU nodes applied to `a100:8` keeps two and releases two."""
    nodes = [_node(f"n{i}", pool="p") for i in range(4)]
    plan = plan_pool(nodes, parse_pattern("p:a100:8"))
    assert (len(plan.final), len(plan.release), plan.take) == (2, 2, [])
    assert plan.units["a100"] >= 8


def test_impossible_pattern_says_exactly_what_is_missing() -> None:
    """Each short term is named with what pool + free hold; a term nothing matches says so."""
    nodes = [_node(f"n{i}", sockets=2) for i in range(12)]  # 24 epyc
    with pytest.raises(ImpossiblePatternError) as info:
        plan_pool(nodes, parse_pattern("zinal:a100:4:epyc:30:tpu:1"))
    text = str(info.value)
    assert "need 30 epyc, pool + free hold 24" in text
    assert "need 1 tpu, pool + free hold 0 (no component matches 'tpu'" in text
    assert info.value.missing == [("epyc", 30, 24), ("tpu", 1, 0)]


def test_past_the_group_limit_the_greedy_answer_is_used_and_said() -> None:
    """group_limit=0 forces the documented fallback."""
    nodes = [_node(f"n{i}") for i in range(3)]
    plan = plan_pool(nodes, parse_pattern("p:a100:8"), group_limit=0)
    assert plan.method == "greedy"
    assert len(plan.final) == 2
    assert "greedy used" in plan.notes[0]


@pytest.mark.parametrize("name", ["n1", "x" * 63, "x" * 64, "n1\n", "a.b_c-d", "-a", "", "a b"])
def test_pool_and_tenant_names_follow_the_node_id_rule(name: str) -> None:
    """A pool, tenant or cohort name is valid exactly when it is a valid node id, and the
    refusal states the same rule."""

    def refusal(check: Callable[[str], str]) -> str | None:
        try:
            check(name)
        except ConfigError as exc:
            return str(exc)
        return None

    node = refusal(validate_node_id)
    for check in (validate_pool_name, validate_tenant_name):
        got = refusal(check)
        assert (got is None) == (node is None), check
        rule = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        assert got is None or rule in got
