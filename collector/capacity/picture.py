"""What the live capacity check answers: the site's draw against its cap, and what still fits.

Frozen dataclasses; :func:`picture_to_dict` makes JSON-ready data (what a snapshot row
stores and ``collector capacity --json`` prints), :func:`picture_from_dict` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_REST_BASIS",
    "DEFAULT_STALE_BASIS",
    "OBTAINED",
    "PDU",
    "Basis",
    "NodeDraw",
    "Obtained",
    "Picture",
    "RackDraw",
    "RestBasis",
    "RestFrom",
    "StaleBasis",
    "TypeDraw",
    "picture_from_dict",
    "picture_to_dict",
]

StaleBasis = Literal["nameplate", "last", "zero"]
"""How a stale or offline node counts: at its nameplate, its last measured draw, or 0 W."""
DEFAULT_STALE_BASIS: Final[StaleBasis] = "nameplate"
"""``[capacity] stale_basis`` unset (and ``collector capacity`` without settings)."""

Basis = Literal["measured", "nameplate", "last", "zero", "fallback"]
"""How one node was counted: from fresh readings (``measured``), or on a basis."""

RestBasis = Literal["calibrated", "model", "nameplate"]
"""What a node's unreported parts count at when its input power is not measured: calibrated
per node type from nodes that report both, the type's model of its parts, or the model plus
the nameplate slack (the most conservative)."""
DEFAULT_REST_BASIS: Final[RestBasis] = "calibrated"
"""``[capacity] rest_basis`` unset (and ``collector capacity`` without settings)."""

RestFrom = Literal["calibrated", "model", "nameplate"]
"""Where a node type's figure for its unreported parts came from this cycle."""

Obtained = Literal["measured", "calibrated", "modelled", "assumed", "measured (pdu)"]
"""How a draw was obtained: the node's input power read by its BMC or PSUs (``measured``);
its GPUs and CPU read plus the unreported parts calibrated (``calibrated``) or from the model
(``modelled``); no fresh reading (``assumed``: stale, offline, awaiting a first sample,
unmatched, counted on a basis); or its rack's PDUs read (``measured (pdu)``: the rack counts
at their reading, whatever its nodes say)."""

PDU: Final = "measured (pdu)"
"""The draw of racks counted at their PDUs' reading."""

OBTAINED: tuple[Obtained, ...] = ("measured", "calibrated", "modelled", "assumed", PDU)


@dataclass(frozen=True, slots=True)
class NodeDraw:
    """One node's counted draw (kept only when asked for: plots, ``--remove``)."""

    node: str
    node_type: str | None
    """``None``: unmatched (counted at the fallback)."""
    rack: str
    draw_w: float
    basis: Basis
    clamped: bool
    gpu_w: tuple[float, ...]
    """Measured power per GPU (empty when not measured)."""
    obtained: Obtained = "assumed"
    node_power_w: float | None = None
    """The node's fresh input power reading (``None``: none)."""
    node_power_source: str | None = None
    gpu_sum_w: float = 0.0
    """GPUs as counted: the measured ones, plus those not reporting at the type's gpu_w."""
    gpus_modelled: int = 0
    """GPUs of the type counted at its gpu_w (not reporting power)."""
    cpu_w: float = 0.0
    cpu_measured: bool = False
    rest_w: float = 0.0
    """The unreported parts as counted (0 when the draw was measured or assumed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TypeDraw:
    """The nodes of one node type: how many, how counted, their draw, how many more fit."""

    node_type: str
    nodes: int
    measured: int
    """Nodes counted from a fresh sample (the rest: stale/offline/unmatched)."""
    draw_w: float
    nameplate_w: float
    """Their draw if every one ran at nameplate (the worst case)."""
    more_live: int
    """More nodes of this type alone that fit, each drawing this type's mean live draw."""
    more_nameplate: int
    """More that fit if every node (old and new) drew its nameplate."""
    next_binding: str | None
    """What stops one more node past ``more_live`` (``None``: nothing, or no answer)."""
    draw_by: dict[str, float] = field(default_factory=dict)
    """``draw_w`` split by how it was obtained (:data:`OBTAINED`)."""
    nodes_by: dict[str, int] = field(default_factory=dict)
    """Nodes by how their draw was obtained."""
    rest_w: float = 0.0
    """What one node's unreported parts count at (when its input power is not measured)."""
    rest_from: RestFrom = "nameplate"
    rest_nodes: int = 0
    """Nodes the calibration came from (reporting input power, GPU and CPU power)."""
    rest_p25_w: float | None = None
    rest_p75_w: float | None = None
    """The spread of the calibration: quartiles of node - GPUs - CPU over those nodes."""
    model_rest_w: float = 0.0
    """The type's model of its unreported parts (DRAM, NVMe, NICs, aux), without slack."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RackDraw:
    """One rack's draw against its limit (``limit_w`` ``None``: no limit known)."""

    rack: str
    nodes: int
    draw_w: float
    limit_w: float | None
    draw_by: dict[str, float] = field(default_factory=dict)
    """``draw_w`` split by how it was obtained (:data:`OBTAINED`)."""
    nodes_w: float | None = None
    """With a fresh PDU reading (``draw_w`` is then that reading): what its nodes summed to
    as counted one by one; ``None``: the rack counts at its nodes' sum."""

    @property
    def by_pdu(self) -> bool:
        """Counted at its PDUs' reading."""
        return self.nodes_w is not None

    @property
    def fraction(self) -> float | None:
        """Draw over limit (``None`` without a limit)."""
        return self.draw_w / self.limit_w if self.limit_w else None

    @property
    def over(self) -> bool:
        """Above its limit."""
        return self.limit_w is not None and self.draw_w > self.limit_w


@dataclass(frozen=True, slots=True, kw_only=True)
class Picture:
    """The site's live power picture at ``at`` (collector clock, Unix seconds)."""

    at: float
    plan: str
    cap_w: float
    """The IT budget: min(IT cap, facility cap / PUE) less the reserve."""
    pue: float | None
    nodes_w: float
    fabric_w: float
    it_w: float
    facility_w: float | None
    headroom_w: float
    headroom_pct: float
    worst_it_w: float
    """IT draw if every node drew its nameplate (fabric at its maximum too)."""
    worst_headroom_w: float
    nodes: int
    measured_nodes: int
    stale_basis: StaleBasis
    stale_nodes: int
    """Stale or offline nodes (:mod:`collector.nodefacts`), counted on ``stale_basis``."""
    unsampled_nodes: int = 0
    """Online nodes awaiting their first sample, counted at nameplate."""
    unmatched_nodes: int
    fallback_type: str
    fallback_w: float
    clamped_nodes: int
    """Nodes whose measured draw was above their type's nameplate: counted at nameplate."""
    binding: str | None
    """What limits the site now: a live rack over its limit (``rack_power``), a violated
    constraint, or what stops the next node (``it_power``, ``facility_power``,
    ``fabric_radix``, ``rack_space``); ``None``: nothing known."""
    binding_detail: str
    fits: bool
    fabric_tiers: int
    fabric_switches: int
    types: tuple[TypeDraw, ...]
    racks: tuple[RackDraw, ...]
    """Every rack, highest draw against its limit first."""
    unmatched: tuple[str, ...] = ()
    """Names of unmatched nodes (the first 100)."""
    clamped: tuple[str, ...] = ()
    """Names of clamped nodes (the first 100)."""
    stale: tuple[str, ...] = ()
    """Names of nodes counted on ``stale_basis`` (the first 100)."""
    compute_ms: float = 0.0
    rest_basis: RestBasis = "nameplate"
    """How unreported parts were counted (snapshots before this field: ``nameplate``)."""
    draw_by: dict[str, float] = field(default_factory=dict)
    """``nodes_w`` split by how it was obtained (:data:`OBTAINED`)."""
    nodes_by: dict[str, int] = field(default_factory=dict)
    """Nodes by how their draw was obtained."""
    node_draws: tuple[NodeDraw, ...] | None = field(default=None, compare=False)

    @property
    def draw_fraction(self) -> float:
        """Live IT draw over the cap."""
        return self.it_w / self.cap_w if self.cap_w > 0 else 0.0


def picture_to_dict(p: Picture, *, nodes: bool = False) -> dict[str, Any]:
    """JSON-ready data (per-node draws only with ``nodes``)."""
    out = {
        f.name: getattr(p, f.name)
        for f in fields(p)
        if f.name not in ("types", "racks", "node_draws")
    }
    out["draw_pct"] = round(p.draw_fraction * 100, 3)
    out["types"] = [asdict(t) for t in p.types]
    out["racks"] = [
        {
            **asdict(r),
            "pct": None if r.fraction is None else round(r.fraction * 100, 2),
            "over": r.over,
        }
        for r in p.racks
    ]
    for key in ("unmatched", "clamped", "stale"):
        out[key] = list(out[key])
    if nodes and p.node_draws is not None:
        out["node_draws"] = [asdict(n) for n in p.node_draws]
    return out


def picture_from_dict(d: dict[str, Any]) -> Picture:
    """A :class:`Picture` from :func:`picture_to_dict` data (per-node draws dropped)."""
    skip = {"types", "racks", "node_draws", "draw_pct"}
    known = {f.name for f in fields(Picture)}
    kwargs = {k: v for k, v in d.items() if k in known and k not in skip}
    for key in ("unmatched", "clamped", "stale"):
        kwargs[key] = tuple(kwargs.get(key, ()))
    return Picture(
        **kwargs,
        types=tuple(TypeDraw(**t) for t in d.get("types", [])),
        racks=tuple(
            RackDraw(
                rack=r["rack"],
                nodes=r["nodes"],
                draw_w=r["draw_w"],
                limit_w=r["limit_w"],
                draw_by=r.get("draw_by", {}),
                nodes_w=r.get("nodes_w"),
            )
            for r in d.get("racks", [])
        ),
    )
