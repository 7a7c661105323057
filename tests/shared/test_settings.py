"""Settings: precedence and one-line errors; MQTT secrets never shown; TLS on and checked."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.settings import AgentSettings
from collector.settings import CollectorMqttSettings, CollectorSettings
from shared.errors import ConfigError
from shared.settings import MqttSettings, load_settings
from tests.integration.secure_broker import Pki, make_pki

_SECRET = "hunter2-s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a client certificate with its key (openssl CLI)."""
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn="node-a")


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


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("mqtt = 5\n", "mqtt"),
        ('mqtt = "broker:1883"\n', "mqtt"),
        ("[governance]\nbilling = 3\n", "billing"),
        ("capacity = []\n", "capacity"),
    ],
)
def test_a_table_in_the_file_that_is_not_one_is_refused_even_beside_a_flag_or_env(
    text: str, field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mqtt = 5`` in the file is refused alone, and also when a flag or the environment
    sets a key of that table: pydantic-settings merged their table over the file's value,
    and the collector started on the defaults as if the file said nothing."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text.replace("[governance]\nbilling", "billing"))
    for overrides in ({}, {field: {"anything": None}}):
        with pytest.raises(ConfigError, match=rf"setting '{field}'.*valid dictionary"):
            load_settings(CollectorSettings, config_file=cfg, overrides=overrides)
    monkeypatch.setenv("CAPWATCH_MQTT__PORT", "1")
    monkeypatch.setenv("CAPWATCH_CAPACITY__INTERVAL_S", "30")
    monkeypatch.setenv("CAPWATCH_BILLING__CURRENCY", "EUR")
    with pytest.raises(ConfigError, match=rf"setting '{field}'.*valid dictionary"):
        load_settings(CollectorSettings, config_file=cfg)


@pytest.mark.parametrize(
    ("cls", "text", "field"),
    [
        (CollectorSettings, "max_nodes = true\n", "max_nodes"),
        (CollectorSettings, "retention_s = true\n", "retention_s"),
        (CollectorSettings, "[mqtt]\nport = false\n", "mqtt.port"),
        (
            CollectorSettings,
            "ingest_budget = { bytes_per_s = true }\n",
            "ingest_budget.bytes_per_s",
        ),
        (CollectorSettings, "[alerts]\nxid_codes = [48, true]\n", "alerts.xid_codes.1"),
        (
            CollectorSettings,
            '[[receivers]]\nname = "r"\nurl = "http://127.0.0.1:9/"\nmax_age_s = true\n',
            "receivers.0.max_age_s",
        ),
        (AgentSettings, "interval_s = true\n", "interval_s"),
    ],
)
def test_a_boolean_in_the_file_for_a_number_is_refused(
    cls: type[CollectorSettings] | type[AgentSettings], text: str, field: str, tmp_path: Path
) -> None:
    """pydantic read ``true`` as 1 and ``false`` as 0: ``max_nodes = true`` started a
    collector that refused every node but one as fleet_full, ``retention_s = true`` kept one
    second of samples, ``interval_s = true`` sampled every second; no word said why."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"'{field}' = (True|False): .*not true or false"):
        load_settings(cls, config_file=cfg)


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("CAPWATCH_MQTT", '{"port": true}', "mqtt.port"),
        ("CAPWATCH_INGEST_BUDGET", '{"messages_per_s": false}', "ingest_budget.messages_per_s"),
    ],
)
def test_a_boolean_in_a_json_env_table_for_a_number_is_refused(
    var: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table given as JSON in the environment is typed as the file is: ``true`` for the
    port connected to port 1."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=rf"'{field}' = (True|False): .*not true or false"):
        load_settings(CollectorSettings)


@pytest.mark.parametrize(
    ("cls", "text", "field"),
    [
        (CollectorSettings, 'stale_intervals = "3"\n', "stale_intervals"),
        (CollectorSettings, 'retention_s = "86400"\n', "retention_s"),
        (CollectorSettings, '[mqtt]\nport = "1883"\n', "mqtt.port"),
        (CollectorSettings, '[alerts]\nxid_codes = [48, "79"]\n', "alerts.xid_codes.1"),
        (
            CollectorSettings,
            '[[receivers]]\nname = "r"\nurl = "http://127.0.0.1:9/"\nmax_age_s = "60"\n',
            "receivers.0.max_age_s",
        ),
        (AgentSettings, 'interval_s = "10"\n', "interval_s"),
    ],
)
def test_text_in_the_file_for_a_number_is_refused(
    cls: type[CollectorSettings] | type[AgentSettings], text: str, field: str, tmp_path: Path
) -> None:
    """pydantic's lax mode read ``stale_intervals = "3"`` as 3: the file says text where a
    number is meant, refused in one line naming the key, as a boolean for a number is."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"'{field}' = '.*': .*not text: write the number"):
        load_settings(cls, config_file=cfg)


def test_text_in_a_json_env_table_is_refused_and_a_plain_variable_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JSON says which type it means, as the file does; a plain variable is text, the only
    way the environment gives a number (``CAPWATCH_STALE_INTERVALS=4``)."""
    monkeypatch.setenv("CAPWATCH_MQTT", '{"port": "1883"}')
    with pytest.raises(ConfigError, match=r"'mqtt.port' = '1883': .*not text: write the number"):
        load_settings(CollectorSettings)
    monkeypatch.setenv("CAPWATCH_ALERTS", '{"xid_codes": [48, "79"]}')
    monkeypatch.delenv("CAPWATCH_MQTT")
    with pytest.raises(ConfigError, match=r"'alerts.xid_codes.1' = '79': .*not text"):
        load_settings(CollectorSettings)
    monkeypatch.delenv("CAPWATCH_ALERTS")
    monkeypatch.setenv("CAPWATCH_STALE_INTERVALS", "4")
    monkeypatch.setenv("CAPWATCH_MQTT__PORT", "1884")
    monkeypatch.setenv("CAPWATCH_ALERTS__XID_CODES", "[48, 79]")
    s = load_settings(CollectorSettings)
    assert (s.stale_intervals, s.mqtt.port, s.alerts.xid_codes) == (4, 1884, [48, 79])


@pytest.mark.parametrize(
    ("cls", "text", "field"),
    [
        (CollectorSettings, 'compress_payloads = "false"\n', "compress_payloads"),
        (CollectorSettings, '[mqtt]\ntls = "yes"\n', "mqtt.tls"),
        (CollectorSettings, 'log_json = "true"\n', "log_json"),
        (CollectorSettings, "[rollups]\nenabled = 1\n", "rollups.enabled"),
        (
            CollectorSettings,
            '[[redfish.bmcs]]\nnode = "n1"\nurl = "https://10.1.0.17"\ninsecure = "1"\n',
            "redfish.bmcs.0.insecure",
        ),
        (AgentSettings, "attribute_jobs = 0\n", "attribute_jobs"),
    ],
)
def test_text_or_a_number_in_the_file_for_a_boolean_is_refused(
    cls: type[CollectorSettings] | type[AgentSettings], text: str, field: str, tmp_path: Path
) -> None:
    """pydantic's lax mode read ``compress_payloads = "false"`` as false, ``tls = "yes"``
    as true and ``attribute_jobs = 0`` as false, where the file says text or a number: refused
    in one line naming the key, as text or a boolean for a number is."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"'{field}' = .*: Input should be true or false, not"):
        load_settings(cls, config_file=cfg)


def test_text_for_a_boolean_in_a_json_env_table_is_refused_and_a_plain_variable_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain variable is text, the only way the environment gives a boolean
    (``CAPWATCH_COMPRESS_PAYLOADS=false``); JSON says which type it means, as the file does."""
    monkeypatch.setenv("CAPWATCH_MQTT", '{"tls": "true"}')
    with pytest.raises(ConfigError, match=r"'mqtt.tls' = 'true': Input should be true or false"):
        load_settings(CollectorSettings)
    monkeypatch.delenv("CAPWATCH_MQTT")
    monkeypatch.setenv("CAPWATCH_COMPRESS_PAYLOADS", "false")
    monkeypatch.setenv("CAPWATCH_MQTT__TLS", "true")
    monkeypatch.setenv("CAPWATCH_LOG_JSON", "1")
    s = load_settings(CollectorSettings)
    assert (s.compress_payloads, s.mqtt.tls, s.log_json) == (False, True, True)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('retention_s = "5 minutes"\n', "retention_s"),
        ('[alerts]\noffline_for_s = "30s"\n', "alerts.offline_for_s"),
        ('[mqtt]\nkeepalive_s = "1m"\n', "mqtt.keepalive_s"),
    ],
)
def test_a_duration_written_for_seconds_says_to_give_seconds(
    text: str, field: str, tmp_path: Path
) -> None:
    """A ``*_s`` setting takes a number of seconds; '5 minutes' (or '5m', as the flags'
    durations are written) was 'Input should be a valid number, unable to parse string as
    a number', which says neither the unit nor the fix."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"'{field}' = '.*': give seconds as a number \(300"):
        load_settings(CollectorSettings, config_file=cfg)


def test_booleans_and_numbers_where_the_file_means_them_load(tmp_path: Path) -> None:
    """A boolean setting takes true, a number setting a number (an integer one a float
    that is whole, as before)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("compress_payloads = false\nmax_nodes = 1e3\n[alerts]\nxid_codes = [48]\n")
    s = load_settings(CollectorSettings, config_file=cfg)
    assert (s.compress_payloads, s.max_nodes, s.alerts.xid_codes) == (False, 1000, [48])


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


def test_a_config_file_that_is_not_utf8_is_one_clear_line(tmp_path: Path) -> None:
    """TOML is UTF-8: a Latin-1 file is a ConfigError naming the file, not a traceback."""
    cfg = tmp_path / "c.toml"
    cfg.write_bytes('[mqtt]\nhost = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"'.*c\.toml' is not UTF-8 text") as info:
        load_settings(AgentSettings, config_file=cfg)
    assert info.value.field == "config"


def test_a_config_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    """--config pointing at a directory is not called missing."""
    with pytest.raises(ConfigError, match="is a directory") as info:
        load_settings(CollectorSettings, config_file=tmp_path)
    assert info.value.field == "config"


def test_an_empty_config_from_dev_null_gives_the_defaults() -> None:
    """--config /dev/null (no settings from a file) is the defaults, not a missing file."""
    empty = load_settings(CollectorSettings, config_file=Path("/dev/null"))
    assert empty.model_dump() == load_settings(CollectorSettings).model_dump()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("max_nodes = 7\n[alerts]\ngpu_temp_c = 70\n", None),
        ("max_nodes = 0\n", "setting 'max_nodes' = 0: Input should be greater than or equal to 1"),
        ("max_nodes = [\n", "is not valid TOML"),
    ],
)
def test_a_config_from_a_pipe_is_read(text: str, error: str | None) -> None:
    """``--config /dev/stdin`` or ``--config <(envsubst < tmpl.toml)``: the file was read
    whole by a check, then by pydantic-settings, which reads regular files only: every
    setting silently at its default, a bad value accepted."""
    read, write = os.pipe()
    try:
        os.write(write, text.encode())
        os.close(write)
        pipe = Path(f"/dev/fd/{read}")
        if error is None:
            s = load_settings(CollectorSettings, config_file=pipe)
            assert (s.max_nodes, s.alerts.gpu_temp_c) == (7, 70.0)
        else:
            with pytest.raises(ConfigError, match=re.escape(error)):
                load_settings(CollectorSettings, config_file=pipe)
    finally:
        os.close(read)


@pytest.mark.parametrize("settings", [AgentSettings, CollectorSettings])
def test_a_config_file_larger_than_32_mib_is_refused_before_it_is_read_whole(
    tmp_path: Path, settings: type[AgentSettings] | type[CollectorSettings]
) -> None:
    """--config /dev/zero (or a runaway file) is one line naming the file, exit 2; it was
    read whole into memory (MemoryError, exit 1)."""
    cfg = tmp_path / "huge.toml"
    with cfg.open("wb") as f:
        f.truncate((32 << 20) + 1)  # sparse: costs no disk
    with pytest.raises(ConfigError, match=r"'.*huge\.toml' is larger than 32 MiB") as info:
        load_settings(settings, config_file=cfg)
    assert info.value.field == "config"
    assert "\n" not in str(info.value)


# --- secrets ----------------------------------------------------------------------------


def test_password_is_hidden_in_repr_and_dumps_but_given_to_the_client() -> None:
    """repr, str and JSON show asterisks; password_value() is the text for the MQTT client."""
    s = CollectorSettings(
        mqtt=CollectorMqttSettings(username="capwatch-collector", password=SecretStr(_SECRET))
    )
    for shown in (repr(s), str(s), repr(s.mqtt), s.model_dump_json(), str(s.model_dump())):
        assert _SECRET not in shown
        assert "**********" in shown
    assert s.mqtt.password_value() == _SECRET
    assert MqttSettings().password_value() is None


@pytest.mark.parametrize("toml_value", ["123456789", '["hunter2-s3cret"]', "{ x = 987654321 }"])
def test_password_of_wrong_type_in_file_is_named_but_not_shown(
    tmp_path: Path, toml_value: str
) -> None:
    """The error names mqtt.password and keeps its value out of the message and the cause."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[mqtt]\npassword = {toml_value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(CollectorSettings, config_file=cfg)
    assert info.value.field == "mqtt.password"
    assert str(info.value).startswith("setting 'mqtt.password' (value hidden):")
    for secret in ("123456789", _SECRET, "987654321"):
        assert secret not in str(info.value)
        assert secret not in str(info.value.__cause__)


def test_error_beside_a_password_in_a_json_env_table_does_not_show_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad port in CAPWATCH_MQTT='{...}' is shown; the password next to it is not."""
    monkeypatch.setenv("CAPWATCH_MQTT", f'{{"password": "{_SECRET}", "port": 0}}')
    with pytest.raises(ConfigError, match=r"setting 'mqtt.port' = 0:") as info:
        load_settings(AgentSettings)
    assert _SECRET not in str(info.value)
    assert _SECRET not in str(info.value.__cause__)


def test_password_of_wrong_type_in_env_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAPWATCH_MQTT='{"password": 123456789}' (a number, not a string) stays hidden."""
    monkeypatch.setenv("CAPWATCH_MQTT", '{"password": 123456789}')
    with pytest.raises(ConfigError, match=r"'mqtt.password' \(value hidden\)") as info:
        load_settings(CollectorSettings)
    assert "123456789" not in str(info.value)


def test_unparsable_env_table_is_one_line_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CAPWATCH_MQTT that is not JSON: a ConfigError naming the field, not a traceback."""
    monkeypatch.setenv("CAPWATCH_MQTT", f'{{"password": "{_SECRET}",')
    with pytest.raises(ConfigError, match="CAPWATCH_MQTT__HOST") as info:
        load_settings(CollectorSettings)
    assert '"mqtt"' in str(info.value)
    assert _SECRET not in str(info.value)
    assert "\n" not in str(info.value)


def test_password_from_env_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAPWATCH_MQTT__PASSWORD, as the systemd units pass it."""
    monkeypatch.setenv("CAPWATCH_MQTT__USERNAME", "capwatch-collector")
    monkeypatch.setenv("CAPWATCH_MQTT__PASSWORD", _SECRET)
    assert load_settings(CollectorSettings).mqtt.password_value() == _SECRET


def test_a_password_without_a_username_is_one_line_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MQTT sends a password only with a username: refused at load, the secret not shown."""
    monkeypatch.setenv("CAPWATCH_MQTT__PASSWORD", _SECRET)
    with pytest.raises(ConfigError, match=r"set mqtt\.username") as caught:
        load_settings(CollectorSettings)
    assert caught.value.field == "mqtt.username"
    assert _SECRET not in str(caught.value)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e300"])
def test_non_finite_or_absurd_durations_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """inf/nan would reach an int() deep in the writer: refused at load with the field named."""
    monkeypatch.setenv("CAPWATCH_RETENTION_S", value)
    with pytest.raises(ConfigError, match="'retention_s'"):
        load_settings(CollectorSettings)


# --- TLS --------------------------------------------------------------------------------


def test_tls_is_off_by_default() -> None:
    """No TLS setting: plain TCP (the collector on the broker's loopback listener)."""
    assert not MqttSettings().tls_enabled
    assert MqttSettings().tls_context() is None


def test_tls_true_alone_verifies_against_the_system_store() -> None:
    """tls = true without files: a verifying context (broker name and chain checked)."""
    ctx = MqttSettings(tls=True).tls_context()
    assert ctx is not None
    assert (ctx.check_hostname, ctx.verify_mode) == (True, ssl.CERT_REQUIRED)


def test_client_certificate_without_ca_turns_tls_on(pki: Pki) -> None:
    """A cert and key alone must not leave the password in clear text: TLS, system store."""
    s = MqttSettings(tls_cert_file=pki.client_cert, tls_key_file=pki.client_key)
    assert s.tls_enabled
    ctx = s.tls_context()
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not any(
        c["subject"] == ((("commonName", "capwatch test CA"),),) for c in ctx.get_ca_certs()
    )


def test_ca_file_turns_tls_on_and_is_trusted(pki: Pki) -> None:
    """tls_ca_file alone: TLS on, and that CA verifies the broker."""
    ctx = MqttSettings(tls_ca_file=pki.ca_cert).tls_context()
    assert ctx is not None
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "capwatch test CA"),),)]


def test_key_without_certificate_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """One line naming the setting and the fix, before anything connects."""
    monkeypatch.setenv("CAPWATCH_MQTT__TLS_KEY_FILE", "/etc/capwatch/node.key")
    monkeypatch.setenv("CAPWATCH_MQTT__USERNAME", "x1000c0s0b0n0")
    monkeypatch.setenv("CAPWATCH_MQTT__PASSWORD", _SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings(AgentSettings)
    assert info.value.field == "mqtt.tls_key_file"
    assert "set tls_cert_file" in str(info.value)
    assert "\n" not in str(info.value)
    assert _SECRET not in str(info.value)


@pytest.mark.parametrize("setting", ["tls_ca_file", "tls_cert_file", "tls_key_file"])
def test_missing_tls_file_is_named(tmp_path: Path, pki: Pki, setting: str) -> None:
    """A path that does not exist: ConfigError naming that setting and the path."""
    files = {"tls_ca_file": pki.ca_cert, "tls_cert_file": pki.client_cert}
    files[setting] = tmp_path / "nonexistent.pem"
    with pytest.raises(
        ConfigError, match=rf"'mqtt.{setting}' = '.*nonexistent.pem': no such"
    ) as info:
        MqttSettings(**files).tls_context()  # type: ignore[arg-type]
    assert info.value.field == f"mqtt.{setting}"


def test_nonexistent_ca_from_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAPWATCH_MQTT__TLS_CA_FILE=/nonexistent: the entry point gets a ConfigError."""
    monkeypatch.setenv("CAPWATCH_MQTT__TLS_CA_FILE", "/nonexistent")
    settings = load_settings(CollectorSettings)
    with pytest.raises(ConfigError, match=r"'mqtt\.tls_ca_file' = '/nonexistent': no such file"):
        settings.mqtt.tls_context()


def test_certificate_without_its_key_asks_for_tls_key_file(pki: Pki) -> None:
    """A certificate file without the key in it, and no tls_key_file."""
    with pytest.raises(ConfigError, match=r"or set mqtt\.tls_key_file") as info:
        MqttSettings(tls_cert_file=pki.client_cert).tls_context()
    assert info.value.field == "mqtt.tls_key_file"


def test_key_of_another_certificate_is_refused(pki: Pki) -> None:
    """The broker's key with the client's certificate: both settings named."""
    s = MqttSettings(tls_cert_file=pki.client_cert, tls_key_file=pki.server_key)
    with pytest.raises(ConfigError, match=r"KEY_VALUES_MISMATCH.*belonging to the certificate"):
        s.tls_context()


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path, pki: Pki) -> None:
    """OpenSSL would ask on the terminal (or hang a daemon); we say what to do instead."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [openssl, "pkey", "-in", str(pki.client_key), "-aes256", "-passout", "pass:pw",
         "-out", str(encrypted)],
        check=True,
    )  # fmt: skip
    s = MqttSettings(tls_cert_file=pki.client_cert, tls_key_file=encrypted)
    with pytest.raises(ConfigError, match=r"encrypted.*openssl pkey") as info:
        s.tls_context()
    assert info.value.field == "mqtt.tls_key_file"


def test_tls_context_is_built_once_per_set_of_files(tmp_path: Path, pki: Pki) -> None:
    """Every reconnect gets the same context; a failure is not remembered."""
    a = MqttSettings(
        tls_ca_file=pki.ca_cert, tls_cert_file=pki.client_cert, tls_key_file=pki.client_key
    )
    b = MqttSettings(
        host="elsewhere",
        tls_ca_file=pki.ca_cert,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
    )
    assert a.tls_context() is a.tls_context() is b.tls_context()
    assert MqttSettings(tls_ca_file=pki.ca_cert).tls_context() is not a.tls_context()
    later = tmp_path / "ca.pem"
    with pytest.raises(ConfigError):
        MqttSettings(tls_ca_file=later).tls_context()
    shutil.copy(pki.ca_cert, later)
    assert MqttSettings(tls_ca_file=later).tls_context() is not None


def test_a_receiver_secret_of_the_wrong_type_is_not_printed(tmp_path: Path) -> None:
    """Secrets inside a list of tables ([[receivers]]) are hidden in errors too."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[[receivers]]\nname = "ops"\nurl = "http://127.0.0.1:9/h"\nsecret = 987654321\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(CollectorSettings, config_file=config)
    assert "987654321" not in str(caught.value)
    assert "receivers.0.secret" in str(caught.value)


@pytest.mark.parametrize("host", ["", " ", "broker .example", "\tbroker"])
@pytest.mark.parametrize("settings", [AgentSettings, CollectorSettings])
def test_a_blank_broker_host_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, settings: type[AgentSettings | CollectorSettings], host: str
) -> None:
    """An empty host once passed: `agent run --host ''` died on paho's 'Invalid host.' (a
    traceback, exit 1) after starting, and `collector run` retried ':1883' for ever."""
    monkeypatch.setenv("CAPWATCH_MQTT__HOST", host)
    with pytest.raises(ConfigError, match=r"setting 'mqtt.host'.*broker's DNS name") as info:
        load_settings(settings)
    assert "\n" not in str(info.value)


def test_a_broker_host_may_be_a_name_or_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    for host in ("mqtt.cluster.example", "10.0.0.1", "::1", "fe80::1%eth0"):
        monkeypatch.setenv("CAPWATCH_MQTT__HOST", host)
        assert load_settings(AgentSettings).mqtt.host == host


def test_the_metrics_server_settings_read_the_same_in_both_daemons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``metrics_listen`` (env ``CAPWATCH_METRICS_LISTEN``) and ``web_config_file`` are one
    declaration: the same env names, and the same one-line error naming the field for an
    address that is not HOST:PORT, in the agent and the collector."""
    monkeypatch.setenv("CAPWATCH_METRICS_LISTEN", "[::1]:9400")
    monkeypatch.setenv("CAPWATCH_WEB_CONFIG_FILE", "/etc/capwatch/web.yml")
    for cls in (AgentSettings, CollectorSettings):
        s = load_settings(cls)
        assert (s.metrics_listen, s.web_config_file) == (
            "[::1]:9400",
            Path("/etc/capwatch/web.yml"),
        )
    monkeypatch.setenv("CAPWATCH_METRICS_LISTEN", "9400")
    errors = []
    for cls in (AgentSettings, CollectorSettings):
        with pytest.raises(ConfigError) as info:
            load_settings(cls)
        assert info.value.field == "metrics_listen"
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "'9400' is not HOST:PORT" in errors[0]
