"""``collector inventory forget``: what it refuses, what it deletes and keeps (both backends),
and the broker's retained messages (a real Mosquitto)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from collector.governance.lease import LeaseTerms
from collector.localbroker import MosquittoBroker, free_port
from collector.paths import StoreTarget
from collector.store.command import Command
from collector.store.db import NodeUpdate, SampleRow, Store
from collector.store.power import PolledRow, write_polled_power
from collector.store.watermarks import WatermarkRow, write_watermarks
from shared.schema import encode
from shared.topics import inventory_topic, status_topic, watermark_topic
from tests.collector.governance.hw_fleet import Spec, cli, inventory
from tests.helpers import db_rows

HOUR_MS = 3_600_000


async def _fleet(db: StoreTarget, tmp: Path) -> StoreTarget:
    """Nodes as the collector stores them: ``gone`` and ``gone2`` offline, their last sample
    an hour old (``gone`` with a watermark, rejects and a BMC reading); ``busy`` sampling
    now; ``waiting`` online with no sample yet; ``pooled`` and ``leased`` quiet for an hour;
    ``declared`` imported only."""
    now = time.time()
    now_ms = int(now * 1000)
    online = {"busy", "waiting", "pooled", "leased"}
    names = ["gone", "gone2", "busy", "waiting", "pooled", "leased"]
    updates = [
        NodeUpdate(
            n,
            "online" if n in online else "offline",
            now - (0 if n == "waiting" else 3600),
            encode(inventory(Spec(n), now - 3600)),
            now - 3600,
        )
        for n in names
    ]

    def row(node: str, received_ms: int) -> SampleRow:
        return SampleRow(
            node, received_ms, 1, received_ms, 5.0, 1.0, 1, 2, 4, 5.0, 1, 300.0, 99.0, b"{}"
        )

    rows = [row(n, now_ms - HOUR_MS) for n in names if n not in ("busy", "waiting")]
    rows.append(row("busy", now_ms - 1000))
    async with Store(db, compress=False) as store:
        await store.write_batch(rows, updates, new_nodes=names)
        await write_watermarks(store, [WatermarkRow("gone", 1, 1, 1, now_ms - HOUR_MS)])
        await store.write_counters({}, now, {("gone", "invalid"): (3, now_ms - HOUR_MS)})
        await write_polled_power(
            store, [PolledRow("node", "gone", 900.0, "redfish", now - 3600, 10.0)]
        )
    path = tmp / "declared.jsonl"
    path.write_bytes(encode(inventory(Spec("declared"))) + b"\n")
    assert cli("inventory", "import", str(path), "--db", str(db))[0] == 0
    assert cli("pool", "create", "zinal", "--nodes", "pooled", "--db", str(db))[0] == 0
    today = dt.datetime.now(dt.UTC).date()
    with Command(db) as tx:
        tx.governance.add_lease(
            name="acme-1", tenant="acme", pool=None, nodes=["leased"], terms=LeaseTerms(today, 30)
        )
    return db


def _forget(db: StoreTarget, *args: str, port: int | None = None) -> tuple[int, str, str]:
    """``collector inventory forget ARGS`` on ``db``, the broker at ``port`` (default: a
    port nothing listens on); not from a running event loop (the command runs its own)."""
    port = free_port() if port is None else port
    return cli("inventory", "forget", *args, "--db", str(db), "--port", str(port))


def _node_rows(db: StoreTarget, node: str) -> dict[str, int]:
    """Rows naming ``node``, per table."""
    out = {}
    for table, column in (
        ("nodes", "node"),
        ("declared_inventories", "node"),
        ("watermarks", "node"),
        ("node_rejects", "node"),
        ("polled_power", "name"),
        ("samples", "node"),
        ("pool_nodes", "node"),
        ("lease_nodes", "node"),
    ):
        out[table] = db_rows(db, f"SELECT count(*) FROM {table} WHERE {column} = ?", (node,))[0][0]
    return out


@pytest.fixture
async def fleet(store_url: StoreTarget, tmp_path: Path) -> StoreTarget:
    """:func:`_fleet` on each backend in turn."""
    return await _fleet(store_url, tmp_path)


def test_forget_deletes_what_makes_a_node_current_and_keeps_its_samples(
    fleet: StoreTarget,
) -> None:
    """An offline node quiet for an hour: its nodes, watermark, rejects and BMC rows go in
    one command, its samples stay, a forgotten_nodes row records it; the broker being
    unreachable is exit 1 with the commands that clear its three retained topics."""
    before = _node_rows(fleet, "gone")
    assert before == dict.fromkeys(before, 1) | {
        "declared_inventories": 0,
        "pool_nodes": 0,
        "lease_nodes": 0,
    }
    code, out, err = _forget(fleet, "gone")
    assert code == 1, err
    assert out.startswith("forgot 1 node: gone (samples, rollups and usage stay until retention)")
    assert "their retained status, inventory and watermark are still on the broker" in err
    for topic in (status_topic("gone"), inventory_topic("gone"), watermark_topic("gone")):
        assert f"-r -n -t {topic}" in err
    assert _node_rows(fleet, "gone") == dict.fromkeys(before, 0) | {"samples": 1}
    assert db_rows(fleet, "SELECT node, forced FROM forgotten_nodes") == [("gone", 0)]
    assert _node_rows(fleet, "gone2")["nodes"] == 1  # the others stay


def test_a_declared_node_is_forgotten_with_its_declared_inventory(
    fleet: StoreTarget,
) -> None:
    """A node known only from `inventory import` can be forgotten: its declared row goes."""
    code, out, _ = _forget(fleet, "declared", "--json")
    assert code == 1
    assert json.loads(out)["forgotten"] == ["declared"]
    assert _node_rows(fleet, "declared")["declared_inventories"] == 0


@pytest.mark.parametrize(
    ("nodes", "says"),
    [
        (["nosuch"], "no node 'nosuch' in the store (`collector inventory` lists them)"),
        (["pooled"], "node pooled is in pool zinal: `collector pool remove zinal pooled`"),
        (["leased"], "node leased is held by lease 'acme-1' (tenant acme; it ends "),
        (["busy"], "node busy sent a sample "),
        (["waiting"], "node waiting is online: stop its agent first"),
        (["gone", "busy"], "node busy sent a sample"),
    ],
)
def test_a_refused_node_is_one_line_exit_2_and_nothing_changes(
    fleet: StoreTarget, nodes: list[str], says: str
) -> None:
    """Unknown, in a pool, in a lease in force, sampling, online: refused in one line naming
    what frees it; with several nodes, one refused forgets none."""
    code, out, err = _forget(fleet, *nodes)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert says in err
    assert err.rstrip().endswith("nothing forgotten")
    assert db_rows(fleet, "SELECT count(*) FROM forgotten_nodes") == [(0,)]
    assert _node_rows(fleet, "gone")["nodes"] == 1


def test_a_lease_cancelled_before_it_began_holds_no_node(fleet: StoreTarget) -> None:
    """A lease cancelled before its start ends at its start: it holds nothing, ever
    (`lease list`: expired). It still refused `inventory forget` of its node until that
    start ("held by lease ... it ends 2030-01-01", and the fix it named, `lease cancel`, was
    what had been done), and kept the node from every pool pattern (`pool apply`, `lease add
    --pattern`, `apply`) until then: years, for a lease booked ahead."""
    from collector.store.pools import unended_lease_nodes  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    start = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3 * 365)).isoformat()
    code, _, err = cli("lease", "add", "--db", str(fleet), "--tenant", "acme",
                       "--nodes", "gone2", "--start", start, "--name", "ahead")  # fmt: skip
    assert (code, err) == (0, "")
    with StoreReader(fleet) as store:
        assert "gone2" in unended_lease_nodes(store, time.time())  # booked: not free
    code, out, err = cli("lease", "cancel", "ahead", "--db", str(fleet))
    assert (code, err) == (0, ""), out
    with StoreReader(fleet) as store:
        assert "gone2" not in unended_lease_nodes(store, time.time())
    code, out, err = _forget(fleet, "gone2", "--store-only", "--json")
    assert code == 0, err
    assert json.loads(out)["forgotten"] == ["gone2"]


def test_force_forgets_a_node_still_sampling_but_not_a_pooled_one(
    fleet: StoreTarget,
) -> None:
    """--force overrides only "online or sampling": recorded as forced; a pool still refuses."""
    assert _forget(fleet, "busy", "waiting", "--force")[0] == 1
    assert db_rows(fleet, "SELECT node, forced FROM forgotten_nodes ORDER BY id") == [
        ("busy", 1),
        ("waiting", 1),
    ]
    assert _node_rows(fleet, "busy")["nodes"] == 0
    code, _, err = _forget(fleet, "pooled", "--force")
    assert code == 2
    assert "is in pool zinal" in err


def test_force_without_forget_is_refused(fleet: StoreTarget) -> None:
    """--force belongs to forget: elsewhere one line, exit 2."""
    code, _, err = cli("inventory", "--force", "--db", str(fleet))
    assert code == 2
    assert "--force goes with forget only" in err


async def retained(broker: MosquittoBroker, topics: list[str]) -> dict[str, bytes]:
    """The retained messages the broker holds on ``topics``: those it sends a new
    subscriber before the retained marker of a later SUBSCRIBE (Mosquitto answers a
    client's packets in order)."""
    got: dict[str, bytes] = {}
    marker = "capwatch/v1/nodes/marker/status"
    async with aiomqtt.Client(broker.host, broker.port, identifier="peek") as client:
        await client.publish(marker, b"m", qos=1, retain=True)
        for topic in topics:
            await client.subscribe(topic, qos=1)
        await client.subscribe(marker, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if str(message.topic) == marker:
                    return got
                got[str(message.topic)] = bytes(message.payload)
    return got


async def test_forget_clears_the_three_retained_messages_on_the_broker(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """With the broker up: exit 0, and a new subscriber gets no retained status, inventory
    or watermark of the node (another node's stay)."""
    db = await _fleet(tmp_path / "c.db", tmp_path)
    topics = [status_topic(n) for n in ("gone", "gone2")]
    topics += [inventory_topic("gone"), watermark_topic("gone")]
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="agent") as client:
        for topic in topics:
            await client.publish(topic, b"x", qos=1, retain=True)
    assert await retained(mosquitto, topics) == dict.fromkeys(topics, b"x")
    # In a thread: the command runs its own event loop, as it does in its own process.
    code, out, err = await asyncio.to_thread(_forget, db, "gone", port=mosquitto.port)
    assert (code, err) == (0, "")
    assert "cleared their 3 retained messages on the broker" in out
    assert await retained(mosquitto, topics) == {status_topic("gone2"): b"x"}


def test_with_the_collectors_mqtt_user_and_no_admin_user_it_refuses_before_forgetting(
    fleet: StoreTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mqtt.username set, mqtt.admin_username not: no login may clear the retained messages
    (the collector's would take over its session), so nothing is forgotten: one line
    naming mqtt.admin_username and --store-only, exit 2. With --store-only the node is
    forgotten, the broker left alone, and the commands that clear it printed: exit 0."""
    monkeypatch.setenv("CAPWATCH_MQTT__USERNAME", "capwatch-collector")
    code, out, err = _forget(fleet, "gone")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "mqtt.admin_username is not set" in err
    assert "logging in as the collector's user (capwatch-collector) would take over" in err
    assert "--store-only" in err
    assert err.rstrip().endswith("nothing forgotten")
    assert _node_rows(fleet, "gone")["nodes"] == 1
    assert db_rows(fleet, "SELECT count(*) FROM forgotten_nodes") == [(0,)]

    code, out, err = _forget(fleet, "gone", "--store-only")
    assert (code, err) == (0, "")
    assert "left their 3 retained messages on the broker (--store-only)" in out
    assert "-u capwatch-admin -P PASSWORD -q 1 -r -n -t capwatch/v1/nodes/gone/status" in out
    assert _node_rows(fleet, "gone")["nodes"] == 0
    code, out, _ = _forget(fleet, "gone2", "--store-only", "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["retained_cleared"], shown["broker_error"]) == (False, None)
    assert len(shown["clear_commands"]) == 3


def test_store_only_without_forget_is_refused(fleet: StoreTarget) -> None:
    """--store-only belongs to forget: elsewhere one line, exit 2."""
    code, _, err = cli("inventory", "--store-only", "--db", str(fleet))
    assert code == 2
    assert "--store-only goes with forget only" in err


def test_a_node_known_only_by_its_rejects_is_forgotten(fleet: StoreTarget) -> None:
    """A node that only ever sent rejected messages (``node_rejects`` rows, no ``nodes``
    row) is not unknown: forgotten, its rejects deleted."""

    async def rejects() -> None:
        async with Store(fleet, compress=False) as store:
            await store.write_counters(
                {}, time.time(), {("junk", "invalid"): (5, 1), ("junk", "not_json"): (2, 1)}
            )

    asyncio.run(rejects())
    assert _node_rows(fleet, "junk")["node_rejects"] == 2
    code, out, err = _forget(fleet, "junk", "--store-only")
    assert code == 0, err
    assert out.startswith("forgot 1 node: junk")
    assert _node_rows(fleet, "junk")["node_rejects"] == 0
    assert db_rows(fleet, "SELECT node FROM forgotten_nodes") == [("junk",)]


def test_a_node_whose_bmc_is_still_polled_is_forgotten_with_a_warning(
    fleet: StoreTarget, tmp_path: Path
) -> None:
    """A node whose BMC the settings list (``[[redfish.bmcs]]``): forgotten, and one warning
    line naming the setting to edit; a node with no BMC listed gets none."""
    creds = tmp_path / "bmc.toml"
    creds.write_text('[default]\nusername = "u"\npassword = "p"\n')
    creds.chmod(0o600)
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[redfish]\ncredentials_file = "{creds}"\n'
        '[[redfish.bmcs]]\nnode = "gone"\nurl = "https://10.0.0.7"\n'
    )
    code, _, err = _forget(fleet, "gone", "--store-only", "--config", str(config))
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning == [
        "warning: node gone's BMC is still listed in redfish.bmcs: remove its entry "
        "([[redfish.bmcs]] node = ...) from the collector's settings; until then a running "
        "collector ignores those readings while the node stays forgotten"
    ]
    code, _, err = _forget(fleet, "gone2", "--store-only", "--config", str(config))
    assert code == 0
    assert "redfish.bmcs" not in err


def test_an_admin_user_equal_to_the_collectors_is_refused(
    fleet: StoreTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mqtt.admin_username = mqtt.username: one line naming the setting, exit 2, nothing
    forgotten."""
    monkeypatch.setenv("CAPWATCH_MQTT__USERNAME", "capwatch-collector")
    monkeypatch.setenv("CAPWATCH_MQTT__ADMIN_USERNAME", "capwatch-collector")
    code, _, err = _forget(fleet, "gone")
    assert code == 2
    assert err.count("\n") == 1
    assert "mqtt.admin_username" in err
    assert _node_rows(fleet, "gone")["nodes"] == 1


def test_a_forgotten_nodes_kept_samples_still_answer_query_and_plot(
    fleet: StoreTarget, tmp_path: Path
) -> None:
    """Its samples stay until retention, so `query --node` and `plot --node` still answer
    for it: plot refused it as "no such node (see `collector query`)", which listed it.
    A name the store never held is refused by both alike."""
    assert _forget(fleet, "gone")[0] == 1  # forgotten; the broker unreachable
    code, out, err = cli("query", "--node", "gone", "--since", "2h", "--db", str(fleet))
    assert (code, err) == (0, "")
    assert "no samples" not in out
    picture = tmp_path / "gone.png"
    code, out, err = cli(
        "plot", "usage", "--node", "gone", "--since", "2h", "--out", str(picture), "--db",
        str(fleet),
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    assert picture.exists()
    for argv in (["query"], ["plot", "usage", "--out", str(tmp_path / "n.png")]):
        code, _, err = cli(*argv, "--node", "never", "--db", str(fleet))
        assert code == 2, argv
        assert "--node 'never': no such node (see `collector query`)" in err, err
