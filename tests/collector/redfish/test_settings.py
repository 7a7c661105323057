"""``[redfish]`` settings and the credentials file: a mistake is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.redfish.credentials import load_credentials
from collector.settings import CollectorSettings
from shared.errors import ConfigError
from shared.settings import load_settings
from tests.collector.redfish.conftest import write_credentials


def _settings(tmp_path: Path, toml: str) -> CollectorSettings:
    path = tmp_path / "collector.toml"
    path.write_text(toml)
    return load_settings(CollectorSettings, config_file=path)


def test_defaults_are_off_with_a_ten_second_interval() -> None:
    """No BMCs: no poller; the documented defaults otherwise."""
    r = CollectorSettings().redfish
    assert r.enabled is False
    assert (r.interval_s, r.timeout_s, r.max_concurrency) == (10.0, 5.0, 64)


def test_a_bmc_list_loads_from_the_config_file(tmp_path: Path) -> None:
    """[[redfish.bmcs]] with node, url, chassis, ca_file and insecure."""
    s = _settings(
        tmp_path,
        """
[redfish]
credentials_file = "/etc/capwatch/bmc.toml"
interval_s = 15
[[redfish.bmcs]]
node = "gpu-001"
url = "https://10.1.0.1"
chassis = "1U"
[[redfish.bmcs]]
node = "gpu-002"
url = "https://10.1.0.2:8443/"
insecure = true
""",
    )
    assert s.redfish.enabled
    assert [b.node for b in s.redfish.bmcs] == ["gpu-001", "gpu-002"]
    assert s.redfish.bmcs[1].base_url == "https://10.1.0.2:8443"
    assert s.redfish.bmcs[1].insecure is True
    assert s.redfish.interval_s == 15


@pytest.mark.parametrize(
    ("toml", "field", "words"),
    [
        (
            '[[redfish.bmcs]]\nnode = "n1"\nurl = "https://10.0.0.1"\n',
            "redfish.credentials_file",
            "mode 0600",
        ),
        (
            '[redfish]\ncredentials_file = "c.toml"\n[[redfish.bmcs]]\nnode = "n1"\n'
            'url = "https://10.0.0.1"\n[[redfish.bmcs]]\nnode = "n1"\nurl = "https://10.0.0.2"\n',
            "redfish.bmcs.1.node",
            "one BMC per node",
        ),
        (
            '[redfish]\ncredentials_file = "c.toml"\n[[redfish.bmcs]]\nnode = "n1"\n'
            'url = "https://root:calvin@10.0.0.1"\n',
            "redfish.bmcs.url",
            "credentials go in redfish.credentials_file",
        ),
        (
            '[redfish]\ncredentials_file = "c.toml"\n[[redfish.bmcs]]\nnode = "n 1"\n'
            'url = "https://10.0.0.1"\n',
            "redfish.bmcs.0.node",
            "not a node id",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, toml: str, field: str, words: str
) -> None:
    """Missing credentials file, a node twice, a password in the URL, a bad node id."""
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, toml)
    assert err.value.field == field
    assert words in str(err.value)
    assert "calvin" not in str(err.value)
    assert "\n" not in str(err.value)


def test_credentials_by_node_then_default(tmp_path: Path) -> None:
    """A node's own entry wins over [default]; JSON and TOML read alike."""
    for name in ("c.toml", "c.json"):
        creds = load_credentials(
            write_credentials(
                tmp_path / name,
                {
                    "default": {"username": "capwatch", "password": "d-pw"},
                    "nodes": {"n1": {"username": "admin", "password": "n1-pw"}},
                },
            )
        )
        n1, other = creds.of("n1"), creds.of("n2")
        assert n1 is not None
        assert other is not None
        assert (n1.username, n1.password.get_secret_value()) == ("admin", "n1-pw")
        assert (other.username, other.password.get_secret_value()) == ("capwatch", "d-pw")
        assert "pw" not in repr(creds) + repr(n1)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o620])
def test_a_credentials_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """Readable by others or writable by group: refused with the chmod that fixes it."""
    path = write_credentials(
        tmp_path / "c.toml", {"default": {"username": "u", "password": "p"}}, mode=mode
    )
    with pytest.raises(ConfigError, match=rf"mode {mode:04o}.*chmod 600"):
        load_credentials(path)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o440, 0o640])
def test_a_credentials_file_its_group_can_read_is_taken(tmp_path: Path, mode: int) -> None:
    """0440 is how a Kubernetes Secret volume with the pod's fsGroup arrives."""
    path = write_credentials(
        tmp_path / "c.toml", {"default": {"username": "u", "password": "p"}}, mode=mode
    )
    creds = load_credentials(path)
    assert creds.of("any") is not None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[default]\nusername = "u"\npassword = "hunter2"\nport = 3\n', "unknown setting"),
        ('[default]\nusername = "u"\n', "password"),
        ('[default]\nusername = "u"\npassword = "hunter2\n', "not valid TOML"),
    ],
)
def test_a_malformed_credentials_file_is_one_line_without_the_password(
    tmp_path: Path, text: str, words: str
) -> None:
    """Unknown key, missing password, broken TOML: named, the password never quoted."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        load_credentials(path)
    assert words in str(err.value)
    assert "hunter2" not in str(err.value)


def test_a_bmc_without_credentials_stops_the_start(tmp_path: Path) -> None:
    """No entry for the node and no [default]: the collector refuses to start (exit 2)."""
    from collector.service import Collector  # noqa: PLC0415

    creds = write_credentials(
        tmp_path / "c.toml", {"nodes": {"n1": {"username": "u", "password": "p"}}}
    )
    s = _settings(
        tmp_path,
        f'db_path = "{tmp_path / "db.sqlite"}"\n[redfish]\ncredentials_file = "{creds}"\n'
        '[[redfish.bmcs]]\nnode = "n1"\nurl = "http://127.0.0.1:1"\n'
        '[[redfish.bmcs]]\nnode = "n2"\nurl = "http://127.0.0.1:2"\n',
    )
    with pytest.raises(ConfigError, match=r"node 'n2' and no \[default\]") as err:
        Collector(s)
    assert err.value.exit_code == 2
