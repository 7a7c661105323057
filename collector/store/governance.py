"""Tenants, cohorts, quotas and leases in the store: the SQL, and only here.

Reads are :class:`~collector.store.query.Query` objects, written once: ``reader.run(
governance())`` on a command's snapshot, ``await store.run(governance())`` on the
collector's connection, ``tx.governance.state()`` inside a write.

Writes come from the commands (``collector lease|quota|apply``), never from the collector:
:class:`GovernanceWrites`, the domain methods of a :class:`~collector.store.command.Command`
(``tx.governance``), so an overlap check and the insert it allows cannot be split by another
command's write, and a file applied by ``collector apply`` goes in whole or not at all. A
commit that wrote moves the governance generation (:data:`GENERATION_KEY`); the collector
compares it at each evaluation (one primary-key read) and reloads the state only when it
moved.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Final

from collector.governance.lease import LeaseTerms, instants
from collector.governance.periods import Period
from collector.governance.quota import Quota
from collector.governance.state import Governance, Lease, TenantQuota
from collector.store.connect import SyncCursor
from collector.store.query import Query, first_value, single
from collector.store.statements import Statements
from shared.errors import StoreError

__all__ = [
    "GENERATION_KEY",
    "USAGE_KEY",
    "GovernanceWrites",
    "generation",
    "governance",
    "move_lease_nodes",
    "usage_snapshot",
]

GENERATION_KEY: Final = "governance_generation"
"""Meta row that moves with every commit that changed the governance (leases, quotas, tenants,
declared inventories): the collector compares it at each evaluation (one primary-key read)
and reloads its state only when it moved."""
USAGE_KEY: Final = "governance_usage"
"""Meta row where the collector leaves the usage it computed at its last evaluation (JSON:
``at``, ``generation``, ``busy_util_pct``, ``usage`` per basis, resource and tenant)."""
_QUERIES: Final = {
    "generation": ("SELECT value FROM meta WHERE key = ?", (GENERATION_KEY,)),
    "cohorts": ("SELECT name, parent FROM cohorts ORDER BY name", ()),
    "cohort_quotas": (
        "SELECT cohort, resource, nominal, borrowing_limit, lending_limit FROM cohort_quotas",
        (),
    ),
    "tenants": ("SELECT name, cohort, priority FROM tenants ORDER BY name", ()),
    "quotas": (
        "SELECT tenant, resource, nominal, borrowing_limit, lending_limit, period FROM quotas",
        (),
    ),
    "leases": (
        "SELECT id, name, tenant, pool, start, duration_days, term_days, notice_days, "
        "min_days, tz, auto_renew, notice_given_at, forced, force_reason, comment, "
        "notice_months, created FROM leases ORDER BY id",
        (),
    ),
    "lease_nodes": ("SELECT lease_id, node FROM lease_nodes ORDER BY lease_id, node", ()),
}


def _governance(rows: dict[str, list[Any]]) -> Governance:
    """The state from the rows; a row no command could have written (edited by hand) is a
    non-fatal :class:`StoreError` naming it: the collector keeps its last good state."""
    try:
        return _parse(rows)
    except (ValueError, TypeError, IndexError) as exc:
        raise StoreError(
            f"unreadable governance row, {exc}: no command reads the governance state while "
            "it is there; correct or delete that row with sqlite3 (the collector keeps its "
            "last good state meanwhile)",
            fatal=False,
        ) from None


def _parse(rows: dict[str, list[Any]]) -> Governance:
    g = Governance()
    gen = rows["generation"]
    g.generation = str(gen[0][0]) if gen else ""
    g.cohorts = {r[0] for r in rows["cohorts"]}
    g.cohort_parents = {r[0]: r[1] for r in rows["cohorts"] if r[1] is not None}
    r: Any = None
    try:
        for r in rows["cohort_quotas"]:
            g.cohort_quotas[(r[0], r[1])] = Quota(float(r[2]), r[3], r[4])
    except (ValueError, TypeError, IndexError) as exc:
        raise _bad("cohort_quotas", f"cohort = {r[0]!r} AND resource = {r[1]!r}", exc) from None
    try:
        for r in rows["tenants"]:
            g.tenants[r[0]] = r[1]
            g.priorities[r[0]] = int(r[2])
    except (ValueError, TypeError, IndexError) as exc:
        raise _bad("tenants", f"name = {r[0]!r}", exc) from None
    try:
        for r in rows["quotas"]:
            g.quotas[(r[0], r[1])] = TenantQuota(Quota(r[2], r[3], r[4]), r[5])
    except (ValueError, TypeError, IndexError) as exc:
        raise _bad("quotas", f"tenant = {r[0]!r} AND resource = {r[1]!r}", exc) from None
    nodes: dict[int, list[str]] = {}
    for r in rows["lease_nodes"]:
        nodes.setdefault(int(r[0]), []).append(r[1])
    for r in rows["leases"]:
        try:
            terms = _terms(r)
        except (ValueError, TypeError) as exc:
            raise _bad("leases", f"id = {r[0]!r} (lease {r[1]!r})", exc) from None
        g.leases.append(
            Lease(
                id=int(r[0]),
                name=r[1],
                tenant=r[2],
                pool=r[3],
                nodes=tuple(nodes.get(int(r[0]), ())),
                terms=terms,
                forced=bool(r[12]),
                force_reason=r[13],
                comment=r[14],
                created=float(r[16]),
            )
        )
    return g


def _bad(table: str, where: str, exc: Exception) -> ValueError:
    """Name the row (table and key) a bad value came from, so it can be found and fixed."""
    return ValueError(f"{table} row WHERE {where}: {exc}")


def _terms(r: Any) -> LeaseTerms:
    return LeaseTerms(
        start=dt.date.fromisoformat(r[4]),
        duration_days=int(r[5]),
        term_days=r[6],
        notice_days=int(r[7]),
        min_days=int(r[8]),
        tz=r[9],
        auto_renew=bool(r[10]),
        notice_given=None if r[11] is None else dt.date.fromisoformat(r[11]),
        notice_months=int(r[15]),
    )


def governance() -> Query[Governance]:
    """The whole governance state (:func:`_governance` on the rows of :data:`_QUERIES`)."""
    names = list(_QUERIES)
    return Query(
        tuple(_QUERIES.values()),
        lambda results: _governance(dict(zip(names, results, strict=True))),
    )


def generation() -> Query[str]:
    """The store's governance generation ("" before the first governance write)."""
    sql, params = _QUERIES["generation"]
    return single(sql, params, lambda rows: first_value(rows) or "")


def usage_snapshot() -> Query[str | None]:
    """The collector's last usage snapshot (JSON text), or ``None``."""
    return single("SELECT value FROM meta WHERE key = ?", (USAGE_KEY,), first_value)


class GovernanceWrites:
    """The governance tables' writes in one command transaction: ``tx.governance`` of a
    :class:`~collector.store.command.Command` (``with Command(path) as tx``).

    Every write moves the governance generation with the commit
    (:meth:`~collector.store.command.Command.bump_generation`); a transaction that only
    reads (:meth:`state`) or is discarded leaves it where it was.
    """

    def __init__(self, tx: Statements) -> None:
        self._tx = tx

    def state(self) -> Governance:
        """The governance state as this transaction sees it."""
        return self._tx.run(governance())

    def _write(self, sql: str, params: Sequence[Any]) -> SyncCursor:
        self._tx.bump_generation()
        return self._tx.execute(sql, params)

    # -- cohorts, tenants, quotas

    def put_cohort(self, name: str) -> None:
        """Create cohort ``name`` unless it exists."""
        self._write(
            "INSERT INTO cohorts (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, self._tx.now),
        )

    def put_cohort_quota(self, cohort: str, resource: str, quota: Quota | None) -> None:
        """Set (``None``: remove) the cohort's own quota on ``resource``: its nominal and,
        towards its parent, its borrowing and lending limits."""
        if quota is None:
            self._write(
                "DELETE FROM cohort_quotas WHERE cohort = ? AND resource = ?", (cohort, resource)
            )
            return
        self._write(
            "INSERT INTO cohort_quotas (cohort, resource, nominal, borrowing_limit, "
            "lending_limit) VALUES (?, ?, ?, ?, ?) ON CONFLICT (cohort, resource) DO UPDATE "
            "SET nominal = excluded.nominal, borrowing_limit = excluded.borrowing_limit, "
            "lending_limit = excluded.lending_limit",
            (cohort, resource, quota.nominal, quota.borrowing_limit, quota.lending_limit),
        )

    def set_cohort_parent(self, cohort: str, parent: str | None) -> None:
        """Make ``parent`` (created if new; ``None``: none) the parent of ``cohort`` (the
        caller checked that no cycle results: :func:`collector.governance.quota.find_cycle`)."""
        self.put_cohort(cohort)
        if parent is not None:
            self.put_cohort(parent)
        self._write("UPDATE cohorts SET parent = ? WHERE name = ?", (parent, cohort))

    def put_tenant(
        self, name: str, cohort: str | None, priority: int, comment: str | None = None
    ) -> None:
        """Create tenant ``name`` or update its cohort, priority and comment (``None``: a new
        tenant's is "", an existing one's is kept)."""
        if cohort is not None:
            self.put_cohort(cohort)
        self._write(
            "INSERT INTO tenants (name, cohort, priority, comment, created) "
            "VALUES (?, ?, ?, coalesce(?, ''), ?) ON CONFLICT (name) DO UPDATE SET "
            "cohort = excluded.cohort, priority = excluded.priority, "
            "comment = coalesce(?, tenants.comment)",
            (name, cohort, priority, comment, self._tx.now, comment),
        )

    def ensure_tenant(self, name: str) -> None:
        """Create tenant ``name`` (no cohort, priority 0) unless it exists."""
        self._write(
            "INSERT INTO tenants (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, self._tx.now),
        )

    def put_quota(
        self, tenant: str, resource: str, quota: Quota | None, period: Period | None = None
    ) -> None:
        """Set (``None``: remove) ``tenant``'s quota on ``resource``."""
        if quota is None:
            self._write("DELETE FROM quotas WHERE tenant = ? AND resource = ?", (tenant, resource))
            return
        self.ensure_tenant(tenant)
        self._write(
            "INSERT INTO quotas (tenant, resource, nominal, borrowing_limit, lending_limit, "
            "period) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, resource) DO UPDATE SET "
            "nominal = excluded.nominal, borrowing_limit = excluded.borrowing_limit, "
            "lending_limit = excluded.lending_limit, period = excluded.period",
            (
                tenant,
                resource,
                quota.nominal,
                quota.borrowing_limit,
                quota.lending_limit,
                period,
            ),
        )

    # -- leases

    def add_lease(
        self,
        *,
        name: str,
        tenant: str,
        pool: str | None,
        nodes: Sequence[str],
        terms: LeaseTerms,
        forced: bool = False,
        force_reason: str | None = None,
        comment: str = "",
    ) -> int:
        """Store a new lease (overlaps already checked by the caller); return its id."""
        self.ensure_tenant(tenant)
        start_at, end_at = instants(terms)
        cur = self._write(
            "INSERT INTO leases (name, tenant, pool, start, duration_days, term_days, "
            "notice_days, min_days, tz, auto_renew, notice_given_at, forced, force_reason, "
            "start_at, end_at, comment, created, updated, notice_months) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                name,
                tenant,
                pool,
                terms.start.isoformat(),
                terms.duration_days,
                terms.term_days,
                terms.notice_days,
                terms.min_days,
                terms.tz,
                int(terms.auto_renew),
                None if terms.notice_given is None else terms.notice_given.isoformat(),
                int(forced),
                force_reason,
                start_at,
                end_at,
                comment,
                self._tx.now,
                self._tx.now,
                terms.notice_months,
            ),
        )
        lease_id = int(cur.fetchall()[0][0])
        for node in dict.fromkeys(nodes):
            self._write("INSERT INTO lease_nodes (lease_id, node) VALUES (?, ?)", (lease_id, node))
        return lease_id

    def update_lease(self, lease: Lease, terms: LeaseTerms, *, comment: str | None = None) -> None:
        """Replace ``lease``'s dates (cancel, extend, renew, apply)."""
        start_at, end_at = instants(terms)
        notice = None if terms.notice_given is None else terms.notice_given.isoformat()
        self._write(
            "UPDATE leases SET start = ?, duration_days = ?, term_days = ?, notice_days = ?, "
            "min_days = ?, tz = ?, auto_renew = ?, notice_given_at = ?, "
            "notice_recorded = CASE WHEN CAST(? AS TEXT) IS NULL THEN NULL "
            "ELSE coalesce(notice_recorded, ?) END, start_at = ?, end_at = ?, "
            "comment = coalesce(?, comment), updated = ?, notice_months = ? WHERE id = ?",
            (
                terms.start.isoformat(),
                terms.duration_days,
                terms.term_days,
                terms.notice_days,
                terms.min_days,
                terms.tz,
                int(terms.auto_renew),
                notice,
                notice,
                self._tx.now,
                start_at,
                end_at,
                comment,
                self._tx.now,
                terms.notice_months,
                lease.id,
            ),
        )

    def mark_forced(self, lease_id: int, reason: str) -> None:
        """Record on lease ``lease_id`` that a change let it past its tenant's quota
        (``--force``) and why; a later forced change's reason replaces the earlier one."""
        self._write(
            "UPDATE leases SET forced = 1, force_reason = ?, updated = ? WHERE id = ?",
            (reason, self._tx.now, lease_id),
        )

    def set_lease_nodes(self, lease: Lease, nodes: Sequence[str]) -> None:
        """Replace the nodes ``lease`` holds, each one that joins or leaves recorded
        (:func:`move_lease_nodes`)."""
        held = {
            r[0]
            for r in self._tx.fetchall(
                "SELECT node FROM lease_nodes WHERE lease_id = ?", (lease.id,)
            )
        }
        wanted = dict.fromkeys(nodes)
        self._tx.bump_generation()
        move_lease_nodes(
            self._tx, lease.id, [n for n in wanted if n not in held], sorted(held - wanted.keys())
        )


def move_lease_nodes(
    tx: Statements, lease_id: int, joined: Iterable[str], left: Iterable[str]
) -> None:
    """``joined`` nodes join lease ``lease_id``, ``left`` ones leave it, each change
    recorded in ``lease_moves`` at the command's time, in its transaction: what the usage
    ledger and ``collector usage`` read to attribute an instant to the lease that held the
    node then (:class:`collector.store.ledger.LeaseHistory`). The nodes a lease is created
    with are not moves: they hold from its start."""
    for node in joined:
        tx.execute("INSERT INTO lease_nodes (lease_id, node) VALUES (?, ?)", (lease_id, node))
        tx.execute(_MOVE_SQL, (tx.now, lease_id, node, 1))
    for node in left:
        tx.execute("DELETE FROM lease_nodes WHERE lease_id = ? AND node = ?", (lease_id, node))
        tx.execute(_MOVE_SQL, (tx.now, lease_id, node, 0))


_MOVE_SQL: Final = "INSERT INTO lease_moves (ts, lease_id, node, joined) VALUES (?, ?, ?, ?)"
