"""A PostgreSQL store whose database compares text by language rules (ICU ``en-US``, as a
site's database made with its distribution's default ``en_US.UTF-8``) orders and compares
names as SQLite does: as bytes, Python's ``str`` order. There ``gpu_2`` < ``gpu-10`` <
``GPU-3`` < ``gpu.a``; as bytes ``GPU-3`` < ``gpu-10`` < ``gpu.a`` < ``gpu_2``."""

from __future__ import annotations

import psycopg
from msgspec import structs
from psycopg import sql

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.nodefacts import Staleness
from collector.paths import StoreTarget, parse_target
from collector.store.command import Command
from collector.store.db import NodeUpdate, Store
from collector.store.migrations import BYTES_ORDER, GROWING_TABLES, MIGRATIONS, migrations_for
from collector.store.queries import fleet_summary, gpu_rows
from collector.store.query import single
from collector.store.reader import StoreReader
from shared.schema import encode

NAMES = ("gpu-10", "gpu_2", "GPU-3", "gpu.a", "a-b", "ab", "gpu-2", "gpu10", "Zeta", "a.b")
"""Node names whose order by ICU's en-US differs from their order as bytes."""

T0 = 1_800_000_000.0


async def _fleet(db: StoreTarget) -> None:
    """A store with a sample of each of :data:`NAMES` (one GPU each)."""
    sim = FleetSimulator(len(NAMES), gpus_per_node=1, seed=3, interval_s=5)
    rows = [
        sample_row(s, encode(s), T0 + 1)
        for s in (structs.replace(sim.sample(i, T0, 0), node=n) for i, n in enumerate(NAMES))
    ]
    async with Store(db) as store:
        await store.write_batch(rows, [NodeUpdate(n, "online", T0) for n in NAMES], list(NAMES))


async def test_nodes_are_listed_and_limited_by_name_as_bytes(
    collated_store_url: StoreTarget,
) -> None:
    """The fleet's nodes come in byte order, and ``query gpus``' first N nodes "by name"
    are the same N on both backends."""
    await _fleet(collated_store_url)
    with StoreReader(collated_store_url) as reader:
        summary = fleet_summary(reader, T0 + 2, staleness=Staleness(3, 5))
        first = gpu_rows(reader, None, 4)
    assert [n["node"] for n in summary["nodes"]] == sorted(NAMES)
    assert [g["node"] for g in first] == sorted(NAMES)[:4]


async def test_a_pools_nodes_come_back_as_bytes_order(collated_store_url: StoreTarget) -> None:
    """``pools.nodes`` is what ``apply`` compares with the file's nodes, sorted in Python."""
    await _fleet(collated_store_url)
    with Command(collated_store_url, now=T0) as tx:
        tx.pools.create("p")
        tx.pools.move(list(NAMES), "p", "test")
    with Command(collated_store_url, now=T0) as tx:
        assert tx.pools.nodes("p") == sorted(NAMES)


def _not_as_bytes(url: str) -> list[tuple[str, str, str | None]]:
    """The text columns of the store's tables (partitions too) whose collation is not C,
    but those of the growing tables (samples and its day partitions, ...), which keep the
    database's (:data:`~collector.store.migrations.GROWING_TABLES`)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.table_name, c.column_name, c.collation_name "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) "
            "WHERE c.table_schema = 'public' AND c.data_type = 'text' "
            "AND t.table_type = 'BASE TABLE'"
        ).fetchall()
    assert len(rows) > 50, "the store's text columns not found: the query is wrong"
    growing = [r for r in rows if r[0] in GROWING_TABLES]
    assert {r[0] for r in growing} == set(GROWING_TABLES)
    return [r for r in rows if r[2] != "C" and not r[0].startswith(GROWING_TABLES)]


async def test_every_text_column_of_the_store_compares_bytes(collated_postgres_url: str) -> None:
    """Every text column of a new store has the C collation, whatever the database's
    default: no query can order, compare or index names by the language's rules."""
    async with Store(parse_target(collated_postgres_url)):
        pass
    with psycopg.connect(collated_postgres_url) as conn:
        provider = conn.execute(
            "SELECT datlocprovider FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert provider == ("i",)  # ICU: the database's own default is en-US
    assert _not_as_bytes(collated_postgres_url) == []


async def test_a_store_made_before_compares_bytes_once_migrated(
    collated_postgres_url: str,
) -> None:
    """A store whose text columns had the database's collation (every store before
    :data:`~collector.store.migrations.BYTES_ORDER`) gets C in its columns, its rows kept
    and its unique keys still unique."""
    target = parse_target(collated_postgres_url)
    await _fleet(target)
    with psycopg.connect(collated_postgres_url) as conn:  # as it was before the migration
        for table, column, _ in conn.execute(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type = 'text' AND table_name IN "
            "(SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND NOT relispartition)"
        ).fetchall():
            conn.execute(
                sql.SQL('ALTER TABLE {} ALTER COLUMN {} TYPE text COLLATE "default"').format(
                    sql.Identifier(table), sql.Identifier(column)
                )
            )
        conn.execute("DELETE FROM schema_migrations WHERE name = %s", (BYTES_ORDER,))
    assert len(_not_as_bytes(collated_postgres_url)) > 50
    with StoreReader(target) as reader:  # the order the site saw
        listed = [
            n["node"] for n in fleet_summary(reader, T0 + 2, staleness=Staleness(3, 5))["nodes"]
        ]
    assert listed != sorted(NAMES)
    async with Store(target) as store:
        assert await store.run(single("SELECT count(*) FROM samples", (), list)) == [(len(NAMES),)]
    assert _not_as_bytes(collated_postgres_url) == []
    await _fleet(target)  # the same samples again: duplicates, by the rebuilt unique index
    with StoreReader(target) as reader:
        summary = fleet_summary(reader, T0 + 2, staleness=Staleness(3, 5))
        assert reader.fetchall("SELECT count(*) FROM samples")[0][0] == len(NAMES)
    assert [n["node"] for n in summary["nodes"]] == sorted(NAMES)


async def test_a_later_migrations_text_columns_compare_bytes(collated_postgres_url: str) -> None:
    """A migration after :data:`~collector.store.migrations.BYTES_ORDER` writes ``TEXT`` as
    SQLite does; PostgreSQL's text of it gives the column the C collation."""
    later = [*MIGRATIONS, ("9999_later", "CREATE TABLE later (name TEXT PRIMARY KEY, n TEXT);")]
    ddl = migrations_for("postgresql", later)[-1][1]
    async with Store(parse_target(collated_postgres_url)):
        pass
    with psycopg.connect(collated_postgres_url) as conn:
        conn.execute(ddl)
    assert _not_as_bytes(collated_postgres_url) == []
    assert migrations_for("sqlite", later)[-1] == later[-1]
