"""Inventories, declared inventories and pools: the SQL of ``collector inventory`` and ``pool``.

Reads go through anything that :class:`~collector.store.statements.Reads` (a
:class:`StoreReader`, or the command's write transaction, so that ``pool apply`` decides and
writes on one snapshot). Writes are :class:`PoolWrites`, the domain methods of a
:class:`~collector.store.command.Command` (``tx.pools``), on tables the collector's writer never
touches (``pools``, ``pool_nodes``, ``pool_moves``, ``declared_inventories``), so they cannot
race it; two pool commands queue instead of interleaving.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

from collector.store.governance import move_lease_nodes
from collector.store.queries import latest_sample
from collector.store.statements import Reads, Statements
from shared.errors import ConfigError

__all__ = [
    "FREE",
    "HOLDS_FROM",
    "NodeRecord",
    "PoolWrites",
    "node_records",
    "pool_members",
    "pool_names",
    "pools",
    "pools_with_nodes",
    "unended_lease_nodes",
    "unknown_nodes",
]

FREE: Final = "free"
"""The implicit pool of every node in no pool."""

HOLDS_FROM: Final = "(l.end_at IS NULL OR (l.end_at > ? AND l.end_at > l.start_at))"
"""SQL: lease ``l`` holds its nodes at some time from ``?`` on: it has no end, or it ends
after then and after its own start. A lease cancelled before it began ends at its start and
holds nothing, ever: it kept its nodes from every pattern and from `inventory forget` until
that start (years, for one booked ahead)."""


class NodeRecord(NamedTuple):
    """One node as the inventory and pool commands see it."""

    node: str
    status: str | None
    status_ts: float | None
    inventory: bytes
    inventory_ts: float | None
    source: str
    """``agent`` (its own retained inventory) or ``declared`` (``inventory import``)."""
    last_received: float | None
    interval_s: float | None
    gpu_count: int | None
    """GPUs in the node's latest stored sample; ``None`` without one."""
    pool: str


def node_records(store: Reads) -> list[NodeRecord]:
    """Every node with an inventory (its agent's, else a declared one), its pool and latest
    sample's GPU count, by node name."""
    declared = store.has_table("declared_inventories")
    pooled = store.has_table("pool_nodes")
    pool_col = "coalesce(p.pool, 'free')" if pooled else "'free'"
    pool_join = "LEFT JOIN pool_nodes p ON p.node = n.node " if pooled else ""
    inv_col = "coalesce(n.inventory, d.inventory)" if declared else "n.inventory"
    decl_join = "LEFT JOIN declared_inventories d ON d.node = n.node " if declared else ""
    # The newest sample through the (node, ts_ms) index: one short descent per node.
    sql = (
        f"SELECT n.node, n.status, n.status_ts, {inv_col} AS inventory, n.inventory_ts, "
        "CASE WHEN n.inventory IS NOT NULL THEN 'agent' ELSE 'declared' END AS source, "
        "s.received_ms / 1000.0 AS last_received, s.interval_s, s.gpu_count, "
        f"{pool_col} AS pool FROM nodes n {decl_join}{pool_join}"
        f"{latest_sample(store.dialect)} "
        f"WHERE {inv_col} IS NOT NULL"
    )
    if declared:
        pool_join = "LEFT JOIN pool_nodes p ON p.node = d.node " if pooled else ""
        sql += (
            " UNION ALL SELECT d.node, NULL, NULL, d.inventory, NULL, 'declared', NULL, NULL, "
            f"NULL, "
            f"{pool_col} FROM declared_inventories d {pool_join}"
            "WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = d.node)"
        )
    rows = store.fetchall(sql + " ORDER BY 1")
    return [
        NodeRecord(
            r["node"],
            r["status"],
            r["status_ts"],
            bytes(r["inventory"]),
            r["inventory_ts"],
            r["source"],
            r["last_received"],
            r["interval_s"],
            r["gpu_count"],
            r["pool"],
        )
        for r in rows
    ]


def pools(store: Reads) -> list[dict[str, Any]]:
    """Every pool (``free`` not included) with its node count, by name."""
    if not store.has_table("pools"):
        return []
    rows = store.fetchall(
        "SELECT p.name, p.created, p.comment, count(n.node) AS nodes FROM pools p "
        "LEFT JOIN pool_nodes n ON n.pool = p.name GROUP BY p.name ORDER BY p.name"
    )
    return [dict(r) for r in rows]


def pool_names(store: Reads) -> set[str]:
    """Every pool the store knows now or knew: those that exist, those a recorded move
    named (a pool deleted since, whose hours the usage ledger still counts), and ``free``."""
    names = {FREE}
    if store.has_table("pools"):
        names.update(r["name"] for r in store.fetchall("SELECT name FROM pools"))
    if store.has_table("pool_moves"):
        names.update(
            r["name"]
            for r in store.fetchall(
                "SELECT from_pool AS name FROM pool_moves UNION SELECT to_pool FROM pool_moves"
            )
        )
    return names


def pool_members(store: Reads) -> dict[str, str]:
    """node -> pool, for every node in a pool."""
    if not store.has_table("pool_nodes"):
        return {}
    return {r["node"]: r["pool"] for r in store.fetchall("SELECT node, pool FROM pool_nodes")}


def unended_lease_nodes(store: Reads, now: float) -> set[str]:
    """Nodes named by a lease that holds them at some time from ``now`` on (:data:`HOLDS_FROM`;
    ``lease_nodes`` joined to ``leases``, the leases half's tables), or by
    any lease where ``leases`` has no ``end_at``; none before leases exist. The nodes a new
    pool or pattern must not take; the nodes a period's usage may charge to a lease are
    :func:`collector.governance.usage.nodes_leases_held`."""
    if not store.has_table("lease_nodes"):
        return set()
    columns = store.columns("leases")
    if {"id", "end_at"} <= columns:
        rows = store.fetchall(
            "SELECT DISTINCT ln.node FROM lease_nodes ln JOIN leases l ON l.id = ln.lease_id "
            f"WHERE {HOLDS_FROM}",
            (now,),
        )
    else:
        rows = store.fetchall("SELECT DISTINCT node FROM lease_nodes")
    return {r[0] for r in rows}


def unknown_nodes(store: Reads, nodes: Iterable[str]) -> list[str]:
    """Those of ``nodes`` with neither an agent's (``nodes``) nor a declared inventory."""
    wanted = list(dict.fromkeys(nodes))
    tables = ["nodes", "declared_inventories"]
    if not store.has_table("declared_inventories"):
        tables.pop()
    known: set[str] = set()
    for i in range(0, len(wanted), 500):  # far under SQLite's bound-variable limit
        chunk = wanted[i : i + 500]
        marks = ", ".join("?" * len(chunk))
        for table in tables:
            rows = store.fetchall(f"SELECT node FROM {table} WHERE node IN ({marks})", chunk)
            known.update(r[0] for r in rows)
    return [node for node in wanted if node not in known]


def pools_with_nodes(store: Reads) -> dict[str, list[str]]:
    """Pool -> its nodes (in stored order), every stored pool, an empty one too."""
    out: dict[str, list[str]] = {r[0]: [] for r in store.fetchall("SELECT name FROM pools")}
    for node, pool in store.fetchall("SELECT node, pool FROM pool_nodes"):
        out.setdefault(pool, []).append(node)
    return out


class PoolWrites:
    """The pool and inventory writes of one command transaction: ``tx.pools`` of a
    :class:`~collector.store.command.Command` (``with Command(path) as tx``); its reads see
    its own writes."""

    def __init__(self, tx: Statements) -> None:
        self._tx = tx

    def exists(self, name: str) -> bool:
        """Whether pool ``name`` exists (``free`` always does)."""
        return name == FREE or bool(
            self._tx.fetchall("SELECT 1 FROM pools WHERE name = ?", (name,))
        )

    def nodes(self, pool: str) -> list[str]:
        """The nodes of ``pool``, by name."""
        rows = self._tx.fetchall(
            "SELECT node FROM pool_nodes WHERE pool = ? ORDER BY node", (pool,)
        )
        return [r[0] for r in rows]

    def pools_of(self, nodes: Iterable[str]) -> dict[str, str]:
        """Node -> the pool it is in, for those of ``nodes`` in one."""
        members = pool_members(self._tx)
        return {node: members[node] for node in nodes if node in members}

    def comment(self, name: str) -> str:
        """The comment of pool ``name`` (``""``: none, or no such pool)."""
        rows = self._tx.fetchall("SELECT comment FROM pools WHERE name = ?", (name,))
        return str(rows[0][0] or "") if rows else ""

    def set_comment(self, name: str, comment: str) -> None:
        """Replace the comment of pool ``name``."""
        self._tx.execute("UPDATE pools SET comment = ? WHERE name = ?", (comment, name))

    def create(self, name: str, comment: str = "") -> None:
        """Create an empty pool."""
        self._tx.execute(
            "INSERT INTO pools (name, created, comment) VALUES (?, ?, ?)",
            (name, self._tx.now, comment),
        )

    def delete(self, name: str) -> list[str]:
        """Delete a pool; its nodes return to ``free``. Returns them."""
        nodes = self.nodes(name)
        self.move(nodes, FREE, f"delete {name}")
        self._tx.execute("DELETE FROM pools WHERE name = ?", (name,))
        return nodes

    def move(self, nodes: Iterable[str], to_pool: str, reason: str) -> dict[int, list[str]]:
        """Move ``nodes`` into ``to_pool`` (``free``: out of any pool), recording each move
        in ``pool_moves``; the leases of the pools involved follow (:meth:`_follow_leases`):
        lease id -> the nodes it gained, for the caller's quota admission
        (:func:`collector.governance.ops.judge_growth`)."""
        current = pool_members(self._tx)
        touched = {to_pool}
        for node in nodes:
            before = current.get(node, FREE)
            touched.add(before)
            if before == to_pool:
                continue
            if to_pool == FREE:
                self._tx.execute("DELETE FROM pool_nodes WHERE node = ?", (node,))
            else:
                self._tx.execute(
                    "INSERT INTO pool_nodes (node, pool) VALUES (?, ?) "
                    "ON CONFLICT (node) DO UPDATE SET pool = excluded.pool",
                    (node, to_pool),
                )
            self._tx.execute(
                "INSERT INTO pool_moves (ts, node, from_pool, to_pool, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (self._tx.now, node, before, to_pool, reason),
            )
            current[node] = to_pool
        return self._follow_leases(touched)

    def _follow_leases(self, pools: Iterable[str]) -> dict[int, list[str]]:
        """Make the leases of ``pools`` (those not ended at the command's time) hold the
        pools' nodes as they are now: a lease of a pool leases its members, so nodes added to
        the pool join the lease and nodes removed leave it. A node that another lease holds at
        an overlapping time cannot join: :class:`ConfigError` naming the node and both leases
        (the transaction then changes nothing). When a lease changed, the commit moves the
        governance generation. Returns lease id -> the nodes it gained."""
        tx = self._tx
        grown: dict[int, list[str]] = {}
        if not tx.has_table("leases") or not tx.has_table("lease_nodes"):
            return grown
        for pool in sorted(set(pools) - {FREE}):
            leases = tx.fetchall(
                "SELECT l.id, l.name, l.start_at, l.end_at FROM leases l "
                f"WHERE l.pool = ? AND {HOLDS_FROM} ORDER BY l.id",
                (pool, tx.now),
            )
            if not leases:
                continue
            members = {
                r[0] for r in tx.fetchall("SELECT node FROM pool_nodes WHERE pool = ?", (pool,))
            }
            for lease_id, name, start_at, end_at in leases:
                held = {
                    r[0]
                    for r in tx.fetchall(
                        "SELECT node FROM lease_nodes WHERE lease_id = ?", (lease_id,)
                    )
                }
                for node in sorted(members - held):
                    clash = tx.fetchall(
                        "SELECT l.name, l.tenant FROM lease_nodes ln JOIN leases l "
                        "ON l.id = ln.lease_id WHERE ln.node = ? AND l.id != ? "
                        f"AND {HOLDS_FROM} "
                        "AND (CAST(? AS DOUBLE PRECISION) IS NULL OR l.start_at < ?)",
                        (node, lease_id, start_at, end_at, end_at),
                    )
                    if clash:
                        other, tenant = clash[0][0], clash[0][1]
                        raise ConfigError(
                            f"node {node} is in lease {other!r} (tenant {tenant}) at the same time "
                            f"as pool {pool!r} is leased ({name!r}): it cannot join that pool",
                            field="nodes",
                        )
                    move_lease_nodes(tx, lease_id, [node], ())
                    grown.setdefault(int(lease_id), []).append(node)
                    tx.bump_generation()
                if held - members:
                    move_lease_nodes(tx, lease_id, (), sorted(held - members))
                    tx.bump_generation()
        return grown

    def declare_inventories(self, rows: Sequence[tuple[str, bytes]]) -> int:
        """Store declared inventories (node, validated JSON); return how many."""
        self._tx.executemany(
            "INSERT INTO declared_inventories (node, inventory, declared) VALUES (?, ?, ?) "
            "ON CONFLICT (node) DO UPDATE SET inventory = excluded.inventory, "
            "declared = excluded.declared",
            [(node, blob, self._tx.now) for node, blob in rows],
        )
        self._tx.bump_generation()  # a leased node's GPUs count from its declared inventory
        return len(rows)
