"""PostgreSQL's day partitions of ``samples``: created ahead and on demand, dropped whole.

``samples`` is range-partitioned on ``ts_ms`` (the sample's own time; the unique ``(node,
ts_ms)`` key that drops duplicates must hold the partition key), one partition per UTC day
(``samples_dYYYYMMDD``), created ahead for the next days and on demand before a batch
holding a sample of a day without one (validation bounds a sample's time to the retention
window and the allowed clock skew, so that is a bounded set of days). Retention drops the
partitions whose whole day is past the window; the collector then trims the oldest partial
day in chunks as on SQLite (:mod:`collector.store.db`). It goes by arrival, as on SQLite: a
day's late arrivals (a spool replayed after an outage) stay, moved into the day's new
partition as its old one is dropped, all under ``samples``' lock, so a sample another
collector is inserting meanwhile is never dropped with the day. A day with more late
arrivals than that lock should be held for (a retention chunk), yet fewer than the rows
that go, is rebuilt around them instead: they are copied into the day's new partition
before the lock, which then covers only what came during the copy. A day whose late rows
are most of it, or too many to copy at once, is trimmed in chunks.

:class:`DayPartitions` remembers the days one connection knows to have a partition; the
collector's backend (:class:`~collector.store.pg.PgBackend`) calls it from its worker
thread with its connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any, Final, Literal

import psycopg
from psycopg import sql as pgsql

from collector.store.pgconn import PARTITION_LOCK, REBUILD_LOCK, columns
from shared.logging import get_logger

__all__ = ["DAY_MS", "STAGING", "DayPartitions", "partition_name"]

log = get_logger("store")

DAY_MS: Final = 86_400_000
STAGING: Final = "samples_in"
"""The batch's staging table (a temporary table per writing connection, emptied at each
commit): a batch's samples are copied into it first, and a dropped day's late rows wait in
it while their partition is made again."""
_STAGED: Final = pgsql.Identifier(STAGING)
_AHEAD_DAYS: Final = 2
"""Partitions created ahead of today (a sample's day normally has one before it comes)."""
_DROP_LOCK_TIMEOUT_MS: Final = 1000
"""How long retention waits for ``samples``' lock to drop a day (:func:`_drop_day`):
every writer of the share group queues behind the wait (once a day), so it is short next to
their own ``lock_timeout`` (5 s), yet longer than a batch's transaction, which is what it
normally waits for (a batch of 4,000 samples at the 10,000 samples/s a collector stores)."""
_REBUILD_MAX_CHUNKS: Final = 20
"""The most late rows (in retention chunks) a day is rebuilt around (:func:`_rebuild_day`):
the copy holds ``samples``' ACCESS SHARE lock, which keeps a new day's partition from being
created (a writer waits for it) and other collectors from dropping days, for its length."""
_DROP_RETRY_S: Final = 30.0
"""After a wait that timed out (a long query holds ``samples``), retention tries to drop
days again only this much later, not at each chunk: writers are not queued again and again."""


def partition_name(day: int) -> str:
    """The partition of UTC day ``day`` (days since 1970-01-01): ``samples_dYYYYMMDD``."""
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return f"samples_d{date:%Y%m%d}"


def _day_of(name: str) -> int | None:
    if not name.startswith("samples_d") or len(name) != 17:
        return None
    try:
        date = dt.datetime.strptime(name[9:], "%Y%m%d").replace(tzinfo=dt.UTC).date()
    except ValueError:
        return None
    return (date - dt.date(1970, 1, 1)).days


class DayPartitions:
    """The days one connection knows to have a partition, and the statements that add and
    drop days through it (each method takes the connection, in its owner's thread)."""

    def __init__(self) -> None:
        self.known: set[int] = set()
        """Days known to have a partition (:meth:`forget` after a reconnect)."""
        self._retry_at = 0.0
        """Retention drops no day before this (``time.monotonic()``; :data:`_DROP_RETRY_S`)."""

    def forget(self) -> None:
        """A new connection: what the last one knew is read again at its first need."""
        self.known.clear()

    def missing(self, days: set[int]) -> bool:
        """Whether some of ``days`` are not known to have a partition."""
        return bool(days - self.known)

    def ensure(self, conn: psycopg.Connection[Any], days: Iterable[int]) -> None:
        """A partition for each of ``days`` not known to have one (a short transaction
        under the partition lock: collectors starting together add each day once)."""
        wanted = [d for d in days if d not in self.known]
        if not wanted:
            return
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            existing = _partition_days(conn)
            for day in wanted:
                if day in existing:
                    continue
                conn.execute(_create_partition(day))
                existing.add(day)
                log.info("partition_created", partition=partition_name(day))
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        self.known = existing

    def ensure_ahead(self, conn: psycopg.Connection[Any]) -> None:
        """Partitions for today and the next days (:data:`_AHEAD_DAYS`)."""
        self.ensure(conn, range(_today(), _today() + _AHEAD_DAYS + 1))

    def drop_before(self, conn: psycopg.Connection[Any], cutoff_ms: int, move_max_rows: int) -> int:
        """Drop the partitions wholly before ``cutoff_ms`` (see :func:`_drop_day`); return
        their estimated rows (the planner's count, not a scan)."""
        rows = conn.execute(
            "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'samples'::regclass"
        ).fetchall()
        conn.commit()
        dropped = 0
        for name, estimate in rows:
            day = _day_of(name)
            if day is None or (day + 1) * DAY_MS > cutoff_ms:
                continue
            if time.monotonic() < self._retry_at:
                break
            try:
                way = _how_to_drop(conn, name, cutoff_ms, move_max_rows, int(estimate))
                moved = (
                    None
                    if way is None
                    else _drop_day(conn, name, day, cutoff_ms, move_max_rows)
                    if way == "move"
                    else _rebuild_day(conn, name, day, cutoff_ms)
                )
            except psycopg.errors.UndefinedTable:
                conn.rollback()  # another collector of the share group dropped it meanwhile
                self.known.discard(day)
                continue
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
                self._retry_at = time.monotonic() + _DROP_RETRY_S
                log.warning(
                    "partition_drop_deferred",
                    partition=name,
                    lock_wait_ms=_DROP_LOCK_TIMEOUT_MS,
                    retry_in_s=_DROP_RETRY_S,
                    hint="a transaction held samples longer (a long query, another "
                    "collector's batch): its rows go by the chunked delete meanwhile",
                )
                break
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
            if moved is None:
                continue
            if not moved:
                self.known.discard(day)
            dropped += max(int(estimate) - moved, 0)
            log.info("partition_dropped", partition=name, rows_estimate=int(estimate), kept=moved)
        if dropped or _today() + _AHEAD_DAYS not in self.known:
            self.ensure_ahead(conn)
        return dropped


def _partition_days(conn: psycopg.Connection[Any]) -> set[int]:
    """The days that have a partition now."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'samples'::regclass"
    ).fetchall()
    return {d for (name,) in rows if (d := _day_of(name)) is not None}


def _how_to_drop(
    conn: psycopg.Connection[Any], name: str, cutoff_ms: int, move_max_rows: int, estimate: int
) -> Literal["move", "rebuild"] | None:
    """How day partition ``name`` (wholly before ``cutoff_ms``; ``estimate``: its rows, the
    planner's count) goes, as far as the rows committed now tell (no lock: only a day that
    will go takes one): ``"move"`` (:func:`_drop_day`) when at most ``move_max_rows`` of its
    rows arrived since the cutoff; ``"rebuild"`` (:func:`_rebuild_day`) when more did, but
    at most half its rows and :data:`_REBUILD_MAX_CHUNKS` chunks (copying what stays then
    costs less than deleting what goes); ``None``, the chunked delete's, when dropping
    would free nothing (every row late) or copy more than it frees. The count of late rows
    stops one past that bound: each retention call reads at most so many index entries."""
    part = pgsql.Identifier(name)
    most = max(move_max_rows, min(_REBUILD_MAX_CHUNKS * move_max_rows, estimate // 2))
    (late,) = conn.execute(
        pgsql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE received_ms >= %s LIMIT %s) AS late"
        ).format(part),
        (cutoff_ms, most + 1),
    ).fetchone() or (0,)
    way: Literal["move", "rebuild"] | None = None
    if late == 0 or (late <= most and _has_rows_before(conn, part, cutoff_ms)):
        way = "move" if late <= move_max_rows else "rebuild"
    conn.commit()
    return way


def _has_rows_before(conn: psycopg.Connection[Any], part: pgsql.Identifier, cutoff_ms: int) -> bool:
    """Whether partition ``part`` holds a row that arrived before ``cutoff_ms``."""
    (found,) = conn.execute(
        pgsql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE received_ms < %s)").format(part),
        (cutoff_ms,),
    ).fetchone() or (False,)
    return bool(found)


def _drop_day(
    conn: psycopg.Connection[Any], name: str, day: int, cutoff_ms: int, move_max_rows: int
) -> int | None:
    """Drop day partition ``name``, keeping its rows that arrived at or after
    ``cutoff_ms`` (late arrivals: retention goes by arrival, as on SQLite), in one
    transaction; return how many were kept (``None``: the day stays as it is).

    The check and the drop are one decision: the transaction first takes ``samples``'
    ACCESS EXCLUSIVE lock (which ``DROP TABLE`` of a partition takes anyway:
    https://www.postgresql.org/docs/current/ddl-partitioning.html#DDL-PARTITIONING-DECLARATIVE-MAINTENANCE),
    so a sample another collector of the share group is inserting into the day is
    committed before it (then seen and kept) or waits for the end (then inserted into
    the day's new partition, or into one its writer creates again). The parent's lock
    is the first this transaction takes, as inserts and queries take it before their
    partitions' (one order, no deadlock:
    https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-DEADLOCKS),
    and it is waited for at most :data:`_DROP_LOCK_TIMEOUT_MS` (``lock_timeout``), as
    writers queue behind the wait. The late rows (at most ``move_max_rows``) go to the
    batch's staging table (:data:`STAGING`, empty outside a batch and emptied at the
    commit), the partition is dropped, created again, and they are inserted back: a day
    holding a few late arrivals costs one short transaction, not a chunked delete of
    its rows (``bench/bench_pg_retention.py``).
    """
    conn.execute(f"SET LOCAL lock_timeout = {_DROP_LOCK_TIMEOUT_MS}")
    conn.execute("LOCK TABLE ONLY samples IN ACCESS EXCLUSIVE MODE")
    (exists,) = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() or (0,)
    if not exists:
        conn.rollback()  # another collector of the share group dropped it meanwhile
        return None
    cols = pgsql.SQL(", ").join(map(pgsql.Identifier, sorted(columns(conn, "samples"))))
    part = pgsql.Identifier(name)
    moved = conn.execute(
        pgsql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE received_ms >= %s LIMIT %s").format(
            _STAGED, cols, cols, part
        ),
        (cutoff_ms, move_max_rows + 1),
    ).rowcount
    if moved > move_max_rows:  # more came since the check: chunked deletes trim it
        conn.rollback()
        return None
    if moved and not _has_rows_before(conn, part, cutoff_ms):
        conn.rollback()  # every row is late (another collector moved them): nothing to free
        return None
    conn.execute(pgsql.SQL("DROP TABLE {}").format(part))
    if moved:
        conn.execute(_create_partition(day))
        conn.execute(
            pgsql.SQL("INSERT INTO samples ({}) SELECT {} FROM {}").format(cols, cols, _STAGED)
        )
    conn.commit()
    return moved


def _rebuild_day(conn: psycopg.Connection[Any], name: str, day: int, cutoff_ms: int) -> int | None:
    """Rebuild day partition ``name`` with only its rows that arrived at or after
    ``cutoff_ms``, more than :func:`_drop_day` moves under ``samples``' exclusive lock, in
    one transaction; return how many were kept (``None``: the day stays as it is, for now).

    The late rows are copied first into a new table shaped as the partition (``LIKE
    samples``: columns, defaults, indexes; and a ``CHECK`` of the day's range, so that
    attaching it scans nothing:
    https://www.postgresql.org/docs/current/ddl-partitioning.html#DDL-PARTITIONING-DECLARATIVE-MAINTENANCE)
    while the collectors go on writing: this transaction holds only ``samples``' ACCESS
    SHARE lock meanwhile (the parent's lock first, as in :func:`_drop_day`, and as writers
    take theirs; it keeps another collector from dropping the day under the copy). Then,
    under the ACCESS EXCLUSIVE lock (waited for at most :data:`_DROP_LOCK_TIMEOUT_MS`), the
    late rows committed since are added (the unique key skips those copied), the partition
    is dropped and the new table attached in its place: the lock is held for the rows that
    came during the copy, not for the day's late rows. One collector of a share group
    rebuilds at a time (:data:`~collector.store.pgconn.REBUILD_LOCK`, tried: another one
    skips the day); a crash or a lock wait that times out rolls it all back.
    """
    conn.execute(f"SET LOCAL lock_timeout = {_DROP_LOCK_TIMEOUT_MS}")
    conn.execute("LOCK TABLE ONLY samples IN ACCESS SHARE MODE")
    (mine,) = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (REBUILD_LOCK,)).fetchone() or (
        False,
    )
    (exists,) = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() or (0,)
    if not mine or not exists:
        conn.rollback()  # another collector rebuilds (or dropped) a day meanwhile
        return None
    part, keep = pgsql.Identifier(name), pgsql.Identifier(f"{name}_keep")
    cols = pgsql.SQL(", ").join(map(pgsql.Identifier, sorted(columns(conn, "samples"))))
    late = pgsql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE received_ms >= %s").format(
        keep, cols, cols, part
    )
    conn.execute(pgsql.SQL("CREATE TABLE {} (LIKE samples INCLUDING ALL)").format(keep))
    conn.execute(
        pgsql.SQL("ALTER TABLE {} ADD CHECK (ts_ms >= {} AND ts_ms < {})").format(
            keep, pgsql.Literal(day * DAY_MS), pgsql.Literal((day + 1) * DAY_MS)
        )
    )
    conn.execute(late, (cutoff_ms,))
    conn.execute("LOCK TABLE ONLY samples IN ACCESS EXCLUSIVE MODE")
    conn.execute(late + pgsql.SQL(" ON CONFLICT DO NOTHING"), (cutoff_ms,))
    conn.execute(pgsql.SQL("DROP TABLE {}").format(part))
    conn.execute(pgsql.SQL("ALTER TABLE {} RENAME TO {}").format(keep, part))
    conn.execute(pgsql.SQL("ALTER TABLE samples ATTACH PARTITION {} {}").format(part, _range(day)))
    (kept,) = conn.execute(pgsql.SQL("SELECT count(*) FROM {}").format(part)).fetchone() or (0,)
    conn.commit()
    return int(kept)


def _create_partition(day: int) -> pgsql.Composed:
    """The statement creating day ``day``'s partition of ``samples`` (unless it exists)."""
    return pgsql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF samples {}").format(
        pgsql.Identifier(partition_name(day)), _range(day)
    )


def _range(day: int) -> pgsql.Composed:
    """Day ``day``'s partition bound: ``FOR VALUES FROM (...) TO (...)``, in ``ts_ms``."""
    return pgsql.SQL("FOR VALUES FROM ({}) TO ({})").format(
        pgsql.Literal(day * DAY_MS), pgsql.Literal((day + 1) * DAY_MS)
    )


def _today() -> int:
    """Today, UTC, in days since 1970-01-01."""
    return int(time.time() // 86_400)
