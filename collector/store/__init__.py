"""The rolling SQLite store: connection and migrations, then one module per table group."""

from collector.store.db import NodeUpdate, SampleRow, Store

__all__ = ["NodeUpdate", "SampleRow", "Store"]
