"""The store's schema: ordered, named migrations, each applied once and recorded.

Tables:

``samples``
    one row per node sample: summary columns for fast queries plus the validated payload
    (packed and zstd-compressed by the codec of ``payload_dicts`` it names:
    :mod:`collector.store.codec`; its compressed payloads start with the id of a
    ``payload_templates`` row, the node's constant fields) for per-GPU detail.
    ``(node, ts_ms)`` is unique, which is what makes QoS 1 redelivery harmless
    (``INSERT OR IGNORE``); retention deletes by ``received_ms`` (arrival), never by the
    node's own clock.
``nodes``
    one row per node: status from the status topic and the retained inventory.
``counters``
    the collector's counters (received, stored, duplicates, rejected by reason), flushed
    periodically so other processes can read them.
``quarantine``
    rejected or unstorable messages (bounded, newest kept): topic, reason, first bytes.
``node_rejects``
    rejects per node and reason, summed over restarts.
``meta``
    what the collector must remember across restarts (the MQTT session it holds).
``watermarks``
    per node: the highest contiguous ``seq`` of its current epoch stored, as last published
    to the agent, and its newest sample by ``(epoch, seq)`` (:mod:`collector.store.watermarks`).
``polled_power``
    the newest reading polled out of band per node (BMC) and per rack (PDUs)
    (:mod:`collector.store.power`).
``alerts`` / ``alert_history``
    pending and firing alerts, and every change to firing or resolved.
``tenants`` / ``cohorts`` / ``cohort_quotas`` / ``quotas`` / ``leases`` / ``lease_nodes``
    who holds which nodes until when, and how much each tenant may use (see
    :mod:`collector.store.governance`).
``outbox``
    one webhook notification per (alert change, receiver), written in the same transaction
    as the change: pending until delivered or a dead letter (``collector alerts --dead-letters``).
``capwatch_leader``
    PostgreSQL only: the elected leader's lease and fencing token
    (:mod:`collector.store.leader`). A SQLite store has one collector, which always leads.

One list for both backends: :data:`MIGRATIONS` holds each migration's name and its SQLite
text; :func:`migrations_for` gives PostgreSQL's, which is the same DDL with its types
(:func:`pg_ddl`: ``BIGINT``, ``DOUBLE PRECISION``, ``BYTEA``, identity columns for SQLite's
``INTEGER PRIMARY KEY``), except where :data:`POSTGRESQL` gives a text of its own because
the schema must differ (``samples`` is partitioned by day there).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Final

from collector.store.dialect import Dialect
from collector.store.errors import newer_schema, not_capwatch

if TYPE_CHECKING:
    from collector.paths import StoreTarget

__all__ = [
    "BYTES_ORDER",
    "GROWING_TABLES",
    "LEADER_TABLE_SQL",
    "MIGRATIONS",
    "NEWEST_MIGRATION_SQL",
    "POSTGRESQL",
    "SCHEMA_CHECK_S",
    "migrations_for",
    "pg_ddl",
    "refuse_newer",
    "refuse_newest",
]

LEADER_TABLE_SQL: Final = """
CREATE TABLE IF NOT EXISTS capwatch_leader (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    token       bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
)
"""
"""The leader's lease table (PostgreSQL). ``IF NOT EXISTS``: a store whose election created
it before it was a migration keeps it, and :class:`~collector.store.leader.LeaderLease`
creates it with this text in an election database of its own (``[election] url``)."""

BYTES_ORDER: Final = "0033_text_bytes_order"
"""The migration from which PostgreSQL's text columns have the ``C`` collation: they compare,
sort and are indexed as bytes, the order of SQLite's ``BINARY`` collation and of Python's
``str`` (UTF-8's byte order is the code points' order), whatever the database's default.
Sites' databases are mostly created with their distribution's ``en_US.UTF-8`` (libc or ICU),
which orders ``gpu_2`` < ``gpu-10`` < ``GPU-3`` where bytes order ``GPU-3`` < ``gpu-10`` <
``gpu_2``: code that compares names read from the store with names sorted in Python (a
pool's nodes in ``apply``), or that asks for the first nodes by name, then disagreed with
SQLite (https://www.postgresql.org/docs/15/collation.html). Later migrations' ``TEXT``
columns get the collation from :func:`migrations_for`.

Except the columns of :data:`GROWING_TABLES`: a column's new collation rebuilds every index
on it (~1.5 µs a row here), and at 12,500 nodes a site keeps billions of samples, an hour's
rebuild with the table locked at the first start after the upgrade. No query orders those
tables by text for code to compare with an order of its own (their rows are grouped by node:
a rollup hour's, the samples above a watermark's hole)."""

GROWING_TABLES: Final = ("samples", "rollups", "rollup_stage", "usage_ledger", "alert_history")
"""The tables that grow with the fleet and with time, whose text columns keep the database's
collation on PostgreSQL (:data:`BYTES_ORDER`)."""

MIGRATIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "0001_initial",
        """
        CREATE TABLE samples (
            node TEXT NOT NULL,
            ts_ms INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            received_ms INTEGER NOT NULL,
            interval_s REAL NOT NULL,
            cpu_pct REAL,
            mem_used_bytes INTEGER NOT NULL,
            mem_total_bytes INTEGER NOT NULL,
            gpu_count INTEGER NOT NULL,
            gpu_util_pct REAL,
            gpu_mem_used_bytes INTEGER,
            gpu_power_w REAL,
            cpu_power_w REAL,
            payload BLOB NOT NULL,
            payload_dict INTEGER REFERENCES payload_dicts (id)  -- NULL: stored uncompressed
        );
        CREATE TABLE payload_dicts (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            dict BLOB NOT NULL
        );
        -- rowid grows with arrival, so retention deletes from the start of the table;
        -- this index both dedups redelivered samples and serves per-node queries.
        CREATE UNIQUE INDEX samples_node_ts ON samples (node, ts_ms);
        CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            status TEXT,
            status_ts REAL,
            inventory BLOB,
            inventory_ts REAL
        );
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL,
            updated REAL NOT NULL
        );
        """,
    ),
    (
        # Retention looks for old rows by time; without this index every pass ended with a
        # scan of the whole table (minutes at 200M rows), stalling the only writer.
        "0002_samples_ts_index",
        "CREATE INDEX samples_ts ON samples (ts_ms);",
    ),
    (
        # Retention deletes by arrival time: a node's clock decides nothing about how long
        # its rows stay (a sample stamped in the future would otherwise never expire).
        "0003_retention_by_arrival",
        """
        DROP INDEX samples_ts;
        CREATE INDEX samples_received ON samples (received_ms);
        """,
    ),
    (
        # Messages that were rejected or could not be stored: acknowledged (so the broker
        # stops redelivering them) and kept here, bounded, for `collector query --rejected`.
        "0004_quarantine",
        """
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            received_ms INTEGER NOT NULL,
            node TEXT,                    -- from the topic, when it names one
            topic TEXT NOT NULL,          -- at most 256 characters
            reason TEXT NOT NULL,         -- counter name without rejected_: invalid, clock_skew...
            detail TEXT NOT NULL,         -- at most 300 characters
            payload_head BLOB NOT NULL,   -- the first 256 bytes
            payload_bytes INTEGER NOT NULL
        );
        CREATE INDEX quarantine_node ON quarantine (node, id);
        """,
    ),
    (
        # Rejects per node and reason, summed over collector restarts (clock skew and
        # rising rejects are per-node alerts), and small facts the collector must remember.
        "0005_node_rejects_and_meta",
        """
        CREATE TABLE node_rejects (
            node TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            last_ms INTEGER NOT NULL,
            PRIMARY KEY (node, reason)
        ) WITHOUT ROWID;
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated REAL NOT NULL
        );
        """,
    ),
    (
        # Alerts: the pending and firing ones (so a restarted collector neither forgets nor
        # re-announces them) and every state change (history).
        "0006_alerts",
        """
        CREATE TABLE alerts (
            fingerprint TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            labels TEXT NOT NULL,         -- JSON object
            annotations TEXT NOT NULL,    -- JSON object
            state TEXT NOT NULL,          -- pending | firing
            active_at REAL NOT NULL,      -- the condition holds since
            starts_at REAL,               -- firing since
            updated REAL NOT NULL
        );
        CREATE TABLE alert_history (
            id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            rule TEXT NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            previous TEXT NOT NULL,
            state TEXT NOT NULL,          -- firing | resolved (0028: no longer pending, inactive)
            at REAL NOT NULL,
            starts_at REAL,
            ends_at REAL
        );
        CREATE INDEX alert_history_at ON alert_history (at);
        """,
    ),
    (
        # Webhook notifications, written in the transaction that records the alert change, so
        # a crash between the two can neither lose a notification nor invent one. Only the
        # writer updates them (delivery outcomes come back to it on its queue), except
        # `collector alerts --redeliver`, which turns a dead letter back to pending.
        "0007_outbox",
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,    -- the Idempotency-Key: the same on every attempt
            receiver TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            rule TEXT NOT NULL,
            status TEXT NOT NULL,         -- firing | resolved (the body's status)
            body TEXT NOT NULL,           -- Alertmanager webhook JSON, version 4
            created REAL NOT NULL,        -- the alert change's time
            expires_at REAL NOT NULL,     -- created + the receiver's max_age_s: then dead
            state TEXT NOT NULL,          -- pending | delivered | dead
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,        -- pending: not before then
            last_status INTEGER,          -- HTTP status of the last attempt (NULL: none)
            last_error TEXT,              -- why the last attempt failed
            response_head TEXT,           -- first bytes of the last response
            done_at REAL,                 -- delivered or dead since
            redeliveries INTEGER NOT NULL DEFAULT 0  -- times `--redeliver` revived it
        );
        CREATE INDEX outbox_state ON outbox (state, id);
        """,
    ),
    (
        # Grouping and silences: what was last notified per alert group (so a restarted
        # collector does not notify it again; written by the writer with the outbox rows),
        # and silences (written by `collector silence add|expire`, read by the collector at
        # every evaluation).
        "0008_groups_and_silences",
        """
        CREATE TABLE alert_groups (
            group_key TEXT PRIMARY KEY,   -- groupKey + " -> " + the route's receivers
            firing TEXT NOT NULL,         -- JSON list of fingerprints last notified firing
            resolved TEXT NOT NULL,       -- ... and resolved
            notified_at REAL NOT NULL
        );
        CREATE TABLE silences (
            id INTEGER PRIMARY KEY,
            matchers TEXT NOT NULL,       -- JSON list of "name=value" / "name=~regex" ...
            starts_at REAL NOT NULL,
            ends_at REAL NOT NULL,        -- `expire` sets it to now
            comment TEXT NOT NULL,
            author TEXT NOT NULL,
            created REAL NOT NULL
        );
        CREATE INDEX silences_ends ON silences (ends_at);
        """,
    ),
    (
        # Pools: named sets of nodes (a tenant's share, a partition). A node is in at most one
        # pool (the primary key); a node in none is in the implicit pool ``free``. Leases and
        # quotas refer to pools by name.
        "0009_pools",
        """
        CREATE TABLE pools (
            name TEXT PRIMARY KEY,
            created REAL NOT NULL,
            comment TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE pool_nodes (
            node TEXT PRIMARY KEY,
            pool TEXT NOT NULL REFERENCES pools (name)
        );
        CREATE INDEX pool_nodes_pool ON pool_nodes (pool);
        """,
    ),
    (
        # Inventories declared for nodes that run no agent yet (`collector inventory import`;
        # an agent's own in `nodes` wins), and every pool move with the command that made it.
        "0010_inventory_and_pools",
        """
        CREATE TABLE declared_inventories (
            node TEXT PRIMARY KEY,
            inventory BLOB NOT NULL,      -- JSON in the inventory topic's shape, validated
            declared REAL NOT NULL
        );
        CREATE TABLE pool_moves (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            node TEXT NOT NULL,
            from_pool TEXT NOT NULL,      -- 'free' for no pool
            to_pool TEXT NOT NULL,
            reason TEXT NOT NULL          -- the command: 'apply zinal:a100:4', 'add', ...
        );
        """,
    ),
    (
        # Capacity snapshots: the live power picture every capacity cycle (written by the
        # collector's capacity job when a site plan is configured), kept for
        # `collector capacity` and `collector plot capacity`; summary columns for plots and
        # alerts, the whole picture as JSON in `detail`.
        "0011_capacity_snapshots",
        """
        CREATE TABLE capacity_snapshots (
            at REAL NOT NULL,             -- collector clock, Unix seconds
            cap_w REAL NOT NULL,          -- the IT budget
            it_w REAL NOT NULL,           -- live IT draw (nodes + fabric)
            facility_w REAL,              -- it_w x PUE, when the plan has a PUE
            headroom_w REAL NOT NULL,
            worst_it_w REAL NOT NULL,     -- every node at nameplate
            nodes INTEGER NOT NULL,
            stale_nodes INTEGER NOT NULL, -- counted on the stale basis (nameplate by default)
            unmatched_nodes INTEGER NOT NULL,
            clamped_nodes INTEGER NOT NULL,
            binding TEXT,
            detail TEXT NOT NULL          -- the whole picture, JSON
        );
        CREATE INDEX capacity_snapshots_at ON capacity_snapshots (at);
        """,
    ),
    (
        # Tenants, cohorts and quotas (Kueue's semantics), and leases of pools or nodes to
        # tenants. Written by `collector lease|quota|apply` (collector/store/governance.py),
        # which bump meta `governance_generation` in the same transaction: the collector
        # reloads the whole state when it changes. Lease dates are calendar dates in the
        # lease's zone; start_at/end_at are their instants, kept for overlap queries.
        "0012_leases_and_quotas",
        """
        CREATE TABLE cohorts (
            name TEXT PRIMARY KEY,
            comment TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        );
        CREATE TABLE cohort_quotas (
            cohort TEXT NOT NULL REFERENCES cohorts (name),
            resource TEXT NOT NULL,       -- gpus | power_kw | gpu_hours
            nominal REAL NOT NULL,        -- the cohort's own quota, shared by its tenants
            PRIMARY KEY (cohort, resource)
        ) WITHOUT ROWID;
        CREATE TABLE tenants (
            name TEXT PRIMARY KEY,
            cohort TEXT REFERENCES cohorts (name),
            priority INTEGER NOT NULL DEFAULT 0,
            comment TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        );
        CREATE TABLE quotas (
            tenant TEXT NOT NULL REFERENCES tenants (name),
            resource TEXT NOT NULL,       -- gpus | power_kw | gpu_hours
            nominal REAL NOT NULL,
            borrowing_limit REAL,         -- NULL: unbounded
            lending_limit REAL,           -- NULL: lends all it does not use
            period TEXT,                  -- gpu_hours: day | week | month (calendar, UTC)
            PRIMARY KEY (tenant, resource)
        ) WITHOUT ROWID;
        CREATE TABLE leases (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL REFERENCES tenants (name),
            pool TEXT,                    -- the pool leased; NULL: named nodes
            start TEXT NOT NULL,          -- YYYY-MM-DD in tz
            duration_days INTEGER NOT NULL DEFAULT 180,
            term_days INTEGER,            -- one renewal term (NULL: the first duration)
            notice_days INTEGER NOT NULL DEFAULT 0,
            min_days INTEGER NOT NULL DEFAULT 0,  -- contractual minimum from start
            tz TEXT NOT NULL DEFAULT 'UTC',
            auto_renew INTEGER NOT NULL DEFAULT 0,
            notice_given_at TEXT,         -- YYYY-MM-DD in tz: when notice was given
            notice_recorded REAL,         -- when `lease cancel` recorded it
            forced INTEGER NOT NULL DEFAULT 0,  -- added beyond the tenant's quota (--force)
            force_reason TEXT,
            start_at REAL NOT NULL,       -- instants of start and effective end
            end_at REAL,                  -- NULL: renewing without notice (open-ended)
            comment TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE INDEX leases_tenant ON leases (tenant);
        CREATE TABLE lease_nodes (
            lease_id INTEGER NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
            node TEXT NOT NULL,
            PRIMARY KEY (node, lease_id)
        ) WITHOUT ROWID;
        CREATE INDEX lease_nodes_lease ON lease_nodes (lease_id);
        """,
    ),
    (
        # The agent's boot counter: seq restarts at 0 with each epoch, so a gap is a jump in
        # seq within one (node, epoch). NULL: an agent before the field.
        "0013_samples_epoch",
        "ALTER TABLE samples ADD COLUMN epoch INTEGER;",
    ),
    (
        # A notice period in calendar months, kept as written: months count back from a
        # term's end, so they cannot be converted to days once at the start. 0: in days.
        "0014_lease_notice_months",
        "ALTER TABLE leases ADD COLUMN notice_months INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        # Hierarchical cohorts (Kueue KEP-79): a cohort's parent, and its own borrowing and
        # lending limits towards that parent (NULL: unbounded).
        "0015_cohort_tree",
        """
        ALTER TABLE cohorts ADD COLUMN parent TEXT;
        ALTER TABLE cohort_quotas ADD COLUMN borrowing_limit REAL;
        ALTER TABLE cohort_quotas ADD COLUMN lending_limit REAL;
        """,
    ),
    (
        # The node's input power as its BMC or PSU sensors read it, and which one
        # (Sample.node_power_w/node_power_source). NULL: not reported.
        "0016_samples_node_power",
        """
        ALTER TABLE samples ADD COLUMN node_power_w REAL;
        ALTER TABLE samples ADD COLUMN node_power_source TEXT;
        """,
    ),
    (
        # Rollups (collector/store/rollups.py): per node and per GPU, 1-minute (res 60) and
        # 1-hour (res 3600) aggregates of the samples stamped in each bucket (node clock),
        # from the rows that were new (a duplicate adds nothing): staged in the batch's
        # transaction (rollup_pending*), folded in every few seconds. Sums and counts, so a
        # mean is sum / count and a bucket merges by addition; min/max by comparison. Kept
        # per resolution (rollups.retention_1m_s / retention_1h_s), deleted by bucket
        # through *_res_bucket.
        # The usage ledger (collector/store/ledger.py): per hour, per node and per lease
        # that held it, recomputed from the 1-hour rollups and the leases; ledger_dirty
        # names the hours whose rollups moved since (n counts the batches: a recompute
        # clears an hour only if no batch touched it meanwhile).
        "0017_rollups_and_ledger",
        """
        CREATE TABLE rollups (
            node TEXT NOT NULL,
            res INTEGER NOT NULL,          -- 60 | 3600 seconds
            bucket INTEGER NOT NULL,       -- start, Unix seconds (the samples' own clock)
            samples INTEGER NOT NULL,
            seconds REAL NOT NULL,         -- sum of the samples' intervals
            gpus INTEGER NOT NULL,         -- most GPUs in one sample
            gpu_s REAL NOT NULL,           -- sum of GPUs x interval (GPU-seconds reported)
            util_gpu_s REAL NOT NULL,      -- sum of GPUs x mean utilisation x interval
            busy_gpu_s REAL NOT NULL,      -- sum of busy GPUs x interval (busy_util_pct then)
            util_n INTEGER NOT NULL, util_sum REAL NOT NULL, util_min REAL, util_max REAL,
            power_n INTEGER NOT NULL, power_sum REAL NOT NULL, power_min REAL, power_max REAL,
            temp_max REAL,                 -- hottest GPU
            mem_n INTEGER NOT NULL, mem_sum REAL NOT NULL, mem_min REAL, mem_max REAL,
            gpu_energy_j REAL NOT NULL,
            cpu_n INTEGER NOT NULL, cpu_sum REAL NOT NULL, cpu_min REAL, cpu_max REAL,
            cpu_energy_j REAL NOT NULL,
            PRIMARY KEY (node, res, bucket)
        ) WITHOUT ROWID;
        CREATE INDEX rollups_res_bucket ON rollups (res, bucket);
        CREATE TABLE gpu_rollups (
            node TEXT NOT NULL,
            res INTEGER NOT NULL,
            bucket INTEGER NOT NULL,
            gpu INTEGER NOT NULL,          -- the GPU's index on its node
            samples INTEGER NOT NULL,
            seconds REAL NOT NULL,
            util_n INTEGER NOT NULL, util_sum REAL NOT NULL, util_min REAL, util_max REAL,
            power_n INTEGER NOT NULL, power_sum REAL NOT NULL, power_min REAL, power_max REAL,
            temp_n INTEGER NOT NULL, temp_sum REAL NOT NULL, temp_min REAL, temp_max REAL,
            mem_n INTEGER NOT NULL, mem_sum REAL NOT NULL, mem_min REAL, mem_max REAL,
            energy_j REAL NOT NULL,
            PRIMARY KEY (node, res, bucket, gpu)
        ) WITHOUT ROWID;
        CREATE INDEX gpu_rollups_res_bucket ON gpu_rollups (res, bucket);
        -- What the writer's batches stored and the rollups do not hold yet: one row per new
        -- sample (and one per GPU), appended in the batch's transaction, folded into the
        -- rollups and deleted in one transaction every few seconds.
        CREATE TABLE rollup_pending (
            node TEXT NOT NULL,
            ts_ms INTEGER NOT NULL,
            interval_s REAL NOT NULL,
            gpus INTEGER NOT NULL,
            util REAL,                     -- mean GPU utilisation
            busy INTEGER NOT NULL,         -- GPUs at or above busy_util_pct
            power REAL,                    -- GPU power, all GPUs
            temp_max REAL,
            mem REAL,                      -- GPU memory used, all GPUs
            cpu REAL                       -- CPU package power (RAPL)
        );
        CREATE TABLE rollup_pending_gpu (
            node TEXT NOT NULL,
            ts_ms INTEGER NOT NULL,
            interval_s REAL NOT NULL,
            gpu INTEGER NOT NULL,
            util REAL,
            power REAL,
            temp REAL,
            mem REAL
        );
        CREATE TABLE usage_ledger (
            hour INTEGER NOT NULL,         -- start, Unix seconds (UTC hours)
            node TEXT NOT NULL,
            lease TEXT NOT NULL,           -- '' when no lease held the node
            tenant TEXT,                   -- NULL when no lease held the node
            pool TEXT NOT NULL,            -- the lease's pool, else the node's, else 'free'
            gpus INTEGER NOT NULL,         -- GPUs of the node (inventory, else samples)
            held_h REAL NOT NULL,          -- hours of this hour the lease held the node
            allocated_gpu_h REAL NOT NULL,
            busy_gpu_h REAL NOT NULL,
            used_gpu_h REAL NOT NULL,      -- utilisation-weighted GPU-hours
            reported_gpu_h REAL NOT NULL,  -- GPU-hours the node's samples covered
            gpu_kwh REAL NOT NULL,
            cpu_kwh REAL NOT NULL,
            node_kwh REAL,
            node_kwh_basis TEXT NOT NULL,  -- measured | model | gpu+cpu
            computed REAL NOT NULL,
            PRIMARY KEY (hour, node, lease)
        ) WITHOUT ROWID;
        CREATE INDEX usage_ledger_tenant ON usage_ledger (tenant, hour);
        CREATE TABLE ledger_dirty (
            hour INTEGER PRIMARY KEY,
            n INTEGER NOT NULL
        );
        """,
    ),
    (
        # Per node, what the collector last told the agent its store holds (the watermark):
        # read back at start, so a restarted collector goes on from the store's truth.
        "0018_watermarks",
        """
        CREATE TABLE watermarks (
            node TEXT PRIMARY KEY,
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,     -- every seq of epoch up to this one is stored
            top INTEGER NOT NULL,     -- the highest seq of epoch stored
            ts_ms INTEGER NOT NULL      -- its newest sample's time (node clock)
        );
        """,
    ),
    (
        # Rollups folded in bulk (collector/store/partials.py): a batch's new samples are
        # staged as one row (rollup_stage.body, columns packed), folded about once a minute
        # into one row per node and bucket; each GPU's statistics are packed into its node's
        # row (gpu_stats: float32 records) instead of a row per GPU, so gpu_rollups goes
        # (the per-GPU history rolled up before this version with it; the node rows stay).
        # The staged rows of the version before are dropped too: a clean stop folds them,
        # a crash just before the upgrade loses those few seconds from the rollups (the
        # samples themselves are kept). node_*: the node's input power (BMC/PSUs) where
        # reported, node_s the seconds it covered, node_energy_j power x interval.
        "0019_rollups_packed",
        """
        DROP TABLE gpu_rollups;
        DROP TABLE rollup_pending;
        DROP TABLE rollup_pending_gpu;
        CREATE TABLE rollup_stage (body BLOB NOT NULL);
        ALTER TABLE rollups ADD COLUMN node_n INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollups ADD COLUMN node_sum REAL NOT NULL DEFAULT 0;
        ALTER TABLE rollups ADD COLUMN node_max REAL;
        ALTER TABLE rollups ADD COLUMN node_s REAL NOT NULL DEFAULT 0;
        ALTER TABLE rollups ADD COLUMN node_energy_j REAL NOT NULL DEFAULT 0;
        ALTER TABLE rollups ADD COLUMN gpu_stats BLOB;
        -- The usage ledger summed per UTC day, lease and pool (collector/store/ledger.py):
        -- kept with the hourly rows (each hour rewritten takes its old rows' sums out and
        -- puts its new ones in, in the same transaction), so a month is ~30 rows per
        -- lease, not 720 per node. n: the hourly rows it sums (0: none left, deleted).
        CREATE TABLE usage_daily (
            day INTEGER NOT NULL,          -- days since 1970-01-01 (UTC)
            lease TEXT NOT NULL,
            pool TEXT NOT NULL,
            tenant TEXT,
            n INTEGER NOT NULL,
            allocated_gpu_h REAL NOT NULL, busy_gpu_h REAL NOT NULL, used_gpu_h REAL NOT NULL,
            reported_gpu_h REAL NOT NULL, gpu_kwh REAL NOT NULL, cpu_kwh REAL NOT NULL,
            node_kwh REAL NOT NULL, held_h REAL NOT NULL,
            model_n INTEGER NOT NULL, parts_n INTEGER NOT NULL, measured_n INTEGER NOT NULL,
            PRIMARY KEY (day, lease, pool)
        ) WITHOUT ROWID;
        CREATE INDEX usage_daily_tenant ON usage_daily (tenant, day);
        INSERT INTO usage_daily
        SELECT hour / 86400, lease, pool, max(tenant), count(*), sum(allocated_gpu_h),
            sum(busy_gpu_h), sum(used_gpu_h), sum(reported_gpu_h), sum(gpu_kwh), sum(cpu_kwh),
            coalesce(sum(node_kwh), 0), sum(held_h),
            sum(CASE WHEN node_kwh_basis LIKE '%model' THEN 1 ELSE 0 END),
            sum(CASE WHEN node_kwh_basis LIKE '%gpu+cpu' THEN 1 ELSE 0 END),
            sum(CASE WHEN node_kwh_basis LIKE 'measured%' THEN 1 ELSE 0 END)
        FROM usage_ledger GROUP BY hour / 86400, lease, pool;
        """,
    ),
    (
        # The newest reading polled out of band (collector/store/power.py): a node's input
        # power from its BMC (scope 'node'), a rack's from its PDUs (scope 'rack'), so that
        # commands recomputing from the store (capacity --now, --explain) count them too.
        # received: collector clock (s); interval_s: the poll interval (freshness).
        "0020_polled_power",
        """
        CREATE TABLE polled_power (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            watts REAL NOT NULL,
            source TEXT NOT NULL,
            received REAL NOT NULL,
            interval_s REAL NOT NULL,
            PRIMARY KEY (scope, name)
        ) WITHOUT ROWID;
        """,
    ),
    (
        # Several collectors write one PostgreSQL store (a share group): each stages its
        # own batches and folds only those (a collector that started while another had
        # samples staged folded them too, counting them twice; a fold emptied the others'
        # staged rows, so a member that crashed then lost them from the rollups). owner:
        # the collector's MQTT session client id, stable across its restarts; '' (rows
        # staged before this version) is taken by the first collector that opens the store.
        "0021_rollup_stage_owner",
        """
        ALTER TABLE rollup_stage ADD COLUMN owner TEXT NOT NULL DEFAULT '';
        CREATE INDEX rollup_stage_owner ON rollup_stage (owner);
        """,
    ),
    (
        # The leader's lease (PostgreSQL: its text is in POSTGRESQL). Created on the
        # election's first use before, two collectors starting together raced on it (one
        # failed an election with a duplicate pg_type row); here it is made under the
        # migrations' lock. Nothing on SQLite: one collector per file, no election.
        "0022_leader_lease",
        "-- PostgreSQL only",
    ),
    (
        # Payloads are packed by the wire schema's layout before compression
        # (collector/store/codec.py): each codec row keeps the layout its payloads were
        # packed by, so a later schema still reads them. NULL: its payloads are the
        # sample's JSON (every row before this).
        "0023_payload_layout",
        "ALTER TABLE payload_dicts ADD COLUMN layout TEXT;",
    ),
    (
        # A share group's member that never comes back left its staged rollup rows
        # unfolded for good. rollup_owners: each owner's last fold (or start), Unix s; a
        # fold takes over the staged rows of an owner that has not folded for
        # rollups.takeover_after_s (collector/store/rollups.py). seq numbers an owner's
        # staged batches, so one whose rows were taken over while it was still running
        # folds only those it still owns (0: staged before this version).
        "0024_rollup_owners",
        """
        ALTER TABLE rollup_stage ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE rollup_owners (
            owner TEXT PRIMARY KEY,
            folded REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        # The rollups' fold in short transactions (collector/store/fold.py): a batch's new
        # samples are staged in shards by node (a row per shard present), and a fold writes
        # one shard's buckets and deletes its rows in each transaction. Rows staged before
        # this version are shard 0. The index serves a part's reads and deletes; the one on
        # owner alone is its prefix.
        "0025_rollup_stage_shard",
        """
        ALTER TABLE rollup_stage ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
        DROP INDEX rollup_stage_owner;
        CREATE INDEX rollup_stage_shard ON rollup_stage (owner, shard, seq);
        """,
    ),
    (
        # A lease's membership history: each node that joined or left a lease after its
        # creation (collector lease/apply, a pool lease following its pool), written in
        # the transaction that changed lease_nodes. The usage ledger and `collector usage`
        # attribute each instant to the lease that held the node then
        # (collector/store/ledger.py LeaseHistory). Before: only the nodes held now.
        "0026_lease_moves",
        """
        CREATE TABLE lease_moves (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            lease_id INTEGER NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
            node TEXT NOT NULL,
            joined INTEGER NOT NULL       -- 1: joined the lease at ts, 0: left it
        );
        CREATE INDEX lease_moves_ts ON lease_moves (ts);
        """,
    ),
    (
        # Per-node templates of the sample payloads (collector/store/codec.py): what a
        # node sends alike in every sample (its name, GPU UUIDs, NIC and filesystem names,
        # totals), stored once and named by id at the start of each compressed payload of
        # a codec whose layout is version 2. sha256: the body read by that layout.
        # used_ms: the latest arrival (received_ms) of a sample stored with it, as its
        # collectors last wrote it back; retention deletes the templates no stored sample
        # can still name (collector/store/db.py Store.delete_unused_templates).
        "0027_payload_templates",
        """
        CREATE TABLE payload_templates (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            body BLOB NOT NULL,
            used_ms INTEGER NOT NULL
        );
        CREATE INDEX payload_templates_used ON payload_templates (used_ms);
        """,
    ),
    (
        # A rollup bucket is held to its length, or its longest interval where that is
        # longer (collector/store/partials.py): where a node's samples reported more
        # seconds, its sums over time are scaled to it. reported_s keeps what they
        # reported (the sum of their intervals; seconds is what the bucket holds) and
        # longest_s the longest of them, so the next fold merges the bucket as reported
        # and an operator sees the node that over-reports. NULL: a bucket written
        # before, never held (read as its seconds and its length).
        "0028_rollups_reported",
        """
        ALTER TABLE rollups ADD COLUMN reported_s REAL;
        ALTER TABLE rollups ADD COLUMN longest_s REAL;
        """,
    ),
    (
        # alert_history keeps what fired and its resolution (collector/store/alerts.py
        # HISTORY_STATES); the pending and inactive rows of earlier versions go now, not
        # over the 30 days of retention.
        "0029_alert_history_fired",
        """
        DELETE FROM alert_history WHERE state NOT IN ('firing', 'resolved');
        """,
    ),
    (
        # A node's newest sample is the newest by the agent's (epoch, seq), as the live view
        # holds it, not the newest by the node's clock (collector/store/queries.py
        # latest_sample). top_ts_ms: the time of the sample at top (node clock), so a read
        # finds it through the (node, ts_ms) index; seen_ts_ms: the newest time of any
        # sample the watermark has taken in, every epoch (a sample stamped later is newer
        # than the watermark). NULL: written before, read as no watermark (newest by time).
        # (Not rebuilt WITHOUT ROWID: the reads' lookups were ~1 ms cheaper at 12,500 nodes,
        # each watermark round's upserts ~1.2 ms dearer, and the writer is the one that
        # runs all the time.)
        "0030_watermarks_newest",
        """
        ALTER TABLE watermarks ADD COLUMN top_ts_ms INTEGER;
        ALTER TABLE watermarks ADD COLUMN seen_ts_ms INTEGER;
        """,
    ),
    (
        # Every alert write deletes the delivered and dead notifications done before the
        # history's keep (collector/store/alerts.py OUTBOX_PRUNE_SQL): by done_at, which
        # (state, id) cannot find (state != 'pending' is no range of it), so each read the
        # whole outbox. Pending rows have no done_at (NULL): never in the range.
        "0031_outbox_done",
        "CREATE INDEX outbox_done ON outbox (done_at);",
    ),
    (
        # Nodes an operator decommissioned (`collector inventory forget`, collector/store/
        # forget.py), written in the command's transaction that deleted their node-level
        # rows: a running collector reads the rows past the last id it saw and stops
        # tracking those nodes (live view, watermarks). Commands take the write lock, so ids
        # grow in commit order. Kept as the record of who was forgotten when.
        "0032_forgotten_nodes",
        """
        CREATE TABLE forgotten_nodes (
            id INTEGER PRIMARY KEY,
            node TEXT NOT NULL,
            at REAL NOT NULL,             -- the command's time (Unix s)
            forced INTEGER NOT NULL DEFAULT 0  -- 1: it was online or had just sampled (--force)
        );
        """,
    ),
    (
        # Text compares as bytes on PostgreSQL too, as on SQLite (BINARY) and in Python: see
        # BYTES_ORDER. SQLite has nothing to change.
        BYTES_ORDER,
        "-- SQLite compares text as bytes (the BINARY collation) already.",
    ),
)


POSTGRESQL: Final[dict[str, str]] = {
    # samples: range-partitioned by day on the sample's own time (collector/store/pgdays.py
    # creates the partitions). The unique (node, ts_ms) key drops redelivered samples; a
    # unique index of a partitioned table must hold the partition key, which this one does.
    # No foreign key to payload_dicts: it would cost a lookup per row, and SQLite does not
    # enforce it either.
    "0001_initial": """
        CREATE TABLE samples (
            node TEXT NOT NULL,
            ts_ms BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            received_ms BIGINT NOT NULL,
            interval_s DOUBLE PRECISION NOT NULL,
            cpu_pct DOUBLE PRECISION,
            mem_used_bytes BIGINT NOT NULL,
            mem_total_bytes BIGINT NOT NULL,
            gpu_count BIGINT NOT NULL,
            gpu_util_pct DOUBLE PRECISION,
            gpu_mem_used_bytes BIGINT,
            gpu_power_w DOUBLE PRECISION,
            cpu_power_w DOUBLE PRECISION,
            payload BYTEA NOT NULL,
            payload_dict BIGINT  -- NULL: stored uncompressed
        ) PARTITION BY RANGE (ts_ms);
        CREATE TABLE payload_dicts (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            dict BYTEA NOT NULL
        );
        CREATE UNIQUE INDEX samples_node_ts ON samples (node, ts_ms);
        CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            status TEXT,
            status_ts DOUBLE PRECISION,
            inventory BYTEA,
            inventory_ts DOUBLE PRECISION
        );
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        );
        """,
    "0022_leader_lease": LEADER_TABLE_SQL + ";",
    # Every text column of the store's tables (this schema's; a partitioned table's
    # partitions follow it) but the growing ones takes the C collation: ALTER ... TYPE text
    # COLLATE "C" keeps the rows as they are and rebuilds the indexes on those columns.
    BYTES_ORDER: """
        DO $$
        DECLARE c record;
        BEGIN
            FOR c IN
                SELECT a.attrelid::regclass AS tab,
                       string_agg(format('ALTER COLUMN %I TYPE text COLLATE "C"', a.attname),
                                  ', ' ORDER BY a.attnum) AS cols
                FROM pg_attribute a
                JOIN pg_class r ON r.oid = a.attrelid
                WHERE r.relnamespace = current_schema()::regnamespace
                  AND r.relkind IN ('r', 'p') AND NOT r.relispartition
                  AND r.relname NOT IN (<growing>)
                  AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'text'::regtype
                  AND a.attcollation <> '"C"'::regcollation
                GROUP BY a.attrelid
                ORDER BY a.attrelid
            LOOP
                EXECUTE format('ALTER TABLE %s %s', c.tab, c.cols);
            END LOOP;
        END
        $$;
        """.replace("<growing>", ", ".join(f"'{t}'" for t in GROWING_TABLES)),
}
"""PostgreSQL's own text of the migrations whose schema differs there (by name)."""

_PG_TYPES: Final = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID\s*;"), ");"),
)


def pg_ddl(sqlite: str) -> str:
    """SQLite DDL in PostgreSQL's types: 64-bit ``BIGINT`` for SQLite's ``INTEGER`` (which is
    64-bit), ``DOUBLE PRECISION`` for ``REAL``, ``BYTEA`` for ``BLOB``, an identity column
    for ``INTEGER PRIMARY KEY`` (SQLite's rowid alias), no ``WITHOUT ROWID``."""
    text = sqlite
    for pattern, replacement in _PG_TYPES:
        text = pattern.sub(replacement, text)
    return text


_PG_TEXT_AS_BYTES: Final = re.compile(r"(?<![:(])(?<!\bAS )\bTEXT\b(?!\s+COLLATE\b)")
"""A column's ``TEXT`` in SQLite's DDL (not a cast's), which PostgreSQL's takes as
``TEXT COLLATE "C"`` from :data:`BYTES_ORDER` on."""


def _pg_text_as_bytes(ddl: str) -> str:
    return _PG_TEXT_AS_BYTES.sub('TEXT COLLATE "C"', ddl)


def migrations_for(
    dialect: Dialect, migrations: Sequence[tuple[str, str]] = MIGRATIONS
) -> list[tuple[str, str]]:
    """Every migration's (name, SQL) for ``dialect``, in order (``migrations``: SQLite's,
    :data:`MIGRATIONS`). PostgreSQL's: from :data:`BYTES_ORDER` on, a column's ``TEXT``
    takes the ``C`` collation (that migration gave it to the columns before; their texts
    stay as they were applied)."""
    if dialect == "sqlite":
        return list(migrations)
    out: list[tuple[str, str]] = []
    as_bytes = False
    for name, sql in migrations:
        text = POSTGRESQL.get(name) or pg_ddl(sql)
        out.append((name, _pg_text_as_bytes(text) if as_bytes else text))
        as_bytes = as_bytes or name == BYTES_ORDER
    return out


def refuse_newer(
    path: StoreTarget,
    done: Collection[str],
    migrations: Sequence[tuple[str, str]] = MIGRATIONS,
) -> None:
    """:class:`~shared.errors.StoreError` (exit 2) if the store at ``path``, whose record
    holds the migrations ``done``, was migrated by a newer capwatch: one of them is not in
    ``migrations``. The collector's start (both backends), every write command and
    ``collector migrate``'s source ask. A record with names unknown here but without
    capwatch's first migration is another program's ``schema_migrations`` (a common name):
    not a capwatch database, not a newer one."""
    known = {name for name, _ in migrations}
    unknown = sorted(name for name in done if name not in known)
    if unknown:
        if migrations[0][0] not in done:
            raise not_capwatch(path)
        raise newer_schema(path, unknown)


NEWEST_MIGRATION_SQL: Final = "SELECT max(name) FROM schema_migrations"
"""The record's greatest migration name: what a running collector asks (:func:`refuse_newest`)."""

SCHEMA_CHECK_S: Final = 5.0
"""How often a running collector asks whether another capwatch migrated its store since
its start (:func:`refuse_newest`; one indexed ``max()`` on a table of a few dozen rows)."""


def refuse_newest(
    path: StoreTarget, newest: str | None, migrations: Sequence[tuple[str, str]] = MIGRATIONS
) -> None:
    """:func:`refuse_newer` for a collector already running, whose start found the store
    migrated by this version or an older one: the same error (exit 2) when the record's
    greatest name (``newest``, :data:`NEWEST_MIGRATION_SQL`) sorts after this version's last
    migration. A newer capwatch migrating the store meanwhile (an upgrade started beside this
    one, or a failover to a primary it migrated) adds such a name: migration names are
    numbered, so one added later sorts after every earlier one. Asked every
    :data:`SCHEMA_CHECK_S` and at each reconnect to PostgreSQL, so this collector stops
    instead of writing on by the older schema's rules."""
    if newest is not None and newest > migrations[-1][0]:
        raise newer_schema(path, [newest])
