"""A node's hardware as countable components, from its inventory: what pools are made of.

Kinds and what one unit is:

- ``cpu``: one CPU package (socket) of a model (``cpus``; an agent before that field counts
  its ``cpu_model`` as one package);
- ``gpu``: one GPU of a model, as NVML reports it;
- ``memory``: 16 GiB of installed memory (EDAC's sum, rounded down), or of ``mem_total_bytes``
  rounded **up** when the installed size is unknown (the kernel keeps a few percent of the
  installed memory for itself, so a 512 GiB node reports ~503 GiB);
- ``nic``: one network adapter of a model and link speed;
- ``accelerator``: one GPU or accelerator NVML does not report (another vendor's).

A pattern term (``a100``, ``epyc``, ``memory``) matches a component whose description,
``"<kind> <model>"`` lower-cased, contains it (clstr's rule,
:mod:`collector.governance.pattern`), so a term can also name a whole kind (``gpu``, ``nic``).

Components reported missing or in error are listed apart and never counted: an NVIDIA GPU on
the PCI bus that NVML does not report, GPUs listed under an NVML status other than ``ok``,
fewer GPUs in the node's latest sample than in its inventory, a NIC whose link was down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Annotated, Final, TypeVar

import msgspec

from collector.nodefacts import RackRule, Staleness, rack_of
from collector.store.pools import NodeRecord
from shared.schema import (
    MAX_ACCELERATORS,
    MAX_CPU_PACKAGES,
    MAX_DIMMS,
    MAX_GPUS,
    MAX_HOST_MEM_BYTES,
    MAX_NIC_SPEED_MBPS,
    MAX_NICS,
    Inventory,
)

__all__ = [
    "KINDS",
    "MEMORY_UNIT_BYTES",
    "Component",
    "NodeComponents",
    "components_of",
    "describe_nodes",
]

MEMORY_UNIT_BYTES: Final = 16 * 2**30
"""``memory:N`` means at least N x 16 GiB (clstr)."""

KINDS: Final = ("cpu", "gpu", "memory", "nic", "accelerator")
"""Component kinds, in the order of the inventory table's columns."""

_NVIDIA: Final = 0x10DE


# Stored inventories were validated against the wire schema when they arrived (or were
# imported). Reading 12,500 of them back for one table, these views skip what the table does
# not need (and the schema's regular expressions, the bulk of a full decode) but keep every
# count and length bounded, so a row that went bad in the file still cannot poison a sum.
class _Gpu(msgspec.Struct, gc=False):
    name: str
    uuid: str
    serial: str | None = None


class _Nic(msgspec.Struct, gc=False):
    name: str
    speed_mbps: Annotated[int, msgspec.Meta(ge=1, le=MAX_NIC_SPEED_MBPS)] | None = None
    model: str | None = None
    up: bool | None = None


class _Cpu(msgspec.Struct, gc=False):
    model: str
    sockets: Annotated[int, msgspec.Meta(ge=1, le=MAX_CPU_PACKAGES)]


class _Accel(msgspec.Struct, gc=False):
    vendor_id: int
    name: str
    pci_bus_id: str | None = None


class _Inventory(msgspec.Struct, gc=False):
    cpu_model: str
    mem_total_bytes: Annotated[int, msgspec.Meta(ge=0, le=MAX_HOST_MEM_BYTES)]
    gpus: Annotated[list[_Gpu], msgspec.Meta(max_length=MAX_GPUS)] = []
    gpu_status: str = "ok"
    nics: Annotated[list[_Nic], msgspec.Meta(max_length=MAX_NICS)] = []
    cpus: Annotated[list[_Cpu], msgspec.Meta(max_length=MAX_CPU_PACKAGES)] = []
    mem_installed_bytes: Annotated[int, msgspec.Meta(ge=0, le=MAX_HOST_MEM_BYTES)] | None = None
    mem_dimms: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMMS)] | None = None
    accelerators: Annotated[list[_Accel], msgspec.Meta(max_length=MAX_ACCELERATORS)] = []


_decoder = msgspec.json.Decoder(_Inventory)


@dataclass(frozen=True, slots=True)
class Component:
    """Some units of one kind and model in one node."""

    kind: str
    model: str
    count: int
    ids: tuple[str, ...] = ()
    """Serials, UUIDs, bus ids or interface names, where known."""
    key: str = field(init=False, compare=False)
    """The column this component is counted in: ``"<kind> <model>"``."""
    description: str = field(init=False, compare=False, repr=False)
    """What a pattern term is matched against: the key in lower case."""

    def __post_init__(self) -> None:
        key = f"{self.kind} {self.model}"
        object.__setattr__(self, "key", key)  # frozen: computed once, read per cell and term
        object.__setattr__(self, "description", key.lower())


@dataclass(frozen=True, slots=True)
class NodeComponents:
    """One node's components, where it is, and what is missing or in error."""

    node: str
    pool: str
    state: str
    """``online``, ``stale``, ``offline`` or ``declared`` (no agent yet)."""
    rack: str | None
    components: tuple[Component, ...]
    problems: tuple[str, ...]

    def count(self, term: str) -> int:
        """Units of every component whose description contains ``term`` (lower case)."""
        return sum(c.count for c in self.components if term in c.description)


def components_of(
    inv: Inventory | _Inventory, gpu_count: int | None = None, *, with_ids: bool = True
) -> tuple[list[Component], list[str]]:
    """``(components, problems)`` of one inventory; ``gpu_count`` from the latest sample.

    ``with_ids=False`` leaves serials, UUIDs and names out (the fleet table does not show
    them, and 12,500 nodes x 8 GPUs of them cost more than the rest of the table).
    """
    out: list[Component] = []
    problems: list[str] = []
    if inv.cpus:
        out.extend(_component("cpu", pkg.model or "unknown", pkg.sockets) for pkg in inv.cpus)
    elif inv.cpu_model:
        out.append(_component("cpu", inv.cpu_model, 1))
    gpus = inv.gpus
    if gpus:
        if with_ids:
            by_name: dict[str, list[str]] = {}
            for g in gpus:
                by_name.setdefault(g.name, []).append(g.serial or g.uuid)
            out.extend(Component("gpu", n, len(ids), tuple(ids)) for n, ids in by_name.items())
        else:
            out.extend(_component("gpu", n, k) for n, k in _tally(list(map(_name, gpus))))
    if inv.mem_installed_bytes:
        units = inv.mem_installed_bytes // MEMORY_UNIT_BYTES
    else:
        units = math.ceil(inv.mem_total_bytes / MEMORY_UNIT_BYTES)
    if units > 0:
        out.append(
            Component("memory", "16 GiB", units, _dimms(inv.mem_dimms))
            if with_ids
            else _component("memory", "16 GiB", units)
        )
    if inv.nics and not with_ids and False not in map(_up, inv.nics):
        out.extend(
            _component("nic", _nic_model(m, mbps), k)
            for (m, mbps), k in _tally(list(map(_model_speed, inv.nics)))
        )
    elif inv.nics:
        nics: dict[tuple[str | None, int | None], list[str]] = {}
        for nic in inv.nics:
            if nic.up is False:
                problems.append(f"nic {nic.name} down")
            else:
                nics.setdefault((nic.model, nic.speed_mbps), []).append(nic.name)
        out.extend(
            Component("nic", _nic_model(m, mbps), len(ids), tuple(ids) if with_ids else ())
            for (m, mbps), ids in nics.items()
        )
    if inv.accelerators:
        accel: dict[str, list[str]] = {}
        lost = 0
        for a in inv.accelerators:
            if a.vendor_id == _NVIDIA:  # on the bus, not reported by NVML: lost, not usable
                lost += 1
            else:
                accel.setdefault(a.name, []).append(a.pci_bus_id or "")
        out.extend(Component("accelerator", n, len(ids), tuple(ids)) for n, ids in accel.items())
        if lost:
            problems.append(
                f"gpu: {lost} NVIDIA on the PCI bus not seen by NVML ({inv.gpu_status})"
            )
    if gpus and inv.gpu_status != "ok":
        problems.append(f"gpu: status {inv.gpu_status[:32]}")
    if gpu_count is not None and 0 <= gpu_count < len(gpus):
        problems.append(f"gpu: {gpu_count} of {len(gpus)} in the latest sample")
    return out, problems


def describe_nodes(
    records: Iterable[NodeRecord],
    now: float,
    *,
    staleness: Staleness,
    rack_rules: Sequence[RackRule] = (),
    with_ids: bool = False,
) -> list[NodeComponents]:
    """Each record as :class:`NodeComponents`, in its rack (:func:`collector.nodefacts.rack_of`
    with the operator's ``rack_rules``); an unreadable inventory is a problem, never an
    exception: nothing a node sent may stop the command."""
    out = []
    for r in records:
        try:
            inv = _decoder.decode(r.inventory)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            comps: list[Component] = []
            problems = [f"inventory unreadable: {str(exc)[:80]}"]
        else:
            comps, problems = components_of(inv, r.gpu_count, with_ids=with_ids)
        if r.source == "declared":
            state = "declared"
        else:
            state = staleness.state(
                now,
                status=r.status,
                status_ts=r.status_ts,
                inventory_ts=r.inventory_ts,
                received=r.last_received,
                interval_s=r.interval_s,
            )
        out.append(
            NodeComponents(
                r.node, r.pool, state, rack_of(r.node, rack_rules), tuple(comps), tuple(problems)
            )
        )
    return out


_T = TypeVar("_T")
_name = attrgetter("name")
_up = attrgetter("up")
_model_speed = attrgetter("model", "speed_mbps")
_CACHE_MAX: Final = 4096
_cache: dict[tuple[str, str, int], Component] = {}


def _tally(items: list[_T]) -> list[tuple[_T, int]]:
    """Each distinct item with its count, in first-seen order. A node's GPUs (and NICs) are
    nearly always one model: that case costs one ``list.count``, not a ``Counter``."""
    first = items[0]
    if items.count(first) == len(items):
        return [(first, len(items))]
    counts: dict[_T, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return list(counts.items())


def _component(kind: str, model: str, count: int) -> Component:
    """A component without ids, shared: 12,500 nodes of a few kinds make a few dozen."""
    key = (kind, model, count)
    c = _cache.get(key)
    if c is None:
        if len(_cache) >= _CACHE_MAX:  # many distinct models: a bounded cache, not a leak
            _cache.clear()
        c = _cache[key] = Component(kind, model, count)
    return c


def _nic_model(model: str | None, mbps: int | None) -> str:
    if not mbps:
        return model or "unknown"
    speed = f"{mbps // 1000} Gb/s" if mbps % 1000 == 0 else f"{mbps} Mb/s"
    return f"{model or 'unknown'} {speed}"


def _dimms(n: int | None) -> tuple[str, ...]:
    return () if n is None else (f"{n} DIMMs",)
