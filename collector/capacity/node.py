"""One node in the live picture: which node type it is, and what it counts at.

:class:`TypeMatcher` finds a node's type (the plan's explicit assignment, then its ``match``
rules, then the only type with the node's GPU count); :class:`NodeModel` is a type's model
of the parts no sensor reports. :func:`count_node` says what a node of a known type counts
at, in this order:

- **measured**: its input power as its BMC or PSU sensors read it
  (:meth:`collector.nodefacts.Staleness.node_power`: reported in its sample, or polled by the
  collector, while fresh), whatever the agent's state;
- otherwise, from a fresh sample, **GPUs + CPU + the unreported parts**: each GPU's power as
  :func:`collector.nodefacts.gpu_power_w` chooses it (interval power, else instantaneous), a
  GPU of the node type that the sample does not report (or reports without power) at the
  type's ``gpu_w``; the RAPL package power (``cpu_power_w``) when reported, else the type's
  ``cpu_w``; and the parts no sensor reports (DRAM, NVMe, NICs, fans, PSU losses) at the
  type's figure for them (:mod:`collector.capacity.calibrate`), on ``rest_basis``:

  - ``calibrated`` (default): the median of node - GPUs - CPU over the type's nodes that
    report all three this cycle (**calibrated**), or, with fewer than
    :data:`~collector.capacity.calibrate.MIN_NODES` of them, the model below (**modelled**);
  - ``model``: the type's model of its parts at their maximum: ``dram_w + nvme_w +
    nics_per_node x nic_w + node_aux_w`` (**modelled**);
  - ``nameplate``: that model plus the nameplate slack (``nameplate_w`` above the parts' sum),
    so the node counts as if every part sat at its maximum and the PSU at its rating
    (**modelled**; the conservative count before measured power);

- a total above the type's nameplate is a broken sensor or a forged sample: it counts at the
  nameplate and the node is flagged (``clamped``), so no node moves the site's draw by more
  than its nameplate.

Without a fresh reading (**assumed**): a node's state is
:class:`collector.nodefacts.Staleness`'s; a stale or offline node counts on ``stale_basis``:
nameplate (default), its last draw (its last input power reading, else its last sample as
above), or zero. An online node awaiting its first sample counts at its nameplate (it is up;
nothing says it draws less). A node whose type cannot be found counts at the plan's fallback
(:meth:`Counted.fallback`). The unreported parts are added once the cycle's calibration is
known (:attr:`Counted.needs_rest`): :func:`collector.capacity.compute.compute_picture`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from collector.capacity.config import CapacityPlan
from collector.capacity.picture import Basis, Obtained, RestBasis, StaleBasis
from collector.nodefacts import Staleness, gpu_power_w
from collector.power import NodeType

if TYPE_CHECKING:  # annotations only: a what-if need not load the live view or the schema
    from collector.live import NodeState
    from shared.schema import Inventory, Sample

__all__ = ["Counted", "NodeModel", "Sensors", "TypeMatcher", "count_node", "node_model_of"]


class Sensors(NamedTuple):
    """What one sample's sensors say of a node, the type's model filling the gaps."""

    gpu_w: float
    """Measured GPUs plus those not reporting at the type's ``gpu_w``."""
    gpus_modelled: int
    cpu_w: float
    cpu_measured: bool
    per_gpu: tuple[float, ...]
    """Measured power per GPU."""

    @property
    def complete(self) -> bool:
        """Every GPU of the type and the CPU reported: node - GPUs - CPU is the rest."""
        return self.gpus_modelled == 0 and self.cpu_measured


@dataclass(frozen=True, slots=True)
class NodeModel:
    """One node type as the live model uses it: the parts no sensor reports."""

    node_type: str
    gpus: int
    gpu_w: float
    cpu_w: float
    parts_w: float
    """DRAM + NVMe + NICs + aux at their maximum: the model of the unreported parts."""
    slack_w: float
    """The nameplate above the sum of all parts: counted only on ``rest_basis`` nameplate
    and in the worst case."""
    nameplate_w: float

    @classmethod
    def of(cls, t: NodeType) -> NodeModel:
        """The model of node type ``t``."""
        c = t.components_max
        return cls(
            t.name,
            t.gpus_per_node,
            t.gpu_w,
            t.cpu_w,
            c.dram_w + c.nvme_w + c.nic_w + c.aux_w,
            c.other_w,
            t.max_w,
        )

    def rest_w(self, basis: RestBasis) -> float:
        """The model's unreported parts on ``basis`` (``calibrated``: as ``model``)."""
        return self.parts_w + (self.slack_w if basis == "nameplate" else 0.0)

    def sensors(self, sample: Sample) -> Sensors:
        """The GPU and CPU power of one sample, the model standing in for what it lacks."""
        gpu_total = 0.0
        per_gpu = []
        for g in sample.gpus:
            w = gpu_power_w(g)
            if w is not None:
                gpu_total += w
                per_gpu.append(w)
        missing = max(self.gpus - len(per_gpu), 0)
        gpu_total += missing * self.gpu_w
        cpu = sample.cpu_power_w
        return Sensors(
            gpu_total,
            missing,
            self.cpu_w if cpu is None else cpu,
            cpu is not None,
            tuple(per_gpu),
        )

    def draw_of(
        self, gpu_w: float, gpus_reported: int, cpu_w: float | None, *, basis: RestBasis = "model"
    ) -> tuple[float, bool]:
        """(draw W, clamped) of a node whose ``gpus_reported`` GPUs draw ``gpu_w`` together
        and whose CPU package draws ``cpu_w`` (``None``: unreported): the model fills in the
        GPUs not reported, the CPU when unreported and the unreported parts on ``basis``, up to
        the nameplate. The usage ledger's node energy for a node without an input-power
        reading (its mean over an hour)."""
        missing = max(self.gpus - gpus_reported, 0)
        total = gpu_w + missing * self.gpu_w + (self.cpu_w if cpu_w is None else cpu_w)
        total += self.rest_w(basis)
        if total > self.nameplate_w:
            return self.nameplate_w, True
        return total, False


class TypeMatcher:
    """Finds each node's type; remembers the answer per inventory (cycles stay cheap)."""

    def __init__(self, cplan: CapacityPlan) -> None:
        self._cplan = cplan
        self._by_gpus: dict[int, str | None] = {}
        for t in cplan.plan.node_types:
            # A GPU count shared by two types says nothing: such nodes need a rule.
            self._by_gpus[t.gpus_per_node] = None if t.gpus_per_node in self._by_gpus else t.name
        self._cache: dict[str, tuple[Inventory | None, str | None]] = {}

    def __call__(self, node: str, inventory: Inventory | None) -> str | None:
        """The node type of ``node`` (``None``: unmatched)."""
        hit = self._cache.get(node)
        if hit is not None and hit[0] is inventory:
            return hit[1]
        found = self._find(node, inventory)
        self._cache[node] = (inventory, found)
        return found

    def _find(self, node: str, inv: Inventory | None) -> str | None:
        assigned = self._cplan.assigned_type(node)
        if assigned is not None:
            return assigned
        if inv is None:
            return None
        gpu_names = " | ".join(g.name for g in inv.gpus).lower()
        cpu = inv.cpu_model.lower()
        for m in self._cplan.match:
            if m.gpus is not None and m.gpus != len(inv.gpus):
                continue
            if m.gpu_model is not None and (not inv.gpus or m.gpu_model not in gpu_names):
                continue
            if m.cpu_model is not None and m.cpu_model not in cpu:
                continue
            return m.node_type
        return self._by_gpus.get(len(inv.gpus))


def node_model_of(
    cplan: CapacityPlan, inventory_of: Callable[[str], Inventory | None]
) -> Callable[[str], NodeModel | None]:
    """Node -> its type's model (``None``: unmatched), finding types as the live picture
    does (:class:`TypeMatcher`); ``inventory_of`` gives a node's inventory."""
    matcher = TypeMatcher(cplan)
    models = {t.name: NodeModel.of(t) for t in cplan.plan.node_types}

    def model(node: str) -> NodeModel | None:
        name = matcher(node, inventory_of(node))
        return None if name is None else models.get(name)

    return model


class Counted(NamedTuple):
    """What one node counts at, before the unreported parts are known (they may be
    calibrated from this cycle's nodes)."""

    node: str
    node_type: str
    rack: str
    draw_w: float
    """Final draw; for ``needs_rest``: the sensors' part (GPUs + CPU)."""
    nameplate_w: float
    basis: Basis
    obtained: Obtained
    needs_rest: bool = False
    sensors: Sensors | None = None
    node_power_w: float | None = None
    source: str | None = None
    clamped: bool = False
    residual_w: float | None = None
    """Its input power less GPUs and CPU, every one of them reported: a sample of its type's
    unreported parts for the calibration."""
    stale: bool = False
    """Counted on ``stale_basis`` (stale or offline, no fresh input power reading)."""
    unsampled: bool = False
    """Online, its first sample due: counted at nameplate."""

    @classmethod
    def fallback(cls, node: str, node_type: str, rack: str, watts: float) -> Counted:
        """A node whose type no rule finds: the plan's fallback type at ``watts``."""
        return cls(node, node_type, rack, watts, watts, "fallback", "assumed")


def count_node(
    st: NodeState,
    model: NodeModel,
    rack: str,
    now: float,
    *,
    staleness: Staleness,
    stale_basis: StaleBasis,
) -> Counted:
    """What ``st``, a node of ``model``'s type in ``rack``, counts at ``now`` (see the module)."""
    name, nameplate = model.node_type, model.nameplate_w
    reading = staleness.node_power(st, now)
    is_stale = staleness.of(st, now) != "online"
    last = st.node_power if is_stale and stale_basis == "last" else None
    at = reading if reading is not None else last
    if at is not None:
        # an input power reading: its own fresh one (measured, whatever the agent's state),
        # else, stale on the ``last`` basis, its last one (assumed)
        sensors = residual = None
        if reading is not None and not is_stale and st.sample is not None:
            sensors = model.sensors(st.sample)
            if sensors.complete and at.watts <= nameplate:
                residual = at.watts - sensors.gpu_w - sensors.cpu_w
        w, fresh = at.watts, reading is not None
        return Counted(
            st.node,
            name,
            rack,
            min(w, nameplate),
            nameplate,
            "measured" if fresh else "last",
            "measured" if fresh else "assumed",
            False,
            sensors,
            w,
            at.source,
            w > nameplate,
            residual,
            stale=not fresh,
        )
    if st.sample is None and not is_stale:  # online, its first sample due
        return Counted(
            st.node, name, rack, nameplate, nameplate, "nameplate", "assumed", unsampled=True
        )
    if (is_stale and stale_basis != "last") or st.sample is None:
        zero = stale_basis == "zero"
        return Counted(
            st.node,
            name,
            rack,
            0.0 if zero else nameplate,
            nameplate,
            "zero" if zero else "nameplate",
            "assumed",
            stale=is_stale,
        )
    sensors = model.sensors(st.sample)
    return Counted(
        st.node,
        name,
        rack,
        sensors.gpu_w + sensors.cpu_w,
        nameplate,
        "last" if is_stale else "measured",
        "assumed" if is_stale else "modelled",
        True,
        sensors,
        stale=is_stale,
    )
