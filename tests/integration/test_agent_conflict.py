"""Two real agents publishing as one node (a cloned VM, a copied config), a third as its own,
through a real Mosquitto to a real collector: ``NodeAgentConflict`` fires for the shared node
and for no other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.localbroker import MosquittoBroker
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import AgentProcess, CollectorRunner, stored_seqs

pytestmark = pytest.mark.integration

SHARED = "twin-node-1"
OTHER = "solo-node-1"


def _alerted(db: Path) -> list[tuple[str, str]]:
    """(node, state) of every NodeAgentConflict alert the collector recorded, live or past."""
    rows = db_rows(db, "SELECT labels, state FROM alerts WHERE rule = 'NodeAgentConflict'")
    rows += db_rows(db, "SELECT labels, state FROM alert_history WHERE rule = 'NodeAgentConflict'")
    return sorted((json.loads(labels)["node"], state) for labels, state in rows)


@pytest.mark.parametrize(
    "second_epoch",
    [None, 5],
    ids=["one-epoch", "two-epochs"],  # two fresh spools (both epoch 0); an older spool's 5
)
async def test_two_agents_with_one_node_id_fire_node_agent_conflict_for_that_node_alone(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    agents: list[AgentProcess],
    tmp_path: Path,
    second_epoch: int | None,
) -> None:
    """Agents A and B both run with node id SHARED (their own spools), agent C as OTHER;
    A starts first. The collector fires NodeAgentConflict for SHARED, none for OTHER."""
    collector_runner.settings = collector_runner.settings.model_copy(
        update={
            "alerts": collector_runner.settings.alerts.model_copy(update={"eval_interval_s": 0.5})
        }
    )
    await collector_runner.start()
    db = collector_runner.db
    b_spool = tmp_path / "spool-b"
    if second_epoch is not None:
        b_spool.mkdir()
        (b_spool / "epoch").write_text(f"{second_epoch - 1}\n")  # the agent counts it up
    log = tmp_path / "agents.log"
    agents.append(AgentProcess(mosquitto, tmp_path / "spool-c", log, node=OTHER))
    agents.append(AgentProcess(mosquitto, tmp_path / "spool-a", log, node=SHARED))
    await wait_until(lambda: len(stored_seqs(db, SHARED)) >= 2, timeout_s=30, what="A's samples")
    agents.append(AgentProcess(mosquitto, b_spool, log, node=SHARED))
    want = {0, second_epoch or 0}
    await wait_until(
        lambda: (
            {e for e, _ in stored_seqs(db, SHARED)} == want and len(stored_seqs(db, SHARED)) >= 8
        ),
        timeout_s=30,
        what="B's samples",
    )
    await wait_until(
        lambda: (SHARED, "firing") in _alerted(db), timeout_s=30, what="NodeAgentConflict firing"
    )
    seen = len(stored_seqs(db, OTHER))
    await wait_until(
        lambda: len(stored_seqs(db, OTHER)) >= seen + 3, timeout_s=30, what="OTHER sampling on"
    )
    assert {node for node, _ in _alerted(db)} == {SHARED}
