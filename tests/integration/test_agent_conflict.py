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
    "spools",
    ["cloned", "fresh", "older"],
    # A cloned VM's spool (both count the same file up to epoch 5); two fresh spools (two
    # wall-clock epochs); B on an older agent's spool (5, below A's wall-clock epoch)
    ids=["one-epoch", "two-fresh-epochs", "two-epochs"],
)
async def test_two_agents_with_one_node_id_fire_node_agent_conflict_for_that_node_alone(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    agents: list[AgentProcess],
    tmp_path: Path,
    spools: str,
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
    a_spool, b_spool = tmp_path / "spool-a", tmp_path / "spool-b"
    for spool in {"cloned": (a_spool, b_spool), "fresh": (), "older": (b_spool,)}[spools]:
        spool.mkdir()
        (spool / "epoch").write_text("4\n")  # the agent counts it up to 5
    log = tmp_path / "agents.log"
    agents.append(AgentProcess(mosquitto, tmp_path / "spool-c", log, node=OTHER))
    agents.append(AgentProcess(mosquitto, a_spool, log, node=SHARED))
    await wait_until(lambda: len(stored_seqs(db, SHARED)) >= 2, timeout_s=30, what="A's samples")
    agents.append(AgentProcess(mosquitto, b_spool, log, node=SHARED))
    await wait_until(
        lambda: (
            len({e for e, _ in stored_seqs(db, SHARED)}) == (1 if spools == "cloned" else 2)
            and len(stored_seqs(db, SHARED)) >= 8
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
