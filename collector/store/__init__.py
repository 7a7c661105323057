"""The store layer: every connection, transaction and SQL statement of the collector.

Nothing above this package writes SQL; it calls the functions of the table modules
(``alerts``, ``capacity``, ``governance``, ``pools``, ``queries``, ``series``, ``silences``,
``outbox``, ``usage``, ``health``, ``watermarks``) with one of three handles. A second
backend (PostgreSQL) implements these same handles and, where its dialect differs, its own
SQL for the modules:

* **Opening** (:mod:`~collector.store.connect`): ``open_sync(path, write=)`` for commands,
  ``open_async(path, write=, synchronous=)`` for the collector; every opening error is one
  :class:`~shared.errors.StoreError` built there (``missing``, ``not_capwatch``,
  ``open_failed``, ``refused``).
* **Store** (:mod:`~collector.store.db`, async context manager; the writer's connection, or
  ``Store.open_readonly``): ``transaction(what)`` (commit or roll back into a ``StoreError``
  whose ``fatal`` tells a broken store from a refused batch) and, inside it, ``execute``
  (rows changed), ``execute_returning``, ``executemany``, ``insert_many(statement, rows)``;
  reads ``fetchall(sql, params)`` and ``await run(query)``; the writer's own operations
  ``write_batch``, ``write_counters``, ``delete_older_than``, ``trim_quarantine``,
  ``trim_node_rejects``, ``meta``, ``migrations``.
* **StoreReader** (:mod:`~collector.store.reader`, context manager; a command's read-only
  snapshot): ``fetchall``, ``run(query)``, ``has_table``, ``counters``, ``payload``.
* **Command** (:mod:`~collector.store.command`, context manager; a command's one write
  transaction): ``execute``, ``executemany``, ``fetchall``, ``run(query)``, ``has_table``,
  ``discard``, ``bump_generation``; the write lock held at most ``LOCK_BUDGET_S``.
  ``GovernanceWriter`` and ``pool_transaction`` are domain methods over one ``Command``.
* **Queries** (:mod:`~collector.store.query`): a read is a ``Query`` (statements + the function
  their rows become), written once and run by any of the three handles.

Still SQLite-specific, for the second backend to deal with:

* SQL text: ``?`` placeholders; ``INSERT OR IGNORE``; ``rowid`` (each node's newest sample,
  retention chunks); ``total()``; scalar ``max(a, b)``; ``sqlite_master`` (``has_table``) and
  ``PRAGMA table_info`` (``pools.leased_nodes``); the migrations' DDL run by
  ``executescript``.
* Types in signatures: rows are ``sqlite3.Row`` (index or name); ``Command.execute`` returns a
  ``sqlite3.Cursor`` (``rowcount``, ``lastrowid``); ``Store.conn`` is the aiosqlite
  connection (tests reach it to fake a full disk).
* Semantics: ``BEGIN IMMEDIATE`` and the busy timeout stand for "take the write lock now";
  ``fatal`` is decided from SQLite result codes; the writer checks the file's identity
  before each commit; WAL and ``synchronous``; the bound-variable limit sizes multi-row
  inserts; sample payloads are zstd frames against a dictionary stored in the database.

Imports nothing itself, so that a read command can load :mod:`collector.store.reader`
without the writer's dependencies (aiosqlite, zstandard).
"""
