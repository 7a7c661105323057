"""Settings of several collectors: the share group, client ids, the election's lease."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from collector.cli import main as collector_main
from collector.settings import CollectorMqttSettings, CollectorSettings, StoreSettings
from shared.errors import ConfigError
from shared.settings import default_node_id, load_settings
from shared.topics import SUBSCRIPTIONS, collector_subscriptions


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("CAPWATCH_")]:
        monkeypatch.delenv(name)


def test_without_a_share_group_the_filters_and_client_id_are_as_before() -> None:
    """Unset: one plain '#' filter and client id capwatch-collector (an existing session
    must be found again after an upgrade)."""
    s = CollectorSettings()
    assert collector_subscriptions(s.mqtt.share_group) == SUBSCRIPTIONS
    assert s.session_client_id == "capwatch-collector"
    assert s.election_url() is None


def test_a_share_group_takes_samples_shared_and_the_retained_kinds_plain() -> None:
    """Samples through $share/<group>/..., inventory and status through plain filters."""
    assert collector_subscriptions("site-1") == (
        "$share/site-1/capwatch/v1/nodes/+/sample",
        "capwatch/v1/nodes/+/inventory",
        "capwatch/v1/nodes/+/status",
    )


def test_share_group_members_get_their_own_client_id_by_default() -> None:
    """Hostname and instance: two members on one host differ by --instance; a username or
    client_id, when set, wins."""
    host = default_node_id()
    group = CollectorMqttSettings(share_group="g")
    one = CollectorSettings(mqtt=group)
    two = CollectorSettings(mqtt=group, instance="2")
    assert one.session_client_id == f"capwatch-collector-{host}-1"
    assert two.session_client_id == f"capwatch-collector-{host}-2"
    named = CollectorSettings(
        mqtt=CollectorMqttSettings(
            share_group="g", username="collector-b", live_username="collector-b-live"
        )
    )
    assert named.session_client_id == "collector-b"


@pytest.mark.parametrize("live", [None, "capwatch-collector-2"])
def test_a_share_group_member_with_a_username_needs_a_live_user_of_its_own(
    tmp_path: Path, live: str | None
) -> None:
    """The leader's live feed is a clean session: under the collector's own user (the
    broker makes the username the client id) it would discard the collector's session.
    Unset or equal: one line naming mqtt.live_username, exit 2."""
    config = tmp_path / "c.toml"
    lines = ["[mqtt]", 'username = "capwatch-collector-2"', 'share_group = "site"']
    if live is not None:
        lines.append(f'live_username = "{live}"')
    config.write_text("\n".join(lines) + "\n")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = collector_main(["run", "--config", str(config), "--db", str(tmp_path / "c.db")])
    assert code == 2
    assert "mqtt.live_username" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1


@pytest.mark.parametrize("group", ["a/b", "a+", "#", "", "-x", "x" * 65])
def test_a_share_group_that_is_not_one_topic_level_is_one_line_and_exit_2(
    tmp_path: Path, group: str
) -> None:
    """--share-group with '/', a wildcard, or empty: exit 2, the setting named."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = collector_main(
            ["run", "--db", str(tmp_path / "c.db"), f"--share-group={group}", "--port", "1"]
        )
    assert code == 2
    assert "mqtt.share_group" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="share group"):
        collector_subscriptions(group)


@pytest.mark.parametrize("group", ["site", "x" * 64, "a.b_c-d", "x\n", "x" * 65, "-x", "é"])
def test_the_share_group_setting_takes_what_the_topic_filter_takes(group: str) -> None:
    """mqtt.share_group accepts exactly the names collector_subscriptions makes a filter of
    (the setting restated the rule with ``$``, which Python matches before a final newline)."""
    try:
        collector_subscriptions(group)
        usable = True
    except ConfigError:
        usable = False
    if usable:
        assert CollectorMqttSettings(share_group=group).share_group == group
    else:
        with pytest.raises(ValueError, match="not usable in a topic filter: use 1-64 letters"):
            CollectorMqttSettings(share_group=group)


def test_election_url_comes_from_a_postgresql_store_or_the_election_table(tmp_path: Path) -> None:
    """A postgresql:// store elects through its own database; election.url alone too; a
    SQLite path never does."""
    pg = CollectorSettings(store=StoreSettings(url="postgresql://capwatch@db:5432/capwatch"))
    assert pg.election_url() == "postgresql://capwatch@db:5432/capwatch"
    config = tmp_path / "c.toml"
    config.write_text('[election]\nurl = "postgresql://x@h/db"\nlease_s = 6\n')
    s = load_settings(CollectorSettings, config_file=config)
    assert s.election_url() == "postgresql://x@h/db"
    assert (s.election.lease_s, s.election.poll_interval_s) == (6, 0.6)
    assert "postgresql://x@h/db" not in repr(s)  # a URL may carry a password
