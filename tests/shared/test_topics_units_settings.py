"""Topics and node ids, unit parsing, and settings precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import AgentSettings
from collector.settings import CollectorSettings
from shared.errors import ConfigError
from shared.settings import load_settings
from shared.topics import parse_topic, sample_topic, validate_node_id
from shared.units import format_bytes, format_duration, format_watts, parse_duration


@pytest.mark.parametrize("node", ["x1000c0s0b0n0", "gpu-node.17", "A_1"])
def test_valid_node_ids_pass(node: str) -> None:
    """Letters, digits, dot, dash and underscore are topic-safe."""
    assert validate_node_id(node) == node
    assert parse_topic(sample_topic(node)) == (node, "sample")


@pytest.mark.parametrize("node", ["", "a/b", "a+b", "#", "has space", "-lead", "x" * 64])
def test_unsafe_node_ids_are_refused_with_the_fix(node: str) -> None:
    """Wildcards, slashes, spaces and overlong ids would let a node write others' topics."""
    with pytest.raises(ConfigError, match="CAPWATCH_NODE_ID or --node-id"):
        validate_node_id(node)


def test_parse_topic_rejects_foreign_topics() -> None:
    """Only capwatch/v1/nodes/<node>/<kind> is ours."""
    assert parse_topic("capwatch/v2/nodes/n/sample") is None
    assert parse_topic("capwatch/v1/nodes/n/sample/extra") is None
    assert parse_topic("capwatch/v1/nodes/has space/sample") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 900.0),
        ("30s", 30.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("45", 45.0),
        ("1.5h", 5400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations take ms/s/m/h/d/w; a bare number is seconds."""
    assert parse_duration(text) == seconds


def test_bad_duration_names_the_flag() -> None:
    """The error says which flag and shows valid examples."""
    with pytest.raises(ConfigError, match=r"--since '15 minutes' is not a duration.*15m"):
        parse_duration("15 minutes", field="--since")


def test_formatters() -> None:
    """Human formats pick sensible units."""
    assert format_duration(754) == "12m34s"
    assert format_duration(None) == "-"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_watts(4_996_066) == "5.00 MW"
    assert format_watts(3700) == "3.7 kW"


def test_settings_precedence_file_env_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags beat CAPWATCH_* env vars, which beat the TOML file, which beats defaults."""
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        'db_path = "from-file.db"\nretention_s = 60\n[mqtt]\nhost = "file-host"\nport = 1111\n'
    )
    monkeypatch.setenv("CAPWATCH_MQTT__PORT", "2222")
    s = load_settings(CollectorSettings, config_file=cfg, overrides={"mqtt": {"host": None}})
    assert (s.db_path, s.retention_s, s.mqtt.host, s.mqtt.port) == (
        Path("from-file.db"),
        60,
        "file-host",
        2222,
    )
    s = load_settings(CollectorSettings, config_file=cfg, overrides={"mqtt": {"port": 3333}})
    assert s.mqtt.port == 3333
    assert s.mqtt.host == "file-host"


def test_unknown_setting_in_file_is_one_clear_line(tmp_path: Path) -> None:
    """A typo in the config file names the key instead of being ignored."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("retension_s = 60\n")
    with pytest.raises(ConfigError) as info:
        load_settings(CollectorSettings, config_file=cfg)
    assert info.value.field == "retension_s"
    assert "\n" not in str(info.value)


def test_bad_value_names_field_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """An out-of-range env var is reported with its dotted field name and the value."""
    monkeypatch.setenv("CAPWATCH_INTERVAL_S", "0.1")
    with pytest.raises(ConfigError, match=r"setting 'interval_s' = '0.1'"):
        load_settings(AgentSettings)


def test_bad_node_id_setting_is_refused() -> None:
    """The agent refuses a node id that is not topic-safe."""
    with pytest.raises(ConfigError, match="node id 'rack 1/node 2' is not usable") as info:
        load_settings(AgentSettings, overrides={"node_id": "rack 1/node 2"})
    assert info.value.field == "node_id"


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """--config pointing nowhere says so."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(CollectorSettings, config_file=tmp_path / "nope.toml")
