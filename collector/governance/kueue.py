"""The GPU quotas as Kueue manifests: ResourceFlavors, Cohorts and ClusterQueues.

Pure: the governance state and the fleet's GPUs in, ``kueue.x-k8s.io/v1beta1`` objects out
(plain dicts, for ``yaml.safe_dump_all``). The mapping, as ``collector export --format
kueue`` documents it:

* **ResourceFlavor**, one per GPU model in the fleet's inventories (at most
  :data:`MAX_FLAVORS`, those with the most GPUs), selecting its nodes by
  the label NVIDIA's GPU feature discovery sets, ``nvidia.com/gpu.product``, whose value is
  the model's NVML name with spaces as ``-`` (``NVIDIA H100 80GB HBM3`` ->
  ``NVIDIA-H100-80GB-HBM3``; k8s-device-plugin ``internal/lm/resource.go``). A site that
  labels nodes otherwise names another key (``label``).
* **Cohort** per capwatch cohort, with ``parentName`` (Kueue's hierarchical cohorts) and the
  cohort's own ``gpus`` quota; its borrowing and lending limits only when it has a parent,
  as Kueue's webhook requires.
* **ClusterQueue** per tenant with a ``gpus`` quota: ``cohort``, one resource group covering
  ``nvidia.com/gpu`` with every flavor, ``nominalQuota``, ``borrowingLimit`` and
  ``lendingLimit``; limits only when the tenant is in a cohort (Kueue refuses them
  otherwise, and they mean nothing there). ``preemption.reclaimWithinCohort: Any``: a
  tenant's nominal quota is guaranteed, as capwatch's admission counts it.
  ``namespaceSelector: {}``: every namespace (Kueue's default, null, admits none); the
  operator narrows it and creates the LocalQueues.

**One quota, several models.** capwatch counts GPUs of any model; Kueue counts quota per
flavor. A figure (nominal, borrowing or lending limit) is split over the flavors in
proportion to the GPUs of each model the tenant's leases hold now (a cohort: its subtree's
tenants), or, when they hold none, to the fleet's GPUs of each model; whole figures by
largest remainder, so the parts sum exactly to the store's figure and a flavor's lending
limit never exceeds its nominal quota (Kueue's webhook). With one model (the usual fleet)
the figures are the store's own. The split never lets a tenant take more in total than
capwatch allows; it can take less of a model than capwatch would (a tenant holding only H100
nodes may borrow no A100 GPUs when its borrowing limit is bounded).

Not expressed (Kueue has no such thing): power and GPU-hours quotas, lease dates and notice
periods, tenant priorities, which nodes a tenant leases.

Names: capwatch's names allow ``_``, capitals and a trailing ``.``/``-``; Kubernetes names
are DNS-1123 subdomains. A name that is not one is lowered, its other characters replaced
by ``-`` and a hash of the original appended (``Team_A`` -> ``team-a-e61a54``); every
object carries its capwatch name in the annotation ``capwatch.io/name``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from collector.governance.quota import FIGURES, Quota, check_figure
from collector.governance.state import Governance
from shared.cli import first_named, shown
from shared.errors import ConfigError

__all__ = [
    "API_VERSION",
    "GPU_RESOURCE",
    "MAX_FLAVORS",
    "NAME_ANNOTATION",
    "PRODUCT_LABEL",
    "Flavor",
    "KueueExport",
    "apportion",
    "check_label_key",
    "flavors_of",
    "k8s_name",
    "kueue_manifests",
    "product_label_value",
]

API_VERSION: Final = "kueue.x-k8s.io/v1beta1"
GPU_RESOURCE: Final = "nvidia.com/gpu"
PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
"""The node label NVIDIA's GPU feature discovery sets to the GPU model."""
NAME_ANNOTATION: Final = "capwatch.io/name"
_MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "capwatch"}
_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
"""A DNS-1123 subdomain: the pattern of Kueue's CRDs for cohort and flavor names."""
_LABEL_VALUE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
_LABEL_KEY: Final = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z"
)
MAX_FLAVORS: Final = 64
"""Flavors in one resource group at most: Kueue's ClusterQueue and Cohort CRDs
(``ResourceGroup.flavors``, ``maxItems: 64`` in v0.14.8). Every flavor is in
the one group covering ``nvidia.com/gpu``, so a fleet's GPU models past it are left out
(those with the fewest GPUs): a node's inventory names its models, and one node declaring
64 made-up ones must not make every ClusterQueue one that Kueue refuses."""
_NAMED: Final = 10
"""Models a note names at most (each node's inventory names its own: any number, any text)."""
_ANY_GPU: Final = "gpu"
"""The one flavor when no inventory names a GPU model: no node labels, any node."""


def k8s_name(name: str) -> str:
    """``name`` as a Kubernetes object name (DNS-1123 subdomain): itself when it is one,
    else lowered, other characters as ``-``, and a hash of ``name`` appended (unique)."""
    if len(name) <= 253 and _SUBDOMAIN.match(name):
        return name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:240] or "x"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def product_label_value(model: str) -> str:
    """GPU feature discovery's ``nvidia.com/gpu.product`` value for an NVML model name."""
    return model.replace(" ", "-")


def check_label_key(key: str) -> str:
    """``key`` if it is a Kubernetes label key, else :class:`ConfigError`."""
    if len(key) > 317 or not _LABEL_KEY.match(key):
        raise ConfigError(
            f"--gpu-label {key!r} is not a Kubernetes label key: [prefix/]name, e.g. "
            f"{PRODUCT_LABEL}",
            field="--gpu-label",
        )
    return key


@dataclass(frozen=True, slots=True)
class Flavor:
    """One GPU model as a ResourceFlavor."""

    name: str
    model: str | None
    """The NVML name; ``None``: the catch-all flavor of a fleet without GPU inventories."""
    gpus: int
    """GPUs of this model in the fleet."""


@dataclass(slots=True)
class KueueExport:
    """The manifests and what the export could not say."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def flavors_of(fleet: Mapping[str, int]) -> list[Flavor]:
    """One flavor per GPU model (model -> GPUs in the fleet), by name: the
    :data:`MAX_FLAVORS` models with the most GPUs; the catch-all ``gpu`` when there is
    none."""
    if not fleet:
        return [Flavor(_ANY_GPU, None, 0)]
    out: dict[str, Flavor] = {}
    for model in sorted(sorted(fleet, key=lambda m: (-fleet[m], m))[:MAX_FLAVORS]):
        name = k8s_name(model.strip().lower().replace(" ", "-"))
        if name in out:  # two spellings of one slug: keep both, told apart by a hash
            name = f"{name[:240]}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"
        out[name] = Flavor(name, model, fleet[model])
    return sorted(out.values(), key=lambda f: f.name)


def apportion(total: float, weights: Sequence[float]) -> list[float]:
    """``total`` split in proportion to ``weights`` (all zero: equally); a whole ``total``
    in whole parts by largest remainder. The parts sum to ``total``."""
    n = len(weights)
    if n == 1:
        return [total]
    w = list(weights) if sum(weights) > 0 else [1.0] * n
    s = sum(w)
    shares = [total * x / s for x in w]
    if not float(total).is_integer():
        parts = shares[:-1]
        return [*parts, total - sum(parts)]
    floors = [math.floor(x) for x in shares]
    left = int(total) - sum(floors)
    order = sorted(range(n), key=lambda i: (-(shares[i] - floors[i]), -w[i], i))
    for i in order[:left]:
        floors[i] += 1
    return [float(x) for x in floors]


def _split(q: Quota, weights: Sequence[float], limits: bool) -> list[dict[str, float | None]]:
    """A quota's figures per flavor; a lending limit kept under each flavor's nominal."""
    nominal = apportion(q.nominal, weights)
    borrowing = (
        [None] * len(weights)
        if q.borrowing_limit is None or not limits
        else apportion(q.borrowing_limit, weights)
    )
    lending: list[float | None] = [None] * len(weights)
    if q.lending_limit is not None and limits:
        parts = apportion(q.lending_limit, weights)
        capped = [min(p, n) for p, n in zip(parts, nominal, strict=True)]
        spill = sum(parts) - sum(capped)  # what rounding put over a nominal: to the others
        for i, n in enumerate(nominal):
            room = n - capped[i]
            take = min(room, spill)
            capped[i] += take
            spill -= take
        lending = list(capped)
    return [
        {"nominal": n, "borrowing_limit": b, "lending_limit": ll}
        for n, b, ll in zip(nominal, borrowing, lending, strict=True)
    ]


def _quantity(x: float) -> int | str:
    """A Kubernetes quantity: an integer when whole, else its decimal text."""
    return int(x) if float(x).is_integer() else repr(float(x))


def _resources(figures: Mapping[str, float | None]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": GPU_RESOURCE, "nominalQuota": _quantity(figures["nominal"] or 0)}
    if figures["borrowing_limit"] is not None:
        out["borrowingLimit"] = _quantity(figures["borrowing_limit"])
    if figures["lending_limit"] is not None:
        out["lendingLimit"] = _quantity(figures["lending_limit"])
    return out


def _meta(name: str, original: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": dict(_MANAGED_BY),
        "annotations": {NAME_ANNOTATION: original},
    }


def _weights(
    flavors: Sequence[Flavor], held: Mapping[str, float], fleet: Mapping[str, int]
) -> list[float]:
    mine = [held.get(f.model, 0.0) if f.model is not None else 0.0 for f in flavors]
    if sum(mine) > 0:
        return mine
    return [float(fleet.get(f.model, 0)) if f.model is not None else 1.0 for f in flavors]


def kueue_manifests(
    gov: Governance,
    node_gpus: Mapping[str, Mapping[str, int]],
    now: float,
    *,
    label: str = PRODUCT_LABEL,
) -> KueueExport:
    """ResourceFlavors, Cohorts and ClusterQueues for the ``gpus`` quotas of ``gov``.

    ``node_gpus``: node -> GPU model -> count, every node with an inventory; ``now``: the
    instant whose leases decide the split over models (module docstring).
    """
    out = KueueExport()
    fleet: dict[str, int] = {}
    for models in node_gpus.values():
        for model, k in models.items():
            fleet[model] = fleet.get(model, 0) + k
    flavors = flavors_of(fleet)
    if flavors[0].model is None:
        out.notes.append(
            "no inventory names a GPU model: one flavor 'gpu' without node labels (any node)"
        )
    left_out = sorted(set(fleet) - {f.model for f in flavors})
    if left_out:
        named = first_named([shown(m) for m in left_out], _NAMED)
        out.notes.append(
            f"{len(left_out)} GPU models past Kueue's {MAX_FLAVORS} flavors in a resource group "
            f"(those with the fewest GPUs) have no flavor: {named}"
        )
    for f in flavors:
        spec: dict[str, Any] = {}
        if f.model is not None:
            value = product_label_value(f.model)
            if len(value) <= 63 and _LABEL_VALUE.match(value):
                spec["nodeLabels"] = {label: value}
            else:
                out.notes.append(
                    f"flavor {f.name}: {value!r} cannot be a label value: no node labels"
                )
        out.objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ResourceFlavor",
                "metadata": _meta(f.name, f.model or _ANY_GPU),
                "spec": spec,
            }
        )
    held: dict[str, dict[str, float]] = {}
    for tenant, nodes in gov.tenant_nodes(now).items():
        per = held.setdefault(tenant, {})
        for node in nodes:
            for model, count in node_gpus.get(node, {}).items():
                per[model] = per.get(model, 0.0) + count
    tree = gov.tree("gpus")
    names = {c: k8s_name(c) for c in tree.cohorts()}
    _unique(names, "cohort")
    for cohort in tree.cohorts():
        cspec: dict[str, Any] = {}
        parent = tree.parent(cohort)
        if parent is not None:
            cspec["parentName"] = names[parent]
        own = gov.cohort_quotas.get((cohort, "gpus"))
        if own is not None:
            sub: dict[str, float] = {}
            for t in tree.tenants_under(cohort):
                for model, amount in held.get(t, {}).items():
                    sub[model] = sub.get(model, 0.0) + amount
            parts = _split(own, _weights(flavors, sub, fleet), limits=parent is not None)
            cspec["resourceGroups"] = [_group(flavors, parts)]
        out.objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": "Cohort",
                "metadata": _meta(names[cohort], cohort),
                "spec": cspec,
            }
        )
    queues = {t: k8s_name(t) for t in tree.tenants}
    _unique(queues, "tenant")
    for tenant in tree.tenants:
        tq = gov.quotas[(tenant, "gpus")]
        member = gov.tenants.get(tenant)
        parts = _split(
            tq.quota, _weights(flavors, held.get(tenant, {}), fleet), limits=member is not None
        )
        qspec: dict[str, Any] = {}
        if member is not None:
            qspec["cohort"] = names[member]
        qspec["namespaceSelector"] = {}
        qspec["preemption"] = {"reclaimWithinCohort": "Any"}
        qspec["resourceGroups"] = [_group(flavors, parts)]
        out.objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ClusterQueue",
                "metadata": _meta(queues[tenant], tenant),
                "spec": qspec,
            }
        )
    fractional = [
        f"{what} {name}"
        for what, name, q in [
            *(("cohort", c, q) for (c, r), q in gov.cohort_quotas.items() if r == "gpus"),
            *(("tenant", t, q.quota) for (t, r), q in gov.quotas.items() if r == "gpus"),
        ]
        if not _whole(q)
    ]
    if fractional:
        # Stored before `quota set` and `apply` took whole GPUs only (check_figure).
        out.notes.append(
            f"{first_named(sorted(fractional), _NAMED)}: a gpus figure is not a whole number, "
            "which Kubernetes refuses for nvidia.com/gpu: set whole ones (`collector quota set`)"
        )
    ungoverned = sorted(t for t in gov.tenants if (t, "gpus") not in gov.quotas)
    if ungoverned:
        out.notes.append(
            f"no ClusterQueue for the tenants without a gpus quota: {', '.join(ungoverned)}"
        )
    other = sorted({r for _, r in gov.quotas if r != "gpus"})
    if other:
        out.notes.append(f"not expressed in Kueue: the {' and '.join(other)} quotas")
    return out


def _whole(q: Quota) -> bool:
    """Whether every figure of the gpus quota ``q`` is whole (:func:`check_figure`)."""
    try:
        for figure in (getattr(q, name) for name in FIGURES):
            if figure is not None:
                check_figure("gpus", figure)
    except ValueError:
        return False
    return True


def _group(flavors: Sequence[Flavor], parts: Sequence[Mapping[str, float | None]]) -> Any:
    return {
        "coveredResources": [GPU_RESOURCE],
        "flavors": [
            {"name": f.name, "resources": [_resources(p)]}
            for f, p in zip(flavors, parts, strict=True)
        ],
    }


def _unique(names: Mapping[str, str], what: str) -> None:
    seen: dict[str, str] = {}
    for original, name in sorted(names.items()):
        if name in seen:
            raise ConfigError(
                f"{what}s {seen[name]!r} and {original!r} both become the Kubernetes name "
                f"{name!r}: rename one",
                field=what,
            )
        seen[name] = original
