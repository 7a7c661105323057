"""Forgetting nodes: the SQL of ``collector inventory forget``, and what a running collector
reads of it.

A node is current through its node-level rows: ``nodes`` (its status and inventory, where
every fleet read and a restarted collector's live view start), ``declared_inventories``,
``watermarks`` (what the store holds of its agent's epoch), ``node_rejects`` (its rejects,
summed over restarts) and ``polled_power`` (its BMC's last reading, scope ``node``).
:func:`forget_nodes` deletes them in the command's transaction and appends one row per node
to ``forgotten_nodes``. Its samples, rollups, usage ledger, quarantined messages, pool and
lease moves and alert history stay, as history, until their retention. So do its alerts:
the collector that leads resolves them once the node is gone from its live view, and
notifies the resolution like any other.

A running collector stops tracking a forgotten node when it reads the rows past the last id
it saw (:func:`forgotten_after`, from :func:`last_forgotten` read at its start): commands
take the store's write lock, so ids grow in commit order; a starting collector remembers
those the store has not heard of since (:func:`still_forgotten`), after dropping the rows a
collector that stopped before its pickup wrote of them (:func:`remembered_at_start`). A
message from the node stamped after the forget makes it a new node; one stamped before
(the backlog its broker session queued while the collector was down, samples in flight) is
dropped (:class:`~collector.ingest.validate.Ingestor`). What the collector wrote of it since the
command's commit, from messages validated before that (its ``nodes`` row again, from a
status stored meanwhile; reject counts; its BMC's reading), goes then (:func:`drop_written`;
:mod:`collector.ingest.writer`): the store keeps no node the live view dropped.

Reads go through anything that :class:`~collector.store.statements.Reads` (the command's own
transaction, so that the checks and the deletes see one snapshot); portable SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.store.pools import HOLDS_FROM
from collector.store.queries import latest_sample
from collector.store.query import Query, run, single
from collector.store.statements import Reads, Statements

if TYPE_CHECKING:
    from collector.store.writes import Tx, Writes

__all__ = [
    "NODE_TABLES",
    "Forgotten",
    "LeaseHold",
    "NodeActivity",
    "activity",
    "drop_written",
    "forget_nodes",
    "forgotten_after",
    "last_forgotten",
    "lease_holds",
    "nodes_held",
    "remembered_at_start",
    "still_forgotten",
]

NODE_TABLES: Final = (
    ("nodes", "node", ""),
    ("declared_inventories", "node", ""),
    ("watermarks", "node", ""),
    ("node_rejects", "node", ""),
    ("polled_power", "name", " AND scope = 'node'"),
)
"""The tables that hold a node as current, the column naming it and what else a row must
be (a rack's reading is not a node's): what forgetting deletes."""
_WRITTEN: Final = tuple(
    t for t in NODE_TABLES if t[0] in ("nodes", "watermarks", "node_rejects", "polled_power")
)
"""Those the collector's writer writes: from a node's messages, and its BMC's readings (the
leader's polled power record)."""
_CHUNK: Final = 500
"""Nodes named in one ``IN (...)``: far under SQLite's bound-variable limit."""


def _chunks(nodes: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    for i in range(0, len(nodes), _CHUNK):
        chunk = nodes[i : i + _CHUNK]
        yield chunk, ", ".join("?" * len(chunk))


def nodes_held(store: Reads, nodes: Iterable[str]) -> set[str]:
    """Those of ``nodes`` that some table of :data:`NODE_TABLES` holds a row of."""
    wanted = list(dict.fromkeys(nodes))
    held: set[str] = set()
    for table, column, also in NODE_TABLES:
        if not store.has_table(table):
            continue
        for chunk, marks in _chunks(wanted):
            rows = store.fetchall(
                f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN ({marks}){also}", chunk
            )
            held.update(str(r[0]) for r in rows)
    return held


class NodeActivity(NamedTuple):
    """What the store last heard of a node: the facts :meth:`Staleness.state
    <collector.nodefacts.Staleness.state>` decides its state from."""

    node: str
    status: str | None
    status_ts: float | None
    inventory_ts: float | None
    received: float | None
    """When its newest sample arrived (collector clock, s); ``None``: no sample stored."""
    interval_s: float | None


def activity(store: Reads, nodes: Iterable[str]) -> dict[str, NodeActivity]:
    """Node -> its :class:`NodeActivity`, for those of ``nodes`` with a ``nodes`` row."""
    out: dict[str, NodeActivity] = {}
    for chunk, marks in _chunks(list(dict.fromkeys(nodes))):
        rows = store.fetchall(
            "SELECT n.node, n.status, n.status_ts, n.inventory_ts, "
            "s.received_ms / 1000.0 AS received, s.interval_s "
            f"FROM nodes n {latest_sample(store.dialect)} WHERE n.node IN ({marks})",
            chunk,
        )
        for r in rows:
            out[str(r[0])] = NodeActivity(str(r[0]), r[1], r[2], r[3], r[4], r[5])
    return out


class LeaseHold(NamedTuple):
    """A lease in force (not ended) that names a node."""

    lease: str
    tenant: str
    pool: str | None
    end_at: float | None
    """When it ends (Unix s); ``None``: renewing without notice."""


def lease_holds(store: Reads, nodes: Iterable[str], now: float) -> dict[str, LeaseHold]:
    """Node -> the first lease (by id) that names it and holds it at some time from ``now``
    on (:data:`~collector.store.pools.HOLDS_FROM`), for those of ``nodes`` some lease holds
    (none before leases exist)."""
    if not store.has_table("lease_nodes") or not store.has_table("leases"):
        return {}
    out: dict[str, LeaseHold] = {}
    for chunk, marks in _chunks(list(dict.fromkeys(nodes))):
        rows = store.fetchall(
            "SELECT ln.node, l.name, l.tenant, l.pool, l.end_at FROM lease_nodes ln "
            f"JOIN leases l ON l.id = ln.lease_id WHERE ln.node IN ({marks}) "
            f"AND {HOLDS_FROM} ORDER BY l.id",
            [*chunk, now],
        )
        for node, name, tenant, pool, end_at in rows:
            out.setdefault(str(node), LeaseHold(str(name), str(tenant), pool, end_at))
    return out


def forget_nodes(tx: Statements, nodes: Sequence[str], *, forced: Collection[str] = ()) -> None:
    """Delete the node-level rows of ``nodes`` (:data:`NODE_TABLES`) and record each in
    ``forgotten_nodes`` (``forced``: those forgotten with ``--force``), in the command's
    transaction. A declared inventory gone moves the governance generation (governance
    reads the declared hardware)."""
    _delete(tx, [t for t in NODE_TABLES if tx.has_table(t[0])], nodes)
    tx.executemany(
        "INSERT INTO forgotten_nodes (node, at, forced) VALUES (?, ?, ?)",
        [(node, tx.now, int(node in forced)) for node in nodes],
    )
    tx.bump_generation()


async def drop_written(store: Writes, nodes: Sequence[str]) -> None:
    """Delete what the collector's writer wrote of ``nodes`` since they were forgotten, from
    their messages validated before it stopped tracking them, in one transaction of its
    store."""

    def work(tx: Tx) -> None:
        _delete(tx, _WRITTEN, nodes)

    await store.transact(f"dropping {len(nodes)} forgotten nodes", work)


def _delete(
    tx: Statements | Tx, tables: Iterable[tuple[str, str, str]], nodes: Sequence[str]
) -> None:
    """Delete the rows of ``nodes`` in ``tables`` (entries of :data:`NODE_TABLES`)."""
    params = [(node,) for node in nodes]
    for table, column, also in tables:
        tx.executemany(f"DELETE FROM {table} WHERE {column} = ?{also}", params)


def last_forgotten() -> Query[int]:
    """The id of the newest ``forgotten_nodes`` row (0: none): a starting collector's mark."""
    return single(
        "SELECT coalesce(max(id), 0) FROM forgotten_nodes", (), lambda rows: int(rows[0][0])
    )


class Forgotten(NamedTuple):
    """One ``forgotten_nodes`` row, as a running collector reads it."""

    id: int
    node: str
    at: float
    """When the command forgot it (its clock, Unix s): the node's messages stamped before
    are from before its decommission (:meth:`collector.live.LiveView.forgotten_at`)."""


def _forgotten(rows: list[Any]) -> list[Forgotten]:
    return [Forgotten(int(r[0]), str(r[1]), float(r[2])) for r in rows]


def forgotten_after(after_id: int) -> Query[list[Forgotten]]:
    """The nodes forgotten since the row ``after_id``, oldest first."""
    return single(
        "SELECT id, node, at FROM forgotten_nodes WHERE id > ? ORDER BY id", (after_id,), _forgotten
    )


def still_forgotten(limit: int) -> Query[list[Forgotten]]:
    """The nodes forgotten that the store has not heard of since (no ``nodes`` row), each
    at its latest forget, the latest first, at most ``limit``: what a starting collector's
    live view remembers as forgotten (:meth:`collector.live.LiveView.forget`)."""
    return single(
        "SELECT max(f.id), f.node, max(f.at) FROM forgotten_nodes f "
        "WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = f.node) "
        "GROUP BY f.node ORDER BY max(f.id) DESC LIMIT ?",
        (limit,),
        _forgotten,
    )


WRITTEN_WITHIN_S: Final = 60.0
"""A forgotten node's ``nodes`` row whose every time (status, inventory: when the collector
received them) is at most this long after its forget was written before a writer's pickup
(every 2 s) that never came: :func:`remembered_at_start` drops it."""

_UNPICKED: Final = (
    "SELECT n.node FROM nodes n JOIN forgotten_nodes f ON f.node = n.node "
    "GROUP BY n.node, n.status_ts, n.inventory_ts "
    "HAVING coalesce(n.status_ts, n.inventory_ts) IS NOT NULL "
    "AND coalesce(n.status_ts, n.inventory_ts) <= max(f.at) + ? "
    "AND coalesce(n.inventory_ts, n.status_ts) <= max(f.at) + ?"
)


async def remembered_at_start(
    store: Writes, limit: int, *, max_skew_s: float
) -> tuple[list[Forgotten], list[str]]:
    """What a starting collector remembers as forgotten (:func:`still_forgotten`), and the
    nodes among them whose rows it dropped first, in one transaction.

    A collector that stopped (crashed) between a forget's commit and its writer's pickup,
    after storing a status or inventory of the node validated before it, left its ``nodes``
    row there again (the pickup, :func:`drop_written`, would have deleted it): the node then
    had a row, was skipped as heard of since, and loaded back stale. Such a row's times are
    within seconds of the forget; one written after a pickup comes from a message stamped
    after the forget by more than ``max_clock_skew_s`` (:mod:`collector.ingest.validate`).
    So the forget wins over a row no later than :data:`WRITTEN_WITHIN_S` after it, nor than
    ``max_skew_s`` (the collector's ``max_clock_skew_s``). A row a sample wrote has no time:
    written after a pickup (before it, the writer still knew the node's row and wrote
    none), it stays."""
    within = min(max_skew_s, WRITTEN_WITHIN_S)

    def work(tx: Tx) -> tuple[list[Forgotten], list[str]]:
        stale = [str(r[0]) for r in tx.fetchall(_UNPICKED, (within, within))]
        if stale:
            _delete(tx, _WRITTEN, stale)
        return run(still_forgotten(limit), tx.fetchall), stale

    return await store.transact("reading the forgotten nodes", work)
