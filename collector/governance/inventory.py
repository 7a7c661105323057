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
``"<kind> <model>"`` lower-cased, contains it (clstr's rule, domain notes §8), so a term can
also name a whole kind (``gpu``, ``nic``).

Components reported missing or in error are listed apart and never counted: an NVIDIA GPU on
the PCI bus that NVML does not report, fewer GPUs in the node's latest sample than in its
inventory, a NIC whose link was down.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from collector.store.governance import NodeRecord
from collector.store.queries import node_state
from shared.errors import SchemaError
from shared.schema import Inventory, decode_inventory

__all__ = [
    "KINDS",
    "MEMORY_UNIT_BYTES",
    "Component",
    "NodeComponents",
    "components_of",
    "describe_nodes",
    "rack_of",
]

MEMORY_UNIT_BYTES: Final = 16 * 2**30
"""``memory:N`` means at least N x 16 GiB (clstr)."""

KINDS: Final = ("cpu", "gpu", "memory", "nic", "accelerator")
"""Component kinds, in the order of the inventory table's columns."""

_NVIDIA: Final = 0x10DE
_XNAME: Final = re.compile(r"^x([0-9]{1,4})c([0-7])s([0-9]+)b([0-9]+)n([0-9]+)\Z", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Component:
    """Some units of one kind and model in one node."""

    kind: str
    model: str
    count: int
    ids: tuple[str, ...] = ()
    """Serials, UUIDs, bus ids or interface names, where known."""

    @property
    def key(self) -> str:
        """The column this component is counted in: ``"<kind> <model>"``."""
        return f"{self.kind} {self.model}"

    @property
    def description(self) -> str:
        """What a pattern term is matched against (lower case)."""
        return self.key.lower()


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


def rack_of(node: str) -> str | None:
    """The xname's cabinet, normalised (``X01001c1s5b0n0`` -> ``x1001``); ``None`` otherwise."""
    m = _XNAME.match(node)
    return None if m is None else f"x{int(m.group(1))}"


def components_of(
    inv: Inventory, gpu_count: int | None = None
) -> tuple[list[Component], list[str]]:
    """``(components, problems)`` of one inventory; ``gpu_count`` from the latest sample."""
    out: list[Component] = []
    problems: list[str] = []
    if inv.cpus:
        for pkg in inv.cpus:
            out.append(Component("cpu", pkg.model or "unknown", pkg.sockets))
    elif inv.cpu_model:
        out.append(Component("cpu", inv.cpu_model, 1))
    gpus: dict[str, list[str]] = {}
    for g in inv.gpus:
        gpus.setdefault(g.name, []).append(g.serial or g.uuid)
    out.extend(Component("gpu", name, len(ids), tuple(ids)) for name, ids in gpus.items())
    if inv.mem_installed_bytes:
        units = inv.mem_installed_bytes // MEMORY_UNIT_BYTES
    else:
        units = math.ceil(inv.mem_total_bytes / MEMORY_UNIT_BYTES)
    if units > 0:
        out.append(Component("memory", "16 GiB", units, _dimms(inv.mem_dimms)))
    nics: dict[str, list[str]] = {}
    for nic in inv.nics:
        if nic.up is False:
            problems.append(f"nic {nic.name} down")
            continue
        speed = f" {_speed(nic.speed_mbps)}" if nic.speed_mbps else ""
        nics.setdefault(f"{nic.model or 'unknown'}{speed}", []).append(nic.name)
    out.extend(Component("nic", model, len(ids), tuple(ids)) for model, ids in nics.items())
    accel: dict[str, list[str]] = {}
    lost = 0
    for a in inv.accelerators:
        if a.vendor_id == _NVIDIA:  # on the bus, not reported by NVML: lost, not usable
            lost += 1
            continue
        accel.setdefault(a.name, []).append(a.pci_bus_id or "")
    out.extend(Component("accelerator", name, len(ids), tuple(ids)) for name, ids in accel.items())
    if lost:
        problems.append(f"gpu: {lost} NVIDIA on the PCI bus not seen by NVML ({inv.gpu_status})")
    if gpu_count is not None and 0 <= gpu_count < len(inv.gpus):
        problems.append(f"gpu: {gpu_count} of {len(inv.gpus)} in the latest sample")
    return out, problems


def describe_nodes(
    records: Iterable[NodeRecord],
    now: float,
    *,
    stale_intervals: float,
    default_interval_s: float,
) -> list[NodeComponents]:
    """Each record as :class:`NodeComponents` (an unreadable inventory is a problem, never an
    exception: nothing a node sent may stop the command)."""
    out = []
    for r in records:
        try:
            inv = decode_inventory(r.inventory)
        except SchemaError as exc:
            comps: list[Component] = []
            problems = [f"inventory unreadable: {str(exc)[:80]}"]
        else:
            comps, problems = components_of(inv, r.gpu_count)
        if r.source == "declared":
            state = "declared"
        else:
            state = node_state(
                r.status,
                r.last_received,
                r.interval_s,
                now,
                stale_intervals=stale_intervals,
                default_interval_s=default_interval_s,
            )
        out.append(
            NodeComponents(r.node, r.pool, state, rack_of(r.node), tuple(comps), tuple(problems))
        )
    return out


def _speed(mbps: int) -> str:
    return f"{mbps // 1000} Gb/s" if mbps % 1000 == 0 else f"{mbps} Mb/s"


def _dimms(n: int | None) -> tuple[str, ...]:
    return () if n is None else (f"{n} DIMMs",)
