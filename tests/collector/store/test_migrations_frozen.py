"""Migrations are never edited once on main: a store that applied one records only its name,
so SQL changed afterwards never reaches it. Two were edited in place within minutes of
landing (0027 gained ``payload_templates.used_ms``, 0028 ``rollups.longest_s``): a store
created in between never got the column, and ``collector run`` then failed at every start.

Each migration's text is pinned here by its SHA-256, for both backends (PostgreSQL's is
translated from SQLite's by :func:`collector.store.migrations.pg_ddl` unless written out: a
change to the translation changes old migrations too). A new migration adds its line; an
edited one goes red: add a new migration that makes the change instead."""

from __future__ import annotations

import hashlib
from typing import Final

import pytest

from collector.store.dialect import Dialect
from collector.store.migrations import migrations_for

PINNED: Final[dict[Dialect, dict[str, str]]] = {
    "sqlite": {
        "0001_initial": "edc950d553cc6543",
        "0002_samples_ts_index": "128a9bc595c6d0be",
        "0003_retention_by_arrival": "f46f75d2df05b8d8",
        "0004_quarantine": "7e19f43372b01df7",
        "0005_node_rejects_and_meta": "8d9c44d09e2c2777",
        "0006_alerts": "cc3c5ed6f6545c44",
        "0007_outbox": "4eec569cedfd8acd",
        "0008_groups_and_silences": "8ee680c78d572920",
        "0009_pools": "2a6d219bdb031e18",
        "0010_inventory_and_pools": "8e5f16850bfea92a",
        "0011_capacity_snapshots": "f166bb7fc14e0751",
        "0012_leases_and_quotas": "4ad00576ae69f259",
        "0013_samples_epoch": "8ea11cc796126a2f",
        "0014_lease_notice_months": "4f2d48ea74fbcc7a",
        "0015_cohort_tree": "52d3010b2292ecfe",
        "0016_samples_node_power": "f599a5e70e6f1854",
        "0017_rollups_and_ledger": "daeea8db385e3be1",
        "0018_watermarks": "db55f807379f5418",
        "0019_rollups_packed": "1158d0bf2056c6b7",
        "0020_polled_power": "f393ed6956412193",
        "0021_rollup_stage_owner": "4baa0cd3c3d72c7a",
        "0022_leader_lease": "fd07f7cc401c02e4",
        "0023_payload_layout": "e1216e1d6b7f1513",
        "0024_rollup_owners": "2471bc21b8aaa929",
        "0025_rollup_stage_shard": "319f8d8a419c766d",
        "0026_lease_moves": "2629aa78b4118549",
        "0027_payload_templates": "10b26ae13688d6c9",
        "0028_rollups_reported": "848d5ed13871c418",
        "0029_alert_history_fired": "a690c244e816690f",
        "0030_watermarks_newest": "cc8ee416e5d87bd5",
        "0031_outbox_done": "91979914ca4765c3",
        "0032_forgotten_nodes": "a80851c709e68993",
        "0033_text_bytes_order": "dbac4a735efcaed7",
    },
    "postgresql": {
        "0001_initial": "b37768e718040a9a",
        "0002_samples_ts_index": "128a9bc595c6d0be",
        "0003_retention_by_arrival": "f46f75d2df05b8d8",
        "0004_quarantine": "5d496fce607b496e",
        "0005_node_rejects_and_meta": "21ad56d874ad3454",
        "0006_alerts": "67a077593ca10600",
        "0007_outbox": "2cacde843b696ba5",
        "0008_groups_and_silences": "d3261278d363988d",
        "0009_pools": "24247680a859bb92",
        "0010_inventory_and_pools": "7dff79f9c83b89c8",
        "0011_capacity_snapshots": "724734b64039f51c",
        "0012_leases_and_quotas": "9a086b9b29a43d62",
        "0013_samples_epoch": "7e5429f303fe83e1",
        "0014_lease_notice_months": "7288793d4c43bcbb",
        "0015_cohort_tree": "2204e3bbe0dd3e74",
        "0016_samples_node_power": "19f305de9717923a",
        "0017_rollups_and_ledger": "a2d2aa819490a55d",
        "0018_watermarks": "671be0d35a364a36",
        "0019_rollups_packed": "818d04c452f7d592",
        "0020_polled_power": "5a231bf14e9586f4",
        "0021_rollup_stage_owner": "4baa0cd3c3d72c7a",
        "0022_leader_lease": "32f252bed39f2367",
        "0023_payload_layout": "e1216e1d6b7f1513",
        "0024_rollup_owners": "e1645905bd6d96ea",
        "0025_rollup_stage_shard": "78060784aefeb00c",
        "0026_lease_moves": "35a9a9ab0fa33ceb",
        "0027_payload_templates": "e8b3b486a3577ef9",
        "0028_rollups_reported": "654ad36ae5c8fd62",
        "0029_alert_history_fired": "a690c244e816690f",
        "0030_watermarks_newest": "4fddc43761d984e8",
        "0031_outbox_done": "91979914ca4765c3",
        "0032_forgotten_nodes": "318466e80e81c6a5",
        "0033_text_bytes_order": "84def737b55365ef",
    },
}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_no_migration_is_edited_after_it_landed(dialect: Dialect) -> None:
    pinned = PINNED[dialect]
    for name, sql in migrations_for(dialect):
        digest = hashlib.sha256(sql.encode()).hexdigest()[:16]
        assert name in pinned, f"new migration {name}: pin it in this file ({dialect}: {digest!r})"
        assert digest == pinned[name], (
            f"migration {name} ({dialect}) was edited after it landed: stores that applied "
            "it never see the change; put the change in a new migration instead"
        )


def test_no_pinned_migration_was_removed_or_renamed() -> None:
    for dialect, pinned in PINNED.items():
        names = [name for name, _ in migrations_for(dialect)]
        assert names == list(pinned), f"{dialect}: migrations removed, renamed or reordered"
