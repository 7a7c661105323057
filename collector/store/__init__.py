"""The rolling SQLite store: connection and migrations, then one module per table group.

Imports nothing itself, so that a read command can load :mod:`collector.store.reader`
without the writer's dependencies (aiosqlite, zstandard).
"""
