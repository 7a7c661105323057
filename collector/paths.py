"""Where the collector keeps its files unless told otherwise.

Read by the settings (``db_path``) and by the commands' fast path, which builds no settings
object (no pydantic): a module of its own, so that neither imports the other nor the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_DB_PATH"]

DEFAULT_DB_PATH: Final = Path("capwatch.db")
"""The store, relative to the working directory (``db_path``, ``--db``)."""
