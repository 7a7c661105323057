"""``cluster.toml``: tenants, cohorts, quotas, pools and leases declared in one file.

The schema (:class:`ClusterSpec`, pydantic, unknown keys refused) names every bad key by its
dotted path (``tenants.acme.quota.gpus.nominal``). :func:`apply_spec` makes the store say
what the file says, inside one :class:`~collector.store.command.Command` transaction, and
returns the changes as ``+`` (new), ``~`` (changed) and ``-`` (removed) lines; applying the
same file again changes nothing. What the file does not name (another tenant, a pool made by
``collector pool``) is left as it is; for a tenant or cohort it names, its quotas are exactly
the file's. :func:`export_spec` writes the store's state in the same
shape, so ``collector export | collector apply -f -`` is a no-op.

Example::

    [cohorts.org]
    quota = { gpus = 4 }                  # the cohort's own nominal quota

    [cohorts.research]
    parent = "org"                        # a cohort of cohorts (Kueue KEP-79)
    quota = { gpus = { nominal = 12, borrowing_limit = 4, lending_limit = 6 } }

    [tenants.acme]
    cohort = "research"
    priority = 10
    quota.gpus = { nominal = 9, borrowing_limit = 1 }
    quota.gpu_hours = { nominal = 5000, period = "month" }

    [pools.acme-a]
    nodes = ["x1000c0s0b0n0", "x1000c0s0b0n1"]
    comment = "acme's training pool"      # optional; left as it is when not given

    [pools.zinal]
    pattern = "a100:4:epyc:30:memory:80"  # fewest nodes, as `collector pool apply -p`

    [leases.acme-2026]
    tenant = "acme"
    pool = "acme-a"                       # or nodes = [...]
    start = 2026-01-01
    duration_days = 180
    notice_days = 90                      # or notice_months = 3 (back from the term's end)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collector.governance.admit import admit
from collector.governance.lease import DEFAULT_DURATION_DAYS, LeaseError, LeaseTerms
from collector.governance.ops import LeaseRequest, add_lease, judge_growth, overlapping
from collector.governance.periods import Period
from collector.governance.quota import (
    FIGURES,
    MAX_QUOTA,
    RESOURCES,
    Quota,
    check_figure,
    find_cycle,
)
from collector.governance.state import Governance, TenantQuota
from collector.store.pools import FREE
from shared.errors import ConfigError
from shared.settings import wrong_scalar_types
from shared.topics import NODE_ID_RE

if TYPE_CHECKING:
    from collector.governance.inventory import NodeComponents
    from collector.store.command import Command

__all__ = ["ClusterSpec", "apply_spec", "export_spec", "parse_spec", "plan_patterns"]

_Name = Field(min_length=1, max_length=128)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class QuotaSpec(_Strict):
    """One tenant's quota on one resource."""

    nominal: float = Field(ge=0, le=MAX_QUOTA)
    borrowing_limit: float | None = Field(default=None, ge=0, le=MAX_QUOTA)
    lending_limit: float | None = Field(default=None, ge=0, le=MAX_QUOTA)
    period: Period | None = None

    @model_validator(mode="after")
    def _lends_at_most_nominal(self) -> QuotaSpec:
        if self.lending_limit is not None and self.lending_limit > self.nominal:
            raise ValueError("lending_limit is more than nominal (Kueue refuses it too)")
        return self


class CohortQuotaSpec(_Strict):
    """A cohort's own quota on one resource; the limits apply towards its parent."""

    nominal: float = Field(ge=0, le=MAX_QUOTA)
    borrowing_limit: float | None = Field(default=None, ge=0, le=MAX_QUOTA)
    lending_limit: float | None = Field(default=None, ge=0, le=MAX_QUOTA)

    def quota(self) -> Quota:
        """As the arithmetic takes it."""
        return Quota(self.nominal, self.borrowing_limit, self.lending_limit)


class CohortSpec(_Strict):
    """A cohort: its parent (Kueue's hierarchical cohorts) and its own quota per resource,
    a number (its nominal) or ``{ nominal, borrowing_limit, lending_limit }``."""

    parent: str | None = None
    quota: dict[Literal["gpus", "power_kw", "gpu_hours"], float | CohortQuotaSpec] = {}

    @model_validator(mode="after")
    def _non_negative(self) -> CohortSpec:
        for resource, value in self.quota.items():
            if isinstance(value, float | int) and not 0 <= value <= MAX_QUOTA:
                raise ValueError(f"quota.{resource} must be from 0 to {MAX_QUOTA:g}")
            limited = isinstance(value, CohortQuotaSpec) and (
                value.borrowing_limit is not None or value.lending_limit is not None
            )
            if limited and self.parent is None:
                raise ValueError(
                    f"quota.{resource}: borrowing and lending limits are towards a parent: "
                    'give the cohort parent = "NAME" (Kueue allows them only then)'
                )
        return self

    def quota_of(self, resource: str) -> Quota | None:
        """Its own quota on ``resource``, or ``None``."""
        value = self.quota.get(resource)  # type: ignore[call-overload]
        if value is None:
            return None
        return value.quota() if isinstance(value, CohortQuotaSpec) else Quota(float(value))


PRIORITY_MIN: Final = -(2**31)
PRIORITY_MAX: Final = 2**31 - 1
"""A tenant's priority: a 32-bit integer, as a Kubernetes PriorityClass value."""


class TenantSpec(_Strict):
    """A tenant: its cohort, priority and quotas."""

    cohort: str | None = None
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    quota: dict[Literal["gpus", "power_kw", "gpu_hours"], QuotaSpec] = {}


class PoolSpec(_Strict):
    """A pool by explicit nodes, or by a clstr pattern's terms (``a100:4:epyc:30``): then
    the fewest whole nodes, planned as ``collector pool apply`` plans them (members kept
    first, leased nodes untouchable)."""

    nodes: list[str] | None = Field(default=None, max_length=100_000)
    pattern: str | None = Field(default=None, min_length=1, max_length=1024)
    comment: str | None = None
    """What the pool is for (``collector pool create --comment``); not given: the stored
    one is left as it is (a file written before pools had one keeps them)."""

    @model_validator(mode="after")
    def _nodes_or_pattern(self) -> PoolSpec:
        if (self.nodes is None) == (self.pattern is None):
            raise ValueError('give either nodes = [...] or pattern = "a100:4:..."')
        return self


class LeaseSpec(_Strict):
    """A lease of a pool or of named nodes."""

    tenant: str = _Name
    pool: str | None = None
    nodes: list[str] = Field(default=[], max_length=100_000)
    start: dt.date
    duration_days: int = Field(default=DEFAULT_DURATION_DAYS, ge=1, le=100 * 366)
    term_days: int | None = Field(default=None, ge=1, le=100 * 366)
    notice_days: int = Field(default=0, ge=0, le=100 * 366)
    notice_months: int = Field(default=0, ge=0, le=1200)
    """A notice period in calendar months, counted back from a term's end."""
    min_days: int = Field(default=0, ge=0, le=100 * 366)
    tz: str = "UTC"
    auto_renew: bool = False
    notice_given: dt.date | None = None
    force_reason: str | None = None
    comment: str = ""

    @model_validator(mode="after")
    def _pool_or_nodes(self) -> LeaseSpec:
        if self.pool is None and not self.nodes:
            raise ValueError("a lease needs pool = NAME or nodes = [...]")
        return self

    def terms(self) -> LeaseTerms:
        """The lease's dates."""
        return LeaseTerms(
            start=self.start,
            duration_days=self.duration_days,
            term_days=self.term_days,
            notice_days=self.notice_days,
            notice_months=self.notice_months,
            min_days=self.min_days,
            tz=self.tz,
            auto_renew=self.auto_renew,
            notice_given=self.notice_given,
        )


class ClusterSpec(_Strict):
    """The whole file."""

    cohorts: dict[str, CohortSpec] = {}
    tenants: dict[str, TenantSpec] = {}
    pools: dict[str, PoolSpec] = {}
    leases: dict[str, LeaseSpec] = {}


def parse_spec(data: Mapping[str, Any], *, source: str = "cluster.toml") -> ClusterSpec:
    """Validate a parsed TOML document; :class:`ConfigError` naming the first bad key."""
    try:
        wrong = wrong_scalar_types(ClusterSpec, data)
        if wrong:
            raise ValidationError.from_exception_data(ClusterSpec.__name__, wrong[:1])
        spec = ClusterSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see `collector apply --help` for the file's shape)"
        raise ConfigError(f"{source}: {key}: {msg}", field=key) from None
    _check_names(spec, source)
    _check_figures(spec, source)
    cycle = find_cycle({n: c.parent for n, c in spec.cohorts.items()})
    if cycle is not None:
        raise ConfigError(
            f"{source}: cohorts: parents form a cycle: {' -> '.join(cycle)}; a cohort tree "
            "has no cycles (Kueue disables such cohorts)",
            field=f"cohorts.{cycle[0]}.parent",
        )
    owner: dict[str, str] = {}
    for name, pool in sorted(spec.pools.items()):
        if pool.pattern is not None:
            from collector.governance.pattern import parse_pattern  # noqa: PLC0415

            parse_pattern(f"{name}:{pool.pattern}", field=f"{source}: pools.{name}.pattern")
        for node in pool.nodes or ():
            if not NODE_ID_RE.match(node):
                raise ConfigError(
                    f"{source}: pools.{name}.nodes: {node!r} is not a node id",
                    field=f"pools.{name}.nodes",
                )
            if owner.setdefault(node, name) != name:
                raise ConfigError(
                    f"{source}: pools.{name}.nodes: {node} is also in pools.{owner[node]}: a "
                    "node is in at most one pool",
                    field=f"pools.{name}.nodes",
                )
    for name, lease in spec.leases.items():
        try:
            lease.terms()
        except LeaseError as exc:
            raise ConfigError(f"{source}: leases.{name}: {exc}", field=f"leases.{name}") from None
    return spec


def _check_figures(spec: ClusterSpec, source: str) -> None:
    """Every quota figure by :func:`~collector.governance.quota.check_figure` (whole GPUs),
    naming its key."""
    figures: list[tuple[str, str, float | None]] = []
    for name, cohort in spec.cohorts.items():
        for resource, value in cohort.quota.items():
            key = f"cohorts.{name}.quota.{resource}"
            if isinstance(value, CohortQuotaSpec):
                figures += _figures_of(key, resource, value)
            else:
                figures.append((key, resource, value))
    for name, tenant in spec.tenants.items():
        for res, q in tenant.quota.items():
            figures += _figures_of(f"tenants.{name}.quota.{res}", res, q)
    for key, of, figure in figures:
        try:
            if figure is not None:
                check_figure(of, figure)
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}", field=key) from None


def _figures_of(
    key: str, resource: str, q: QuotaSpec | CohortQuotaSpec
) -> list[tuple[str, str, float | None]]:
    return [(f"{key}.{name}", resource, getattr(q, name)) for name in FIGURES]


def _check_names(spec: ClusterSpec, source: str) -> None:
    """Tenant, cohort and pool names follow the commands' rule (`collector pool create`)."""
    from collector.governance.ops import validate_tenant_name  # noqa: PLC0415
    from collector.governance.pattern import validate_pool_name  # noqa: PLC0415

    names: list[tuple[str, str, str | None]] = [(f"cohorts.{n}", "cohort", n) for n in spec.cohorts]
    names += [(f"cohorts.{n}.parent", "cohort", c.parent) for n, c in spec.cohorts.items()]
    names += [(f"tenants.{n}", "tenant", n) for n in spec.tenants]
    names += [(f"tenants.{n}.cohort", "cohort", t.cohort) for n, t in spec.tenants.items()]
    names += [(f"leases.{n}.tenant", "tenant", x.tenant) for n, x in spec.leases.items()]
    for key, what, name in names:
        if name is not None:
            try:
                validate_tenant_name(name, what=what, field=key)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {key}: {exc}", field=key) from None
    pools = [(f"pools.{n}", n) for n in spec.pools]
    pools += [(f"leases.{n}.pool", x.pool) for n, x in spec.leases.items() if x.pool]
    for key, pool in pools:
        if pool is not None and pool != "free":  # `free` has its own line in apply_spec
            try:
                validate_pool_name(pool, field=key)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {key}: {exc}", field=key) from None


def _cohort_text(q: Quota | None) -> str:
    if q is None:
        return "none"
    if q.borrowing_limit is None and q.lending_limit is None:
        return f"{q.nominal:g}"
    return _quota_text(TenantQuota(q))


def _quota_text(q: TenantQuota | None) -> str:
    if q is None:
        return "none"
    parts = [f"nominal {q.quota.nominal:g}"]
    if q.quota.borrowing_limit is not None:
        parts.append(f"borrowing_limit {q.quota.borrowing_limit:g}")
    if q.quota.lending_limit is not None:
        parts.append(f"lending_limit {q.quota.lending_limit:g}")
    if q.period is not None:
        parts.append(f"period {q.period}")
    return ", ".join(parts)


def apply_spec(
    tx: Command,
    spec: ClusterSpec,
    hardware: Mapping[str, tuple[int, float]],
    planned: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Make the store match ``spec`` (in the transaction ``tx``); the change lines.

    ``planned``: the nodes chosen for each pool declared by pattern (:func:`plan_patterns`).
    """
    planned = planned or {}
    gov = tx.governance.state()
    changes: list[str] = []
    grown: dict[int, list[str]] = {}
    cohorts = set(spec.cohorts) | {t.cohort for t in spec.tenants.values() if t.cohort}
    cohorts |= {c.parent for c in spec.cohorts.values() if c.parent}
    parents = dict(gov.cohort_parents)
    parents.update({n: c.parent for n, c in spec.cohorts.items() if c.parent})
    for n, c in spec.cohorts.items():
        if c.parent is None:
            parents.pop(n, None)
    cycle = find_cycle(parents)
    if cycle is not None:
        raise ConfigError(
            f"cohorts: with the stored cohorts, parents form a cycle: {' -> '.join(cycle)}",
            field=f"cohorts.{cycle[0]}.parent",
        )
    for name in sorted(cohorts):
        c = spec.cohorts.get(name, CohortSpec())
        if name not in gov.cohorts:
            changes.append(f"+ cohort {name}")
        tx.governance.put_cohort(name)
        if name not in spec.cohorts:
            continue
        if gov.cohort_parents.get(name) != c.parent:
            changes.append(
                f"~ cohort {name} parent: {gov.cohort_parents.get(name) or '-'} -> "
                f"{c.parent or '-'}"
            )
            tx.governance.set_cohort_parent(name, c.parent)
        for resource in RESOURCES:
            own = c.quota_of(resource)
            had = gov.cohort_quotas.get((name, resource))
            if own != had:
                changes.append(
                    f"~ cohort {name} {resource}: {_cohort_text(had)} -> {_cohort_text(own)}"
                )
                tx.governance.put_cohort_quota(name, resource, own)
    for name, t in sorted(spec.tenants.items()):
        if name not in gov.tenants:
            changes.append(f"+ tenant {name} (cohort {t.cohort or '-'}, priority {t.priority})")
        elif (gov.tenants[name], gov.priorities.get(name, 0)) != (t.cohort, t.priority):
            changes.append(
                f"~ tenant {name}: cohort {gov.tenants[name] or '-'} -> {t.cohort or '-'}, "
                f"priority {gov.priorities.get(name, 0)} -> {t.priority}"
            )
        tx.governance.put_tenant(name, t.cohort, t.priority)
        for resource in RESOURCES:
            qs = t.quota.get(resource)  # type: ignore[call-overload]
            want = (
                None
                if qs is None
                else TenantQuota(
                    Quota(qs.nominal, qs.borrowing_limit, qs.lending_limit),
                    qs.period if resource == "gpu_hours" else None,
                )
            )
            have = gov.quotas.get((name, resource))
            if want != have:
                changes.append(
                    f"~ quota {name} {resource}: {_quota_text(have)} -> {_quota_text(want)}"
                )
                tx.governance.put_quota(
                    name,
                    resource,
                    None if want is None else want.quota,
                    None if want is None else want.period,
                )
    for name, p in sorted(spec.pools.items()):
        if name == "free":
            raise ConfigError("pools.free: `free` is every node in no pool; name it otherwise")
        have_nodes = tx.pools.nodes(name) if tx.pools.exists(name) else None
        chosen = p.nodes if p.nodes is not None else planned.get(name)
        if chosen is None:
            raise ConfigError(f"pools.{name}.pattern: not planned", field=f"pools.{name}")
        want_nodes = sorted(set(chosen))
        known = have_nodes is not None and p.comment is not None
        if known and tx.pools.comment(name) != p.comment:
            changes.append(f"~ pool {name}: comment")
            tx.pools.set_comment(name, p.comment or "")
        if have_nodes == want_nodes:
            continue
        for node, other in sorted(tx.pools.pools_of(want_nodes).items()):
            if other != name and other not in spec.pools:
                raise ConfigError(
                    f"pools.{name}.nodes: {node} is in pool {other!r}, which the file does not "
                    "name: move it out of that pool first, or declare that pool too",
                    field=f"pools.{name}.nodes",
                )
            if other != name:
                changes.append(f"~ node {node}: pool {other} -> {name}")
        if have_nodes is None:
            changes.append(f"+ pool {name} ({len(want_nodes)} nodes)")
            tx.pools.create(name, p.comment or "")
        else:
            added = sorted(set(want_nodes) - set(have_nodes))
            removed = sorted(set(have_nodes) - set(want_nodes))
            changes.append(f"~ pool {name}: +{added} -{removed}")
            grown.update(tx.pools.move(removed, FREE, f"apply pools.{name}"))
        grown.update(tx.pools.move(want_nodes, name, f"apply pools.{name}"))
    _judge_growth(tx, spec, grown)
    changes += _apply_leases(tx, spec, gov, hardware)
    return changes


def _judge_growth(tx: Command, spec: ClusterSpec, grown: Mapping[int, list[str]]) -> None:
    """Leases whose pool the file grew: admitted over the rest of the lease, or forced by
    the file's ``force_reason`` for that lease."""
    if not grown:
        return
    leases = {lease.id: lease for lease in tx.governance.state().leases}
    for lease_id, nodes in sorted(grown.items()):
        lease = leases[lease_id]
        declared = spec.leases.get(lease.name)
        try:
            judge_growth(
                tx,
                {lease_id: nodes},
                force_reason=None if declared is None else declared.force_reason,
            )
        except ConfigError as exc:
            raise ConfigError(f"pools.{lease.pool}: {exc}", field=f"pools.{lease.pool}") from None


def plan_patterns(
    spec: ClusterSpec, nodes: Sequence[NodeComponents], leased: set[str]
) -> dict[str, list[str]]:
    """The nodes of each pool the file declares by pattern, planned one after the other
    (each takes from what the earlier ones left free), as ``collector pool apply`` plans:
    fewest nodes, the pool's own members first, ``leased`` nodes untouchable."""

    from collector.governance.allocate import plan_pool  # noqa: PLC0415
    from collector.governance.pattern import parse_pattern  # noqa: PLC0415

    current = list(nodes)
    out: dict[str, list[str]] = {}
    # Nodes the file gives to pools by name are not the patterns' to take.
    named = {n for p in spec.pools.values() for n in p.nodes or ()}
    leased = leased | named
    for name, p in sorted(spec.pools.items()):
        if p.pattern is None:
            continue
        pattern = parse_pattern(f"{name}:{p.pattern}", field=f"pools.{name}.pattern")
        plan = plan_pool(current, pattern, excluded=leased)
        out[name] = list(plan.final)
        final = set(plan.final)
        current = [
            dataclasses.replace(n, pool=name)
            if n.node in final
            else (dataclasses.replace(n, pool=FREE) if n.pool == name else n)
            for n in current
        ]
    return out


def _apply_leases(
    tx: Command,
    spec: ClusterSpec,
    gov: Governance,
    hardware: Mapping[str, tuple[int, float]],
) -> list[str]:
    changes: list[str] = []
    stored = {lease.name: lease for lease in gov.leases}
    current = tx.governance.state()  # after the tenants and quotas above; kept current
    for name, ls in sorted(spec.leases.items()):
        terms = ls.terms()
        nodes = sorted(set(ls.nodes)) if ls.nodes else tx.pools.nodes(ls.pool or "")
        have = stored.get(name)
        if have is None:
            try:
                add_lease(
                    tx,
                    LeaseRequest(
                        name=name,
                        tenant=ls.tenant,
                        terms=terms,
                        pool=ls.pool,
                        nodes=tuple(ls.nodes),
                        force_reason=ls.force_reason,
                        comment=ls.comment,
                    ),
                    hardware,
                    current,
                )
            except ConfigError as exc:
                raise ConfigError(f"leases.{name}: {exc}", field=f"leases.{name}") from None
            changes.append(f"+ lease {name} ({ls.tenant}, from {terms.start.isoformat()})")
            continue
        if have.tenant != ls.tenant:
            raise ConfigError(
                f"leases.{name}.tenant: the stored lease belongs to {have.tenant!r}; a lease "
                "cannot change tenant: give the new one another name",
                field=f"leases.{name}.tenant",
            )
        if have.terms != terms or have.comment != ls.comment:
            changes.append(f"~ lease {name}: dates or notice changed")
        if sorted(have.nodes) != nodes:
            changes.append(f"~ lease {name}: nodes {len(have.nodes)} -> {len(nodes)}")
        if have.terms != terms or sorted(have.nodes) != nodes:
            clash = overlapping(current, nodes, terms, skip=have.id)
            if clash:
                node, other = clash[0]
                raise ConfigError(
                    f"leases.{name}: node {node} is in lease {other.name!r} (id {other.id}) "
                    "at the same time",
                    field=f"leases.{name}",
                )
            verdict = admit(current, hardware, ls.tenant, nodes, terms, now=tx.now, old=have)
            if verdict.refusal is not None:
                if ls.force_reason is None:
                    raise ConfigError(
                        f"leases.{name}: {verdict.refusal.text()}; raise the quota, or give "
                        'the lease force_reason = "why"',
                        field=f"leases.{name}",
                    )
                tx.governance.mark_forced(have.id, ls.force_reason)
            tx.governance.update_lease(have, terms, comment=ls.comment)
            tx.governance.set_lease_nodes(have, nodes)
            current.leases = [
                dataclasses.replace(x, terms=terms, nodes=tuple(nodes)) if x.id == have.id else x
                for x in current.leases
            ]
        elif have.comment != ls.comment:
            tx.governance.update_lease(have, terms, comment=ls.comment)
    return changes


def export_spec(
    gov: Governance, pools: Mapping[str, list[str]], comments: Mapping[str, str]
) -> dict[str, Any]:
    """The store's governance state as a ``cluster.toml`` document (for ``tomli_w``)."""
    doc: dict[str, Any] = {"cohorts": {}, "tenants": {}, "pools": {}, "leases": {}}
    for name in sorted(gov.cohorts):
        quota: dict[str, Any] = {}
        for (c, r), cq in sorted(gov.cohort_quotas.items()):
            if c != name:
                continue
            if cq.borrowing_limit is None and cq.lending_limit is None:
                quota[r] = cq.nominal
            else:
                limits = {"borrowing_limit": cq.borrowing_limit, "lending_limit": cq.lending_limit}
                quota[r] = {
                    "nominal": cq.nominal,
                    **{k: v for k, v in limits.items() if v is not None},
                }
        cohort: dict[str, Any] = {}
        if name in gov.cohort_parents:
            cohort["parent"] = gov.cohort_parents[name]
        if quota:
            cohort["quota"] = quota
        doc["cohorts"][name] = cohort
    for name in sorted(gov.tenants):
        t: dict[str, Any] = {"priority": gov.priorities.get(name, 0)}
        if gov.tenants[name]:
            t["cohort"] = gov.tenants[name]
        quotas: dict[str, Any] = {}
        for (tenant, resource), q in sorted(gov.quotas.items()):
            if tenant != name:
                continue
            entry: dict[str, Any] = {"nominal": q.quota.nominal}
            if q.quota.borrowing_limit is not None:
                entry["borrowing_limit"] = q.quota.borrowing_limit
            if q.quota.lending_limit is not None:
                entry["lending_limit"] = q.quota.lending_limit
            if q.period is not None:
                entry["period"] = q.period
            quotas[resource] = entry
        if quotas:
            t["quota"] = quotas
        doc["tenants"][name] = t
    for name, nodes in sorted(pools.items()):
        doc["pools"][name] = {"nodes": sorted(nodes)}
        if comments.get(name):
            doc["pools"][name]["comment"] = comments[name]
    for lease in gov.leases:
        lt = lease.terms
        entry = {
            "tenant": lease.tenant,
            "start": lt.start,
            "duration_days": lt.duration_days,
        }
        if lease.pool is not None:
            entry["pool"] = lease.pool
        if lease.pool is None or sorted(lease.nodes) != sorted(pools.get(lease.pool, ())):
            # The pool changed since the lease took its nodes (`pool add/remove`): the lease
            # still holds what it took, so say which, or applying the export would change it.
            entry["nodes"] = list(lease.nodes)
        optional: dict[str, Any] = {
            "term_days": lt.term_days,
            "notice_days": lt.notice_days or None,
            "notice_months": lt.notice_months or None,
            "min_days": lt.min_days or None,
            "tz": None if lt.tz == "UTC" else lt.tz,
            "auto_renew": lt.auto_renew or None,
            "notice_given": lt.notice_given,
            "force_reason": lease.force_reason,
            "comment": lease.comment or None,
        }
        entry.update({k: v for k, v in optional.items() if v is not None})
        doc["leases"][lease.name] = entry
    return {k: v for k, v in doc.items() if v}
