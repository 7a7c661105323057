"""Plan loading and checking: both layouts, and one clear error naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from collector.power import load_plan, parse_plan, with_param
from shared.errors import ConfigError, PlanError

DATA = Path(__file__).parents[2] / "data" / "power"


def _old() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "old_tool_example.json").read_text())
    return data


def _new() -> dict[str, Any]:
    """A minimal plan in capwatch's own layout."""
    return {
        "site": {"it_cap_mw": 2.0},
        "node_types": [{"name": "GPU-8x", "gpus_per_node": 8, "gpu_w": 700, "nics_per_node": 8}],
        "fabric": {
            "leaf": {"ports": 64, "switch_w": 1200},
            "spine": {"ports": 64, "switch_w": 1400},
        },
    }


def test_old_tool_config_loads_unchanged() -> None:
    """The old tool's example config: one 7,850 W node type, 32/32 leaf ports, 6 W per link end."""
    plan = load_plan(DATA / "old_tool_example.json")
    assert plan.legacy
    assert plan.site.it_cap_mw == 5.0
    assert plan.site.min_nodes == 1
    (node,) = plan.node_types
    assert (node.name, node.gpus_per_node, node.fabric_ports, node.max_w) == ("GPU-8x", 8, 8, 7850)
    fabric = plan.fabric
    assert (fabric.leaf.ports, fabric.leaf.switch_w, fabric.spine.switch_w) == (64, 1200, 1400)
    assert (fabric.leaf_host_ports, fabric.leaf_uplink_ports) == (32, 32)
    assert (fabric.optics.module_w, fabric.optics.links_per_module) == (6.0, 1)
    assert fabric.model == "fat_tree"


def test_toml_plan_loads_with_nested_tables() -> None:
    """The SuperPOD plan: SUs, rails, UFM slot, twin-port optics, nameplate power."""
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    assert not plan.legacy
    (node,) = plan.node_types
    assert node.max_w == 10200.0
    assert node.components_max.other_w == 10200.0 - 8600.0
    fabric = plan.fabric
    assert (fabric.nodes_per_su, fabric.rails, fabric.reserved_node_slots) == (32, 8, 1)
    assert (fabric.optics.module_w, fabric.optics.links_per_module) == (15.0, 2)
    assert fabric.media.host_leaf == "optics"
    assert fabric.leaf.typical_w == 750.0
    assert plan.site.rack_power_kw == 40.8


def test_leaf_ports_default_to_non_blocking_or_follow_oversubscription() -> None:
    """No split given: half and half. Oversubscription 3:1 on 64 ports: 48 down, 16 up."""
    assert parse_plan(_new()).fabric.leaf_host_ports == 32
    data = _new()
    data["fabric"]["oversubscription"] = 3
    fabric = parse_plan(data).fabric
    assert (fabric.leaf_host_ports, fabric.leaf_uplink_ports) == (48, 16)
    data = _new()
    data["fabric"]["leaf_uplink_ports"] = 24
    assert parse_plan(data).fabric.leaf_host_ports == 40


def _set(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = path.split("/")
    target = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("node/gpu_ww", 5, "node.gpu_ww", "did you mean 'gpu_w'?"),
        ("fabric/leaf/portz", 64, "fabric.leaf.portz", "did you mean 'ports'?"),
        ("fabric/zzz", 1, "fabric.zzz", "unknown key; expected one of"),
        ("it_cap", 5, "it_cap", "did you mean 'it_cap_mw'?"),
        ("node/gpu_w", -700, "node.gpu_w", "must be ≥ 0, got -700"),
        ("node/cpu_w", "700", "node.cpu_w", "must be a number"),
        ("fabric/leaf/ports", True, "fabric.leaf.ports", "must be a whole number"),
        ("fabric/leaf/ports", 64.5, "fabric.leaf.ports", "must be a whole number"),
        ("fabric/leaf_uplink_ports", 40, "fabric.leaf_uplink_ports", "exceed the leaf's 64"),
        ("it_cap_mw", 0, "it_cap_mw", "must be > 0"),
        ("node/nics_per_node", 0, "node.nics_per_node", "must be ≥ 1"),
        ("reserve_fraction", 1.0, "reserve_fraction", "must be below 1"),
        ("facility_cap_mw", 6.0, "pue", "needs the site's pue"),
        ("pue", 0.9, "pue", "must be ≥ 1"),
        ("rack_power_kw", 5.0, "rack_power_kw", "below one GPU-8x node (7.85 kW)"),
        ("rack_units", 42, "node.rack_units", "give the node's height in U"),
        ("node/nameplate_w", 7000, "node.nameplate_w", "below the components' sum 7850 W"),
        ("node/typical_w", 9000, "node.typical_w", "exceeds the maximum 7850 W"),
        ("fabric/planes", 3, "fabric.planes", "do not split evenly over 3 planes"),
        ("fabric/rails", 3, "fabric.rails", "do not split evenly over 3 rails"),
        ("fabric/model", "clos", "fabric.model", "must be 'fat_tree' or 'flat'"),
        ("fabric/media", {"host_leaf": "fiber"}, "fabric.media.host_leaf", "'dac' or 'optics'"),
        ("fabric/optics", {"module_w": 15}, "fabric.optic_w_per_link_end", "not both"),
        ("fabric/oversubscription", 2, "fabric.oversubscription", "not both"),
        ("fabric/spine/switch_w", -1, "fabric.spine.switch_w", "must be ≥ 0"),
        ("fabric/max_tiers", 4, "fabric.max_tiers", "must be 1, 2 or 3"),
    ],
)
def test_old_config_errors_name_the_field(
    path: str, value: object, field: str, message: str
) -> None:
    """Each mistake raises one PlanError whose field is the path as the file spells it."""
    with pytest.raises(PlanError) as info:
        parse_plan(_set(_old(), path, value))
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("data_path", "value", "field", "message"),
    [
        ("it_cap_mw", 2.0, "it_cap_mw", "belongs under [site]"),
        ("nodes", [], "nodes", "did you mean 'node'?"),
        ("node_types/0/gpu_w", -1, "node_types[0].gpu_w", "must be ≥ 0"),
        ("node_types/0/colour", "red", "node_types[0].colour", "unknown key"),
        ("site/it_cap_mw", None, "site.it_cap_mw", "needs a power cap"),
        ("site/max_racks", 10, "site.max_racks", "needs rack_power_kw or rack_units"),
        ("node_types", [], "node_types", "non-empty list"),
    ],
)
def test_new_layout_errors_name_the_field(
    data_path: str, value: object, field: str, message: str
) -> None:
    """capwatch's layout reports node_types[i] and site.* paths."""
    with pytest.raises(PlanError) as info:
        parse_plan(_set(_new(), data_path, value))
    assert info.value.field == field
    assert message in str(info.value)


def test_missing_required_fields_are_named() -> None:
    """A node type without gpu_w, or a fabric without a spine, names what is missing."""
    data = _new()
    del data["node_types"][0]["gpu_w"]
    with pytest.raises(PlanError, match=r"node_types\[0\]\.gpu_w: missing"):
        parse_plan(data)
    data = _new()
    del data["fabric"]["spine"]
    with pytest.raises(PlanError, match=r"fabric\.spine: missing"):
        parse_plan(data)


def test_duplicate_node_type_names_are_rejected() -> None:
    """Two node types called the same would make --fixed ambiguous."""
    data = _new()
    data["node_types"].append(dict(data["node_types"][0]))
    with pytest.raises(PlanError, match=r"node_types\[1\]\.name: duplicate"):
        parse_plan(data)


def test_unreadable_or_malformed_files_raise_config_error(tmp_path: Path) -> None:
    """Missing file, bad JSON/TOML, wrong suffix, or a list at the top: ConfigError."""
    with pytest.raises(ConfigError, match="cannot read plan"):
        load_plan(tmp_path / "absent.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_plan(bad_json)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[site\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_plan(bad_toml)
    yaml = tmp_path / "plan.yaml"
    yaml.write_text("site: {}")
    with pytest.raises(ConfigError, match=r"must be a \.json or \.toml file"):
        load_plan(yaml)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be an object"):
        load_plan(listed)
    huge = tmp_path / "huge.toml"  # a link to /dev/zero, a runaway file: not read whole
    with huge.open("wb") as f:
        f.truncate((32 << 20) + 1)  # sparse: costs no disk
    with pytest.raises(ConfigError, match=r"huge\.toml is larger than 32 MiB"):
        load_plan(huge)


def test_with_param_sets_numbers_and_rechecks() -> None:
    """Sweep paths: site fields, node.FIELD (every type), node_types[NAME], fabric.*."""
    plan = parse_plan(_old())
    assert with_param(plan, "it_cap_mw", 7.5).site.it_cap_mw == 7.5
    assert with_param(plan, "site.pue", 1.3).site.pue == 1.3
    assert with_param(plan, "node.gpu_w", 1000).node_types[0].max_w == 7850 + 8 * 300
    assert with_param(plan, "node_types[GPU-8x].gpus_per_node", 4).node_types[0].gpus_per_node == 4
    leaf = with_param(plan, "fabric.leaf.ports", 128).fabric.leaf
    assert (leaf.ports, type(leaf.ports)) == (128, int)
    assert with_param(plan, "fabric.optics.module_w", 15).fabric.optics.module_w == 15.0


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("fabric.leaf.ports", 64.5, "takes whole numbers"),
        ("node.name", 1, "is not a numeric parameter"),
        ("node.gpu_vv", 1, "did you mean 'gpu_w'?"),
        ("fabric.core.ports", 64, "core is not set"),
        ("node_types[H100].gpu_w", 1, "no node type 'H100'"),
        ("bogus", 1, "unknown parameter"),
        ("node.gpu_w", -5, "must be ≥ 0"),
        ("fabric.leaf.ports", 48, "exceed the leaf's 48 ports"),
    ],
)
def test_with_param_rejects_bad_paths_and_values(path: str, value: float, message: str) -> None:
    """A bad sweep path or a value that breaks the plan is a PlanError."""
    with pytest.raises(PlanError, match=message):
        with_param(parse_plan(_old()), path, value)


@pytest.mark.parametrize("where", ["site.it_cap_mw", "capacity.fallback_w", "gpus_per_node"])
def test_a_json_integer_of_hundreds_of_digits_is_one_plan_error(tmp_path: Path, where: str) -> None:
    """A 400-digit (or 5,000-digit) number is refused naming its field, not a traceback."""
    from collector.capacity.config import load_capacity_plan  # noqa: PLC0415

    for digits in (400, 5000):
        data = _new()
        data["capacity"] = {}
        huge = "1" + "0" * digits
        if where == "site.it_cap_mw":
            data["site"]["it_cap_mw"] = 0
        elif where == "capacity.fallback_w":
            data["capacity"]["fallback_w"] = 0
        else:
            data["node_types"][0]["gpus_per_node"] = 0
        text = json.dumps(data).replace(": 0", f": {huge}", 1)
        path = tmp_path / "huge.json"
        path.write_text(text)
        with pytest.raises(PlanError) as err:
            load_capacity_plan(path)
        assert where.rpartition(".")[2] in str(err.value)
