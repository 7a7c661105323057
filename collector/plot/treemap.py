"""The compute hierarchy as a treemap: site -> rack -> node -> GPU, coloured by power.

Layout by ``squarify`` (Bruls, Huizing and van Wijk's squarified treemaps, a small
well-kept library), nested: the site's rectangle is split among racks by their draw, each
rack's among its nodes, each node's among its GPUs (measured power) and the rest of the
node. Colour is power as a share of nameplate (a GPU against its type's ``gpu_w``, the rest
of a node against its nameplate less its GPUs), so the hot rack and the hot node stand out.
Past ``max_gpu_nodes`` nodes the GPUs are not drawn (the picture stays readable and quick).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from collector.capacity.config import CapacityPlan
from collector.capacity.picture import NodeDraw, Picture
from collector.plot.figures import HEIGHT_PX, WIDTH_PX, new_figure
from shared.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["hierarchy_figure"]

_PAD: Final = 0.004
"""Gap around each rack, as a fraction of the site's width."""


def _split(
    values: Sequence[float], x: float, y: float, w: float, h: float
) -> list[tuple[float, float, float, float]]:
    import squarify  # noqa: PLC0415  (optional extra)

    if w <= 0 or h <= 0 or not values:
        return [(x, y, 0.0, 0.0) for _ in values]
    vals = [max(v, 1e-9) for v in values]
    order = sorted(range(len(vals)), key=lambda i: -vals[i])
    sized = squarify.normalize_sizes([vals[i] for i in order], w, h)
    rects = squarify.squarify(sized, x, y, w, h)
    out: list[tuple[float, float, float, float]] = [(0.0, 0.0, 0.0, 0.0)] * len(vals)
    for i, r in zip(order, rects, strict=True):
        out[i] = (r["x"], r["y"], r["dx"], r["dy"])
    return out


_REST_STYLE: Final = {
    "measured": ("0.65", ""),
    "calibrated": ("0.8", ""),
    "modelled": ("0.9", ".."),
}
"""Face colour and hatch of a node's rest (all but its GPUs) by how the node's draw was
obtained."""
_REST_LABEL: Final = {
    "measured": "rest of node, measured (BMC input power - GPUs)",
    "calibrated": "rest of node: CPU + unreported parts calibrated per type",
    "modelled": "rest of node: CPU + unreported parts from the type's model",
}


def hierarchy_figure(
    cplan: CapacityPlan, picture: Picture, *, max_gpu_nodes: int = 2_000
) -> Figure:
    """The treemap of ``picture`` (which must carry per-node draws)."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415
    from matplotlib.collections import PatchCollection  # noqa: PLC0415
    from matplotlib.colors import Normalize  # noqa: PLC0415
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    try:
        import squarify  # noqa: F401, PLC0415  (optional extra: checked before drawing)
    except ImportError as exc:
        raise ConfigError(
            "the hierarchy picture needs squarify, which is not installed: "
            "pip install 'capwatch[plot]'",
            field="plot",
        ) from exc
    draws = picture.node_draws or ()
    types = cplan.types
    by_rack: dict[str, list[NodeDraw]] = defaultdict(list)
    for n in draws:
        by_rack[n.rack].append(n)
    racks = sorted(by_rack, key=lambda r: -sum(n.draw_w for n in by_rack[r]))
    limits = {r.rack: r.limit_w for r in picture.racks}
    show_gpus = len(draws) <= max_gpu_nodes
    title = (
        f"Compute hierarchy: site {picture.it_w / 1e6:,.2f} MW IT of {picture.cap_w / 1e6:,.2f}"
        f" MW cap -> {len(racks)} racks -> {len(draws):,} nodes"
        + (" -> GPUs" if show_gpus else " (GPUs not drawn past 2,000 nodes)")
    )
    fig = new_figure(title)
    ax = fig.subplots()
    width, height = float(WIDTH_PX), float(HEIGHT_PX)
    rects: list[Rectangle] = []
    colours: list[float] = []
    outlines: list[Rectangle] = []
    nodes_out: list[Rectangle] = []
    rest_boxes: dict[str, list[Rectangle]] = {"measured": [], "calibrated": [], "modelled": []}
    unmeasured: list[Rectangle] = []
    rack_boxes = _split([sum(n.draw_w for n in by_rack[r]) for r in racks], 0, 0, width, height)
    pad = _PAD * width
    for rack, (rx, ry, rw, rh) in zip(racks, rack_boxes, strict=True):
        nodes = sorted(by_rack[rack], key=lambda n: -n.draw_w)
        inner = (rx + pad, ry + pad, max(rw - 2 * pad, 0.0), max(rh - 2 * pad, 0.0))
        outlines.append(Rectangle((rx, ry), rw, rh))
        for n, (nx, ny, nw, nh) in zip(
            nodes, _split([n.draw_w for n in nodes], *inner), strict=True
        ):
            t = types.get(n.node_type or "")
            nameplate = t.max_w if t is not None else picture.fallback_w
            gpu_max = t.gpu_w if t is not None and t.gpu_w > 0 else 1000.0
            nodes_out.append(Rectangle((nx, ny), nw, nh))
            if show_gpus and n.gpu_w and n.basis == "measured":
                rest = max(n.draw_w - sum(n.gpu_w), 0.0)
                boxes = _split([*n.gpu_w, rest], nx, ny, nw, nh)
                for k, (bx, by, bw, bh) in enumerate(boxes):
                    if k < len(n.gpu_w):
                        rects.append(Rectangle((bx, by), bw, bh))
                        colours.append(min(n.gpu_w[k] / gpu_max, 1.0))
                    else:  # the rest of the node (CPU and the unreported parts): neutral,
                        # shaded by how it was obtained
                        how = n.obtained if n.obtained in rest_boxes else "modelled"
                        rest_boxes[how].append(Rectangle((bx, by), bw, bh))
            elif n.basis != "measured":  # stale, offline, unmatched: not measured now
                unmeasured.append(Rectangle((nx, ny), nw, nh))
            else:
                rects.append(Rectangle((nx, ny), nw, nh))
                colours.append(min(n.draw_w / nameplate, 1.0) if nameplate else 0.0)
        limit = limits.get(rack)
        draw = sum(n.draw_w for n in nodes)
        label = f"{rack}\n{draw / 1e3:,.0f} kW" + (
            f" ({draw / limit:.0%} of limit)" if limit else ""
        )
        if rw > 110 and rh > 45:  # a label must fit its box
            ax.text(
                rx + rw / 2,
                ry + rh / 2,
                label,
                ha="center",
                va="center",
                fontsize=10 if rw > 250 else 7,
                color="black",
                bbox={"facecolor": "white", "alpha": 0.75, "linewidth": 0},
            )
    cmap = colormaps["YlOrRd"]
    norm = Normalize(vmin=0.0, vmax=1.0)
    cells = PatchCollection(rects, cmap=cmap, norm=norm, edgecolor="white", linewidth=0.2)
    cells.set_array(colours)
    ax.add_collection(cells)
    for shade, (face, hatch) in _REST_STYLE.items():
        ax.add_collection(
            PatchCollection(
                rest_boxes[shade], facecolor=face, hatch=hatch, edgecolor="white", linewidth=0.2
            )
        )
    ax.add_collection(
        PatchCollection(
            unmeasured, facecolor="lightsteelblue", edgecolor="0.3", hatch="//", linewidth=0.5
        )
    )
    ax.add_collection(PatchCollection(nodes_out, facecolor="none", edgecolor="0.3", linewidth=0.5))
    ax.add_collection(PatchCollection(outlines, facecolor="none", edgecolor="black", linewidth=1.5))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("area: power drawn (W); boxes nest rack > node > GPU", fontsize=11)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03)
    bar.set_label(
        "power as share of nameplate (a GPU: of its type's gpu_w; a node drawn whole: "
        "of its nameplate)"
    )
    bar.ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    over = [r.rack for r in picture.racks if r.over]
    handles = [
        Rectangle(
            (0, 0),
            1,
            1,
            facecolor="none",
            edgecolor="black",
            linewidth=1.5,
            label="rack (label: draw, share of its limit)",
        ),
        Rectangle((0, 0), 1, 1, facecolor="none", edgecolor="0.3", label="node"),
        Rectangle((0, 0), 1, 1, facecolor=cmap(0.95), label="GPU at its limit"),
        Rectangle((0, 0), 1, 1, facecolor=cmap(0.1), label="GPU idle"),
        *(
            Rectangle((0, 0), 1, 1, facecolor=face, hatch=hatch, label=_REST_LABEL[shade])
            for shade, (face, hatch) in _REST_STYLE.items()
        ),
        Rectangle(
            (0, 0),
            1,
            1,
            facecolor="lightsteelblue",
            hatch="//",
            label="not measured (stale/offline/unmatched): counted per basis",
        ),
    ]
    if over:
        handles.append(
            Rectangle(
                (0, 0),
                1,
                1,
                facecolor="none",
                edgecolor="red",
                linewidth=2,
                label=f"over its limit: {', '.join(over[:5])}",
            )
        )
        ax.add_collection(
            PatchCollection(
                [o for r, o in zip(racks, outlines, strict=True) if r in over],
                facecolor="none",
                edgecolor="red",
                linewidth=3,
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    return fig
