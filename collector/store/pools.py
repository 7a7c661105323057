"""Inventories, declared inventories and pools: the SQL of ``collector inventory`` and ``pool``.

Reads go through anything with ``fetchall``/``has_table`` (a :class:`StoreReader`, or the
write transaction of :func:`pool_transaction`, so that ``pool apply`` decides and writes on one
snapshot). Writes are short stdlib ``sqlite3`` transactions on tables the collector's writer
never touches (``pools``, ``pool_nodes``, ``pool_moves``, ``declared_inventories``), so they
cannot race it; ``BEGIN IMMEDIATE`` makes two pool commands queue instead of interleaving.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

from collector.store.connect import open_sync
from shared.errors import ConfigError, StoreError

__all__ = [
    "FREE",
    "NodeRecord",
    "PoolTransaction",
    "Rows",
    "declare_inventories",
    "follow_leases",
    "leased_nodes",
    "node_records",
    "pool_members",
    "pool_transaction",
    "pools",
]

FREE: Final = "free"
"""The implicit pool of every node in no pool."""

_NOT_MIGRATED: Final = (
    "has no pool tables yet: start `collector run` once with this version to migrate it"
)


class Rows(Protocol):
    """What the read functions need: a read-only store or a pool transaction."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

    def has_table(self, name: str) -> bool: ...


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


def node_records(store: Rows) -> list[NodeRecord]:
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
        "LEFT JOIN samples s ON s.rowid = "
        "(SELECT rowid FROM samples WHERE node = n.node ORDER BY ts_ms DESC LIMIT 1) "
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


def pools(store: Rows) -> list[dict[str, Any]]:
    """Every pool (``free`` not included) with its node count, by name."""
    if not store.has_table("pools"):
        return []
    rows = store.fetchall(
        "SELECT p.name, p.created, p.comment, count(n.node) AS nodes FROM pools p "
        "LEFT JOIN pool_nodes n ON n.pool = p.name GROUP BY p.name ORDER BY p.name"
    )
    return [dict(r) for r in rows]


def pool_members(store: Rows) -> dict[str, str]:
    """node -> pool, for every node in a pool."""
    if not store.has_table("pool_nodes"):
        return {}
    return {r["node"]: r["pool"] for r in store.fetchall("SELECT node, pool FROM pool_nodes")}


def leased_nodes(store: Rows, now: float) -> set[str]:
    """Nodes named by a lease that has not ended at ``now`` (``lease_nodes`` joined to
    ``leases.end_at``, the leases half's tables; a lease without an end is in force), or by
    any lease where ``leases`` has no ``end_at``; none before leases exist."""
    if not store.has_table("lease_nodes"):
        return set()
    columns = (
        {r[1] for r in store.fetchall("PRAGMA table_info(leases)")}
        if store.has_table("leases")
        else set()
    )
    if {"id", "end_at"} <= columns:
        rows = store.fetchall(
            "SELECT DISTINCT ln.node FROM lease_nodes ln JOIN leases l ON l.id = ln.lease_id "
            "WHERE l.end_at IS NULL OR l.end_at > ?",
            (now,),
        )
    else:
        rows = store.fetchall("SELECT DISTINCT node FROM lease_nodes")
    return {r[0] for r in rows}


def follow_leases(
    fetchall: Callable[[str, Sequence[Any]], list[Any]],
    execute: Callable[[str, Sequence[Any]], Any],
    pools: Iterable[str],
    now: float,
) -> bool:
    """Make the leases of ``pools`` (those not ended at ``now``) hold the pools' nodes as they
    are now: a lease of a pool leases its members, so nodes added to the pool join the lease
    and nodes removed leave it. A node that another lease holds at an overlapping time cannot
    join: :class:`ConfigError` naming the node and both leases (the caller's transaction then
    changes nothing). Returns whether a lease changed (the collector's generation must move).
    """
    if not _has_table(fetchall, "leases") or not _has_table(fetchall, "lease_nodes"):
        return False
    changed = False
    for pool in sorted(set(pools) - {FREE}):
        leases = fetchall(
            "SELECT id, name, start_at, end_at FROM leases "
            "WHERE pool = ? AND (end_at IS NULL OR end_at > ?) ORDER BY id",
            (pool, now),
        )
        if not leases:
            continue
        members = {r[0] for r in fetchall("SELECT node FROM pool_nodes WHERE pool = ?", (pool,))}
        for lease_id, name, start_at, end_at in leases:
            held = {
                r[0]
                for r in fetchall("SELECT node FROM lease_nodes WHERE lease_id = ?", (lease_id,))
            }
            for node in sorted(members - held):
                clash = fetchall(
                    "SELECT l.name, l.tenant FROM lease_nodes ln JOIN leases l "
                    "ON l.id = ln.lease_id WHERE ln.node = ? AND l.id != ? "
                    "AND (l.end_at IS NULL OR l.end_at > ?) AND (? IS NULL OR l.start_at < ?)",
                    (node, lease_id, start_at, end_at, end_at),
                )
                if clash:
                    other, tenant = clash[0][0], clash[0][1]
                    raise ConfigError(
                        f"node {node} is in lease {other!r} (tenant {tenant}) at the same time "
                        f"as pool {pool!r} is leased ({name!r}): it cannot join that pool",
                        field="nodes",
                    )
                execute("INSERT INTO lease_nodes (lease_id, node) VALUES (?, ?)", (lease_id, node))
                changed = True
            for node in sorted(held - members):
                execute("DELETE FROM lease_nodes WHERE lease_id = ? AND node = ?", (lease_id, node))
                changed = True
    return changed


def _has_table(fetchall: Callable[[str, Sequence[Any]], list[Any]], name: str) -> bool:
    return bool(fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))


class PoolTransaction:
    """One write transaction on the pool tables; reads see its own writes."""

    def __init__(self, conn: sqlite3.Connection, path: Path, now: float) -> None:
        self._conn = conn
        self._path = path
        self.now = now

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a query inside the transaction."""
        return self._conn.execute(sql, params).fetchall()

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name``."""
        return bool(
            self.fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        )

    def exists(self, name: str) -> bool:
        """Whether pool ``name`` exists (``free`` always does)."""
        return name == FREE or bool(self.fetchall("SELECT 1 FROM pools WHERE name = ?", (name,)))

    def create(self, name: str, comment: str = "") -> None:
        """Create an empty pool."""
        self._conn.execute(
            "INSERT INTO pools (name, created, comment) VALUES (?, ?, ?)", (name, self.now, comment)
        )

    def delete(self, name: str) -> list[str]:
        """Delete a pool; its nodes return to ``free``. Returns them."""
        nodes = [r[0] for r in self.fetchall("SELECT node FROM pool_nodes WHERE pool = ?", (name,))]
        self.move(nodes, FREE, f"delete {name}")
        self._conn.execute("DELETE FROM pools WHERE name = ?", (name,))
        return nodes

    def move(self, nodes: Iterable[str], to_pool: str, reason: str) -> None:
        """Move ``nodes`` into ``to_pool`` (``free``: out of any pool), recording each move;
        the leases of the pools involved follow (:func:`follow_leases`)."""
        current = pool_members(self)
        touched = {to_pool}
        for node in nodes:
            before = current.get(node, FREE)
            touched.add(before)
            if before == to_pool:
                continue
            if to_pool == FREE:
                self._conn.execute("DELETE FROM pool_nodes WHERE node = ?", (node,))
            else:
                self._conn.execute(
                    "INSERT INTO pool_nodes (node, pool) VALUES (?, ?) "
                    "ON CONFLICT (node) DO UPDATE SET pool = excluded.pool",
                    (node, to_pool),
                )
            self._conn.execute(
                "INSERT INTO pool_moves (ts, node, from_pool, to_pool, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.now, node, before, to_pool, reason),
            )
        if follow_leases(self.fetchall, self._conn.execute, touched, self.now):
            # The running collector reloads its governance state when this moves.
            self._conn.execute(
                "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, updated = excluded.updated",
                ("governance_generation", uuid.uuid4().hex, self.now),
            )


@contextmanager
def pool_transaction(path: Path, now: float) -> Iterator[PoolTransaction]:
    """A write transaction on the store at ``path``: committed when the block ends, rolled
    back (nothing changed) when it raises."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        tx = PoolTransaction(conn, path, now)
        if not tx.has_table("pool_moves"):
            raise StoreError(f"{str(path)!r} {_NOT_MIGRATED}")
        yield tx
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.rollback()
        raise StoreError(f"cannot update pools in {str(path)!r}: {exc}") from exc
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def declare_inventories(path: Path, rows: Sequence[tuple[str, bytes]], now: float) -> int:
    """Store declared inventories (node, validated JSON) in one transaction; return how many."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'declared_inventories'"
        ).fetchall():
            raise StoreError(f"{str(path)!r} {_NOT_MIGRATED}")
        conn.executemany(
            "INSERT INTO declared_inventories (node, inventory, declared) VALUES (?, ?, ?) "
            "ON CONFLICT (node) DO UPDATE SET inventory = excluded.inventory, "
            "declared = excluded.declared",
            [(node, blob, now) for node, blob in rows],
        )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.rollback()
        raise StoreError(f"cannot store declared inventories in {str(path)!r}: {exc}") from exc
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    return len(rows)


def _connect(path: Path) -> sqlite3.Connection:
    return open_sync(path, write=True)
