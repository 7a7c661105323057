"""Lease and quota changes with their checks: overlaps, quota admission, forced leases.

The checks are pure functions of a :class:`Governance` (:func:`overlapping`,
:func:`collector.governance.admit.admit`); :func:`add_lease` and friends run them on the state a
:class:`~collector.store.command.Command` transaction sees and write the result in that
same transaction, so two commands cannot both pass the check and both write.
Refusals are :class:`~shared.errors.ConfigError` with one line naming the node and lease or
the quota and the way out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from collector.governance.admit import Verdict, admit
from collector.governance.lease import (
    LeaseError,
    LeaseTerms,
    cancel,
    extend,
    overlaps,
    renew,
    today_in,
)
from collector.governance.pattern import POOL_NAME_RE, validate_pool_name
from collector.governance.quota import Admission
from collector.governance.state import Governance, Lease
from collector.store.pools import unknown_nodes
from shared.errors import ConfigError
from shared.text import UNSHOWN_RE
from shared.topics import NODE_ID_RE, NODE_ID_RULE

if TYPE_CHECKING:
    from collector.store.command import Command

__all__ = [
    "MAX_LEASE_NAME_LEN",
    "LeaseRequest",
    "add_lease",
    "admit_growth",
    "change_lease",
    "find_lease",
    "judge_growth",
    "overlapping",
    "validate_tenant_name",
]


MAX_LEASE_NAME_LEN: Final = 128
"""The longest lease name: room for the default, ``<tenant>-<start date>`` (a 63-character
tenant and 11 more). Unbounded, a 5,000-character name laid out every row of `lease list`
5,000 columns wide, and named the lease's Slurm reservation."""


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A lease to add: who, what (a pool or nodes), and its terms."""

    name: str
    tenant: str
    terms: LeaseTerms
    pool: str | None = None
    nodes: tuple[str, ...] = ()
    force_reason: str | None = None
    """Set: add it even beyond the tenant's quota, and record why."""
    comment: str = ""


def validate_tenant_name(name: str, *, what: str = "tenant", field: str = "--tenant") -> str:
    """``name`` if it can name a tenant (or cohort): the rule of pool names."""
    if not POOL_NAME_RE.match(name):
        raise ConfigError(
            f"{what} name {name!r} must be {NODE_ID_RULE}",
            field=field,
        )
    return name


def overlapping(
    gov: Governance, nodes: Sequence[str], terms: LeaseTerms, *, skip: int | None = None
) -> list[tuple[str, Lease]]:
    """(node, lease) for every stored lease holding one of ``nodes`` during ``terms``."""
    out: list[tuple[str, Lease]] = []
    for node, leases in sorted(gov.node_leases(nodes).items()):
        out.extend(
            (node, lease) for lease in leases if lease.id != skip and overlaps(lease.terms, terms)
        )
    return out


def add_lease(
    tx: Command,
    req: LeaseRequest,
    hardware: Mapping[str, tuple[int, float]],
    gov: Governance | None = None,
) -> tuple[int, Admission | None]:
    """Check and store ``req``; its id and the quota answer it was admitted with.

    ``gov``: the transaction's state when the caller keeps it across many adds (``collector
    apply``: reloading it per lease made a 2,000-lease file quadratic); the new lease is
    appended to it.
    """
    for node in req.nodes:
        if not NODE_ID_RE.match(node):
            raise ConfigError(
                f"node name {node!r} is not a node id ({NODE_ID_RULE})",
                field="--nodes",
            )
    validate_tenant_name(req.tenant)
    if len(req.name) > MAX_LEASE_NAME_LEN:
        raise ConfigError(
            f"lease name {req.name[:20]!r}... is {len(req.name):,} characters: give at most "
            f"{MAX_LEASE_NAME_LEN}",
            field="--name",
        )
    if (
        req.name.isdigit()
        or not req.name.strip()
        or not req.name.isprintable()
        or UNSHOWN_RE.search(req.name)
    ):
        raise ConfigError(
            f"lease name {req.name!r} must be printable text, no character that prints as "
            "nothing (two names would look alike), and not a number (a number reads as a "
            "lease id in `lease show|cancel|extend|renew`)",
            field="--name",
        )
    if req.name.startswith("-"):
        raise ConfigError(
            f"lease name {req.name!r} must not begin with '-': it reads as an option in "
            "`lease show|cancel|extend|renew NAME` and in the hints that name it: give another "
            "--name",
            field="--name",
        )
    _check_known(tx, req.nodes)
    gov = tx.governance.state() if gov is None else gov
    if any(lease.name == req.name for lease in gov.leases):
        raise ConfigError(f"a lease named {req.name!r} exists: pick another --name", field="--name")
    nodes = list(req.nodes)
    if req.pool is not None:
        if req.pool == "free":
            raise ConfigError(
                "`free` is every node in no pool: lease named nodes (--nodes) or a pool",
                field="--pool",
            )
        validate_pool_name(req.pool, field="--pool")
        if nodes:
            elsewhere = tx.pools.pools_of(nodes)
            moved = sorted((n, p) for n, p in elsewhere.items() if p != req.pool)
            if moved:
                node, pool = moved[0]
                raise ConfigError(
                    f"node {node} is in pool {pool!r}: lease that pool, or move the node out "
                    f"of it first (`collector pool remove`)",
                    field="--nodes",
                )
            if not tx.pools.exists(req.pool):
                tx.pools.create(req.pool)
            _grow(tx, gov, tx.pools.move(nodes, req.pool, f"lease {req.name}"), req.force_reason)
        elif not tx.pools.exists(req.pool):
            raise ConfigError(
                f"no pool named {req.pool!r}: create it with --nodes (or `collector pool "
                "create`) first",
                field="--pool",
            )
        nodes = tx.pools.nodes(req.pool)
    if not nodes:
        raise ConfigError(
            "a lease needs nodes: --nodes a,b or --pool NAME with nodes in it", field="--nodes"
        )
    clash = overlapping(gov, nodes, req.terms)
    if clash:
        node, other = clash[0]
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        raise ConfigError(
            f"node {node} is already in lease {other.name!r} (id {other.id}, tenant "
            f"{other.tenant}, {other.terms.start.isoformat()} to {_end_text(other)}){more}: "
            "pick other nodes or dates, or cancel that lease",
            field="--nodes",
        )
    verdict = admit(gov, hardware, req.tenant, nodes, req.terms, now=tx.now)
    admission = verdict.first
    forced = _refused(verdict, req.force_reason, f"lease {req.name!r}")
    lease_id = tx.governance.add_lease(
        name=req.name,
        tenant=req.tenant,
        pool=req.pool,
        nodes=nodes,
        terms=req.terms,
        forced=forced,
        force_reason=req.force_reason if forced else None,
        comment=req.comment,
    )
    gov.tenants.setdefault(req.tenant, None)
    gov.priorities.setdefault(req.tenant, 0)
    gov.leases.append(
        Lease(
            id=lease_id,
            name=req.name,
            tenant=req.tenant,
            pool=req.pool,
            nodes=tuple(dict.fromkeys(nodes)),
            terms=req.terms,
            forced=forced,
            force_reason=req.force_reason if forced else None,
            comment=req.comment,
            created=tx.now,
        )
    )
    return lease_id, admission


def _grow(
    tx: Command, gov: Governance, grown: Mapping[int, list[str]], force_reason: str | None
) -> None:
    """The pool's other leases took the nodes that joined it (as ``collector pool add``
    makes them): admitted as that pool's growth, or forced with ``force_reason``; ``gov``
    then holds them too, for the checks of the lease being added."""
    if not grown:
        return
    judge_growth(tx, grown, force_reason=force_reason)
    gov.leases = [
        replace(x, nodes=(*x.nodes, *grown[x.id])) if x.id in grown else x for x in gov.leases
    ]


def _check_known(tx: Command, nodes: Sequence[str]) -> None:
    """Named nodes must be known (an agent's or a declared inventory), as `pool create`
    requires: a typo leased a node that does not exist, with 0 GPUs against the quota."""
    unknown = unknown_nodes(tx, nodes)
    if unknown:
        raise ConfigError(
            f"unknown node {unknown[0]!r}: no agent or declared inventory (see `collector "
            "inventory`; `collector inventory import` declares nodes not booted yet)",
            field="--nodes",
        )


def change_lease(
    tx: Command,
    ref: str,
    action: str,
    *,
    on: dt.date | None = None,
    days: int | None = None,
    hardware: Mapping[str, tuple[int, float]] | None = None,
    force_reason: str | None = None,
) -> tuple[Lease, LeaseTerms]:
    """Cancel (notice ``on``, default today), extend by ``days`` or renew lease ``ref``
    (name or id); the lease as it was and its new terms.

    Extending or renewing is admitted over the days it adds (:func:`~collector.governance.
    admit.admit`, with ``hardware``: node -> (GPUs, GPU power limits in W)); beyond quota
    only with ``force_reason``, recorded on the lease.
    """
    gov = tx.governance.state()
    lease = find_lease(gov, ref)
    today = today_in(lease.terms.tz, tx.now)
    try:
        if action == "cancel":
            _refuse_notice_before_lease(lease, on)
            terms = cancel(lease.terms, on or today)
        elif action == "extend":
            if days is None:
                raise ConfigError("extend needs --days N (or --by 6m)", field="--days")
            terms = extend(lease.terms, days, today)
        elif action == "renew":
            terms = renew(lease.terms, today)
        else:
            raise ConfigError(f"unknown lease action {action!r}", field="action")
    except LeaseError as exc:
        raise ConfigError(f"lease {lease.name!r}: {exc}", field=action) from None
    if action != "cancel":
        clash = overlapping(gov, lease.nodes, terms, skip=lease.id)
        if clash:
            node, other = clash[0]
            raise ConfigError(
                f"cannot {action} lease {lease.name!r}: node {node} is leased from "
                f"{other.terms.start.isoformat()} by lease {other.name!r} (id {other.id})",
                field=action,
            )
        verdict = admit(
            gov, hardware or {}, lease.tenant, lease.nodes, terms, now=tx.now, old=lease
        )
        if _refused(verdict, force_reason, f"cannot {action} lease {lease.name!r}"):
            tx.governance.mark_forced(lease.id, force_reason or "forced without a reason")
    tx.governance.update_lease(lease, terms)
    return lease, terms


def admit_growth(
    gov: Governance,
    hardware: Mapping[str, tuple[int, float]],
    grown: Mapping[int, Collection[str]],
    *,
    now: float,
    force_reason: str | None = None,
) -> list[int]:
    """Judge leases that gained nodes because their pool grew (``grown``: lease id -> the
    nodes it gained; ``gov``: the state with the nodes already added). The ids of the
    leases admitted only by ``force_reason``; :class:`ConfigError` for the first refused.
    """
    forced: list[int] = []
    by_id = {lease.id: lease for lease in gov.leases}
    for lease_id, added in sorted(grown.items()):
        lease = by_id.get(lease_id)
        if lease is None:
            continue
        before = replace(lease, nodes=tuple(n for n in lease.nodes if n not in set(added)))
        verdict = admit(gov, hardware, lease.tenant, lease.nodes, lease.terms, now=now, old=before)
        what = f"pool {lease.pool!r} cannot grow while leased ({lease.name!r})"
        if _refused(verdict, force_reason, what):
            forced.append(lease_id)
    return forced


def judge_growth(
    tx: Command, grown: Mapping[int, Collection[str]], *, force_reason: str | None = None
) -> list[int]:
    """:func:`admit_growth` inside the transaction ``tx`` that grew the pools (its state and
    the nodes' hardware as it sees them); records ``force_reason`` on the leases it let
    past their quota and returns their ids."""
    if not grown:
        return []
    from collector.store.usage import node_hardware  # noqa: PLC0415

    gov = tx.governance.state()
    forced = admit_growth(
        gov, tx.run(node_hardware(tx.dialect)), grown, now=tx.now, force_reason=force_reason
    )
    for lease_id in forced:
        tx.governance.mark_forced(lease_id, force_reason or "forced without a reason")
    return forced


def _refused(verdict: Verdict, force_reason: str | None, what: str) -> bool:
    """Whether the change goes in only because it is forced; :class:`ConfigError` naming
    the first failing day when it is refused and not forced."""
    if verdict.refusal is None:
        return False
    if force_reason is None:
        raise ConfigError(
            f"{what}: {verdict.refusal.text()}; raise its quota (`collector quota set`), "
            'pick other dates or nodes, or add --force --reason "why"',
            field="--force",
        )
    return True


def find_lease(gov: Governance, ref: str) -> Lease:
    """The lease named ``ref`` (or with id ``ref``); :class:`ConfigError` when none is."""
    for lease in gov.leases:
        if lease.name == ref or (ref.isdigit() and lease.id == int(ref)):
            return lease
    raise ConfigError(f"no lease {ref!r}: see `collector lease list`", field="lease")


def _refuse_notice_before_lease(lease: Lease, on: dt.date | None) -> None:
    """Notice dated before the lease both started and was booked is a wrong date (a year
    typed wrong), not a notice: taken, it would end the lease at its start, freeing its nodes
    and erasing the GPU-hours it held. Notice before the start alone is a lease cancelled
    before it begins; after the start alone, an older lease booked late (its notice
    recorded as given)."""
    if on is None or on >= lease.terms.start or lease.created is None:
        return
    booked = today_in(lease.terms.tz, lease.created)
    if on < booked:
        raise ConfigError(
            f"lease {lease.name!r}: notice on {on.isoformat()} is before the lease starts "
            f"({lease.terms.start.isoformat()}) and before it was booked ({booked.isoformat()}): "
            "check the date given to --on",
            field="--on",
        )


def _end_text(lease: Lease) -> str:
    end = lease.end()
    return "open-ended" if end is None else (end - dt.timedelta(days=1)).isoformat()
