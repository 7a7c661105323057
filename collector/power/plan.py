"""Read a plan from JSON or TOML, including the old sizing tool's JSON config unchanged.

Two layouts are accepted:

capwatch's own
    ``[site]``, ``[[node_types]]`` (one table per node type) and ``[fabric]``.
the old tool's
    top-level ``it_cap_mw`` and ``min_nodes``, one ``node`` object, and a ``fabric`` with
    ``optic_w_per_link_end``. Any other site key (``pue``, ``rack_power_kw``, ...) may be
    added at the top level.

Every key is checked: an unknown key, a wrong type or a bad value raises
:class:`shared.errors.PlanError` naming the field. This module's only I/O is
:func:`load_plan` reading the file it is given.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from collector.power.model import (
    Fabric,
    NodeType,
    Optics,
    Plan,
    Site,
    SwitchType,
)
from shared.errors import ConfigError, PlanError
from shared.files import FileTooLargeError, parse_json, parse_toml, read_bounded

__all__ = ["load_plan", "load_plan_file", "parse_plan", "read_plan_document", "with_param"]

_T = TypeVar("_T")

_NEW_TOP_LEVEL = ("site", "node_types", "fabric")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a model class (cached: sweeps call this per point)."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _unknown_key(key: str, known: list[str], path: str) -> PlanError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
    return PlanError(f"unknown key; {hint}", field=path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(value: object, hint: Any, path: str) -> object:
    """``value`` checked against the type ``hint``."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(options) != 1:  # pragma: no cover - the model has no such unions
            raise TypeError(hint)
        return _convert(value, options[0], path)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            choices = " or ".join(repr(a) for a in allowed)
            raise PlanError(f"must be {choices}, got {value!r}", field=path)
        return value
    if hint is bool:  # pragma: no cover - the model has no booleans in files
        raise TypeError(hint)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(f"must be a whole number, got {value!r}", field=path)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PlanError(f"must be a number, got {value!r}", field=path)
        if not math.isfinite(value):
            raise PlanError(f"must be a finite number, got {value!r}", field=path)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PlanError(f"must be a string, got {value!r}", field=path)
        return value
    if isinstance(hint, type) and is_dataclass(hint):
        return _build(hint, value, path)
    raise TypeError(hint)  # pragma: no cover - a model field of an unhandled type


def _table(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise PlanError(f"must be a table/object, got {value!r}", field=path)
    return value


def _build(
    cls: type[Any],
    value: object,
    path: str,
    *,
    ready: Mapping[str, object] | None = None,
    skip: tuple[str, ...] = (),
) -> Any:
    """An instance of the dataclass ``cls`` from a mapping, every key checked.

    ``ready`` holds fields already converted by the caller; keys in ``skip`` were
    consumed by the caller.
    """
    data = _table(value, path)
    hints = _hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs: dict[str, object] = dict(ready or {})
    for key, raw in data.items():
        if key in skip or key in kwargs:
            continue
        if key not in known:
            raise _unknown_key(key, [*known, *skip], _join(path, key))
        kwargs[key] = _convert(raw, hints[key], _join(path, key))
    for f in fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        if required and f.name not in kwargs:
            raise PlanError("missing (required)", field=_join(path, f.name))
    return cls(**kwargs)


def _fabric(value: object, path: str) -> Fabric:
    data = _table(value, path)
    leaf = _build(SwitchType, data.get("leaf"), _join(path, "leaf")) if "leaf" in data else None
    if leaf is None:
        raise PlanError("missing (required)", field=_join(path, "leaf"))
    ready: dict[str, object] = {"leaf": leaf}
    k = leaf.ports
    host = data.get("leaf_host_ports")
    up = data.get("leaf_uplink_ports")
    if "oversubscription" in data:
        ratio = _convert(data["oversubscription"], float, _join(path, "oversubscription"))
        assert isinstance(ratio, float)
        if ratio < 1:
            raise PlanError(
                f"must be ≥ 1 (o:1, down over up), got {ratio:g}",
                field=_join(path, "oversubscription"),
            )
        if host is not None or up is not None:
            raise PlanError(
                "give either oversubscription or leaf_host_ports/leaf_uplink_ports, not both",
                field=_join(path, "oversubscription"),
            )
        down = math.floor(k * ratio / (ratio + 1))
        ready["leaf_host_ports"], ready["leaf_uplink_ports"] = down, k - down
    elif host is None and up is None:
        ready["leaf_host_ports"], ready["leaf_uplink_ports"] = k // 2, k - k // 2
    elif host is None:
        up_n = _convert(up, int, _join(path, "leaf_uplink_ports"))
        assert isinstance(up_n, int)
        ready["leaf_host_ports"] = k - up_n
    elif up is None:
        host_n = _convert(host, int, _join(path, "leaf_host_ports"))
        assert isinstance(host_n, int)
        ready["leaf_uplink_ports"] = k - host_n
    if "optic_w_per_link_end" in data:
        if "optics" in data:
            raise PlanError(
                "give either optic_w_per_link_end (old tool) or an optics table, not both",
                field=_join(path, "optic_w_per_link_end"),
            )
        end_w = _convert(data["optic_w_per_link_end"], float, _join(path, "optic_w_per_link_end"))
        assert isinstance(end_w, float)
        # The old tool priced each link end separately: a one-link module per end.
        ready["optics"] = Optics(module_w=end_w, links_per_module=1, name="per link end")
    fabric: Fabric = _build(
        Fabric, data, path, ready=ready, skip=("oversubscription", "optic_w_per_link_end")
    )
    return fabric


def _site_from(data: Mapping[str, object], keys: list[str], path: str) -> Site:
    site: Site = _build(Site, {k: data[k] for k in keys}, path)
    return site


def parse_plan(data: Mapping[str, object]) -> Plan:
    """A checked :class:`Plan` from a parsed JSON/TOML document (either layout).

    A top-level ``capacity`` table is not the solver's: :mod:`collector.capacity` reads it
    (node-type matching, racks), so it is left out here.
    """
    data = {k: v for k, v in data.items() if k != "capacity"}
    site_keys = [f.name for f in fields(Site)]
    if "node" in data:  # the old tool's config
        for key in data:
            if key not in ("node", "fabric", *site_keys):
                raise _unknown_key(key, ["node", "fabric", *site_keys], key)
        if "fabric" not in data:
            raise PlanError("missing (required)", field="fabric")
        node: NodeType = _build(NodeType, data["node"], "node")
        return Plan(
            site=_site_from(data, [k for k in data if k in site_keys], ""),
            node_types=(node,),
            fabric=_fabric(data["fabric"], "fabric"),
            legacy=True,
        )
    for key in data:
        if key not in _NEW_TOP_LEVEL:
            if key in site_keys:
                raise PlanError("belongs under [site]", field=key)
            raise _unknown_key(key, [*_NEW_TOP_LEVEL, "node"], key)
    for key in _NEW_TOP_LEVEL:
        if key not in data:
            raise PlanError("missing (required)", field=key)
    raw_types = data["node_types"]
    if not isinstance(raw_types, list) or not raw_types:
        raise PlanError("must be a non-empty list of node type tables", field="node_types")
    node_types = tuple(_build(NodeType, raw, f"node_types[{i}]") for i, raw in enumerate(raw_types))
    site_table = _table(data["site"], "site")
    return Plan(
        site=_site_from(site_table, list(site_table), "site"),
        node_types=node_types,
        fabric=_fabric(data["fabric"], "fabric"),
    )


def load_plan(path: Path) -> Plan:
    """Read and check a ``.json`` or ``.toml`` plan file (an error names the file)."""
    return load_plan_file(path, parse_plan)


def load_plan_file(path: Path, parse: Callable[[Mapping[str, object]], _T]) -> _T:
    """``parse`` of the document of the plan file ``path``; a :class:`PlanError` it raises
    names the file."""
    document = read_plan_document(path)
    try:
        return parse(document)
    except PlanError as exc:
        raise exc.in_file(path) from None


def _json_int(text: str) -> int | float:
    """A JSON integer; one longer than any plan needs becomes a float (``inf`` past 1e308),
    which the checks reject naming the field, instead of an ``OverflowError`` from
    ``float()`` (or Python's 4,300-digit limit) escaping as a traceback."""
    return int(text) if len(text) <= 20 else float(text)


def read_plan_document(path: Path) -> Mapping[str, object]:
    """The parsed (not yet checked) document of a ``.json`` or ``.toml`` plan file."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(
            f"{path}: a plan must be a .json or .toml file, not {suffix or 'no suffix'!r}",
            field="--config",
        )
    try:
        raw = read_bounded(path)
    except FileTooLargeError as exc:
        raise ConfigError(f"{path} {exc}: is it the plan?", field="--config") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read plan {path}: {exc.strerror}", field="--config") from exc
    try:
        data: object = (
            parse_json(raw, parse_int=_json_int) if suffix == ".json" else parse_toml(raw.decode())
        )
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        kind = "JSON" if suffix == ".json" else "TOML"
        raise ConfigError(f"{path} is not valid {kind}: {exc}", field="--config") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the plan must be an object at the top", field="--config")
    return data


_INDEX = re.compile(r"node_types\[(?P<key>[^\]]+)\]")


def _set_number(obj: Any, name: str, value: float, path: str) -> Any:
    names = [f.name for f in fields(obj)]
    if name not in names:
        raise _unknown_key(name, names, path)
    hint = _hints(type(obj))[name]
    options = [a for a in get_args(hint) if a is not type(None)] or [hint]
    if options == [int]:
        if value != int(value):
            raise PlanError(f"takes whole numbers, got {value:g}", field=path)
        return replace(obj, **{name: int(value)})
    if options == [float]:
        return replace(obj, **{name: float(value)})
    raise PlanError("is not a numeric parameter", field=path)


def _set_path(obj: Any, parts: list[str], value: float, path: str) -> Any:
    if len(parts) == 1:
        return _set_number(obj, parts[0], value, path)
    names = [f.name for f in fields(obj)]
    if parts[0] not in names:
        raise _unknown_key(parts[0], names, path)
    child = getattr(obj, parts[0])
    if child is None:
        raise PlanError(f"{parts[0]} is not set in the plan, so it cannot be swept", field=path)
    if not is_dataclass(child):
        raise PlanError(f"{parts[0]} has no field {parts[1]!r}", field=path)
    return replace(obj, **{parts[0]: _set_path(child, parts[1:], value, path)})


def with_param(plan: Plan, path: str, value: float) -> Plan:
    """``plan`` with the numeric field at ``path`` set to ``value`` (checked again).

    Paths: ``it_cap_mw`` or ``site.it_cap_mw``; ``node.gpu_w`` (every node type);
    ``node_types[0].gpu_w`` or ``node_types[NAME].gpu_w``; ``fabric.leaf.ports``.
    """
    parts = path.split(".")
    head = parts[0]
    site_names = [f.name for f in fields(Site)]
    if head in site_names and len(parts) == 1:
        return replace(plan, site=_set_path(plan.site, parts, value, path))
    if head == "site":
        return replace(plan, site=_set_path(plan.site, parts[1:], value, path))
    if head == "fabric" and len(parts) > 1:
        return replace(plan, fabric=_set_path(plan.fabric, parts[1:], value, path))
    if head == "node" and len(parts) == 2:
        node_types = tuple(_set_path(t, parts[1:], value, path) for t in plan.node_types)
        return replace(plan, node_types=node_types)
    match = _INDEX.fullmatch(head)
    if match and len(parts) == 2:
        key = match["key"]
        index = int(key) if key.isdigit() else None
        for i, t in enumerate(plan.node_types):
            if i == index or t.name == key:
                changed = _set_path(t, parts[1:], value, path)
                node_types = (*plan.node_types[:i], changed, *plan.node_types[i + 1 :])
                return replace(plan, node_types=node_types)
        raise PlanError(f"no node type {key!r}", field=path)
    raise PlanError(
        "unknown parameter; use a site field (it_cap_mw, pue, ...), node.FIELD, "
        "node_types[I].FIELD or fabric.FIELD",
        field=path,
    )
