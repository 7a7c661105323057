"""The store layer: every connection, transaction and SQL statement of the collector.

Nothing above this package writes SQL; it calls the functions of the table modules
(``alerts``, ``capacity``, ``governance``, ``pools``, ``queries``, ``series``, ``silences``,
``outbox``, ``usage``, ``health``, ``watermarks``, ``power``) with one of three handles. A second
backend (PostgreSQL) implements these same handles and, where its dialect differs, its own
SQL for the modules:

* **Opening** (:mod:`~collector.store.connect`): ``open_sync(path, write=)`` for commands,
  ``open_async(path, write=, synchronous=)`` for the collector; every opening error is one
  :class:`~shared.errors.StoreError` built in :mod:`~collector.store.errors` (``missing``,
  ``not_capwatch``, ``open_failed``, ``refused``), for both backends.
* **Store** (:mod:`~collector.store.db`, async context manager; the writer's connection, or
  ``Store.open_readonly``): ``transaction(what)`` (commit or roll back into a ``StoreError``
  whose ``fatal`` tells a broken store from a refused batch) and, inside it, ``execute``
  (rows changed), ``execute_returning``, ``executemany``, ``insert_many(statement, rows)``,
  a round trip to the store's thread each; ``transact(what, work)``: a whole transaction as
  one function in that thread, its statements on a :class:`~collector.store.writes.Tx` (a
  sample batch, a rollup fold's part: one round trip);
  reads ``fetchall(sql, params)`` and ``await run(query)``; the writer's own operations
  ``write_batch``, ``write_counters`` (with the quarantine's and node rejects' trims),
  ``delete_older_than``, ``meta``, ``migrations``. The modules it imports (the ledger, the
  rollups' fold) take it as a :class:`~collector.store.writes.Writes`, a protocol.
* **StoreReader** (:mod:`~collector.store.reader`, context manager; a command's read-only
  snapshot): ``fetchall``, ``run(query)``, ``has_table``, ``counters``, ``payload``.
* **Command** (:mod:`~collector.store.command`, context manager; a command's one write
  transaction): ``execute``, ``executemany``, ``fetchall``, ``run(query)``, ``has_table``,
  ``discard``, ``bump_generation``; the write lock held at most ``LOCK_BUDGET_S``. Its domain
  methods: ``tx.governance`` (tenants, cohorts, quotas, leases) and ``tx.pools`` (pools and
  their moves, declared inventories), written in the table modules against the protocols of
  :mod:`~collector.store.statements`.
* **Queries** (:mod:`~collector.store.query`): a read is a ``Query`` (statements + the function
  their rows become), written once and run by any of the three handles.

Two backends behind those handles: a SQLite file (a :class:`pathlib.Path`) and PostgreSQL (a
:class:`~collector.paths.PgTarget`, ``--db postgresql://...``), chosen where the connection is
made (:func:`~collector.store.connect.open_sync`, :class:`~collector.store.db.Store`). The
table modules write one SQL text for both (``?`` placeholders, rewritten for psycopg by
:func:`~collector.store.dialect.pg_sql`; ``ON CONFLICT``; no ``rowid``, ``total()`` or scalar
``max``); rows read by index or name on both (:class:`~collector.store.dialect.Row`).
What only one backend does lives in its class: SQLite's file identity check, WAL and
``synchronous``, the bound-variable limit (:mod:`collector.store.db`); PostgreSQL's COPY,
day partitions, advisory locks, error classes and reconnects (:mod:`collector.store.pg`,
:mod:`collector.store.pgconn`, :mod:`collector.store.pgdays`).
The migrations are one list (:func:`~collector.store.migrations.migrations_for`).

Imports nothing itself, so that a read command can load :mod:`collector.store.reader`
without the writer's dependencies (aiosqlite, zstandard) or psycopg.
"""
