"""Every connection capwatch opens to PostgreSQL is set up alike, whoever opens it."""

from __future__ import annotations

import pytest

from collector.paths import parse_target
from collector.store.command import Command
from collector.store.db import Store
from collector.store.reader import StoreReader

pytestmark = pytest.mark.integration


async def test_no_connection_compiles_its_statements_just_in_time(postgres_url: str) -> None:
    """JIT is off for the collector's store, a reader's and a command's connections: the
    compile time of a fleet-sized estimate, paid at every execution, dwarfed the work."""
    target = parse_target(postgres_url)
    async with Store(target) as store:
        assert [tuple(r) for r in await store.fetchall("SHOW jit")] == [("off",)]
    async with Store(target, readonly=True) as reader:
        assert [tuple(r) for r in await reader.fetchall("SHOW jit")] == [("off",)]
    with StoreReader(target) as query:
        assert [tuple(r) for r in query.fetchall("SHOW jit")] == [("off",)]
    with Command(target) as tx:
        assert [tuple(r) for r in tx.fetchall("SHOW jit")] == [("off",)]
        tx.discard()
