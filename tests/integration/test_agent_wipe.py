"""A node reinstalled (its agent's spool directory wiped) with real parts: a real Mosquitto,
real ``agent run`` processes and a real collector, on each store backend in turn. The new
run's samples are the node's newest at once (live view, store, the agent's watermark loop),
with no second agent and no samples missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector.localbroker import MosquittoBroker
from collector.paths import StoreTarget
from tests.helpers import collector_json, count_samples, db_rows, wait_until
from tests.integration.conftest import SPOOL_NODE, AgentProcess, CollectorRunner, samples_taken

pytestmark = pytest.mark.integration

NODE = SPOOL_NODE


@pytest.fixture
async def runner(
    mosquitto: MosquittoBroker, store_url: StoreTarget
) -> AsyncIterator[CollectorRunner]:
    """A collector on a real Mosquitto and ``store_url`` (each backend in turn), its rules
    evaluated every half second."""
    run = CollectorRunner(mosquitto, store_url)
    alerts = run.settings.alerts.model_copy(update={"eval_interval_s": 0.5})
    run.settings = run.settings.model_copy(update={"alerts": alerts})
    yield run
    await run.stop()


def _stored(db: StoreTarget) -> list[tuple[int, int, int]]:
    """(ts_ms, epoch, seq) of the node's stored samples, oldest stamp first."""
    sql = "SELECT ts_ms, epoch, seq FROM samples WHERE node = ? ORDER BY ts_ms"
    rows = db_rows(db, sql, (NODE,))
    return [(int(t), int(e), int(s)) for t, e, s in rows]


def _alerted(db: StoreTarget, rule: str) -> list[str]:
    """States of every ``rule`` alert of the node the collector recorded, live or past."""
    rows = db_rows(db, "SELECT labels, state FROM alerts WHERE rule = ?", (rule,))
    rows += db_rows(db, "SELECT labels, state FROM alert_history WHERE rule = ?", (rule,))
    return [state for labels, state in rows if json.loads(labels)["node"] == NODE]


def _query(db: StoreTarget, *args: str) -> Any:
    return collector_json("query", "--db", str(db), *args)


async def test_a_wiped_spool_starts_a_run_the_collector_shows_at_once(
    mosquitto: MosquittoBroker,
    runner: CollectorRunner,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    """Agent A runs on a fresh spool to seq >= 9 and stops; its spool directory is deleted
    (a reinstall) and agent B starts on the same path. From B's first samples on, the live
    view holds B's newest sample, the store's watermark follows B's run (and B hears it:
    its held samples are confirmed), no NodeAgentConflict, nothing counted missing."""
    collector = await runner.start()
    db = runner.target
    spool, log = tmp_path / "spool", tmp_path / "agent.log"
    first = AgentProcess(mosquitto, spool, log)
    agents.append(first)
    await wait_until(lambda: len(_stored(db)) >= 10, timeout_s=40, what="A's samples")
    await asyncio.to_thread(first.stop)
    taken = samples_taken(first)
    await wait_until(lambda: len(_stored(db)) >= taken, timeout_s=30, what="all of A stored")
    a_rows = _stored(db)
    a_last_ts, a_epoch, a_top = a_rows[-1]
    assert {e for _, e, _ in a_rows} == {a_epoch}

    await asyncio.to_thread(shutil.rmtree, spool)  # the node reinstalled
    second = AgentProcess(mosquitto, spool, log)
    agents.append(second)
    await wait_until(lambda: second.metric("capwatch_agent_epoch") is not None, what="B's epoch")
    b_epoch = int(second.metric("capwatch_agent_epoch") or 0)
    await wait_until(
        lambda: count_samples(db, NODE) >= len(a_rows) + 3, timeout_s=30, what="B's samples"
    )
    # At once: B's third sample is stored, and the live view holds one of B's, far below
    # the seq A reached.
    st = collector.live.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert round(st.sample.ts * 1000) > a_last_ts  # the store keeps ms, rounded
    assert (st.sample.epoch, st.sample.seq < a_top) == (b_epoch, True)
    assert b_epoch > a_epoch  # a fresh directory: the wall clock in ms, past A's
    # B's held samples are confirmed by the store's watermark of its own run.
    await wait_until(
        lambda: (second.metric("capwatch_agent_confirmed_samples_total") or 0) >= 1,
        timeout_s=15,
        what="B's samples confirmed",
    )

    await asyncio.to_thread(second.stop)
    b_taken = samples_taken(second)
    await wait_until(
        lambda: count_samples(db, NODE) >= len(a_rows) + b_taken, timeout_s=30, what="B stored"
    )
    b_last_ts, _, b_top = _stored(db)[-1]
    assert b_top == b_taken - 1
    st = collector.live.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (round(st.sample.ts * 1000), st.sample.epoch, st.sample.seq) == (
        b_last_ts,
        b_epoch,
        b_top,
    )
    await wait_until(
        lambda: (
            db_rows(db, "SELECT epoch, seq, top FROM watermarks WHERE node = ?", (NODE,))
            == [(b_epoch, b_top, b_top)]
        ),
        what="the store's watermark on B's run",
    )
    assert (st.conflicts, collector.live.conflicts_total) == ((), 0)
    assert (st.missing_total, collector.live.missing_total) == (0, 0)
    assert _alerted(db, "NodeAgentConflict") == []
    assert _alerted(db, "NodeSamplesMissing") == []
    assert _query(db, "--node", NODE, "--gaps")["gaps"] == []
    # `collector query` names B's last sample as the node's newest.
    (row,) = [n for n in _query(db)["nodes"] if n["node"] == NODE]
    assert row["last_sample_age_s"] <= round(time.time() - b_last_ts / 1000, 1) + 0.2
