"""A file a person points capwatch at, nested deeper than the standard library's recursive
parsers go (``a = [[[[...]]]]`` a few thousand deep: tomllib, json and PyYAML recurse per
level): one line naming the file, exit 2, as any other malformed file. It was a
``RecursionError`` traceback from every command that reads one."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.power.plan import load_plan
from collector.redfish.credentials import load_credentials
from shared.errors import ConfigError
from shared.webconfig import load_web_config
from tests.agent.helpers import run_agent
from tests.helpers import collector_cli

_DEPTH = 5_000
_TOML = "a = " + "[" * _DEPTH + "]" * _DEPTH + "\n"
_INLINE = "a = " + "{x = " * _DEPTH + "1" + "}" * _DEPTH + "\n"
_JSON = '{"a": ' + "[" * _DEPTH + "]" * _DEPTH + "}"
_YAML = "a: " + "[" * _DEPTH + "]" * _DEPTH + "\n"
_SAID = "nested too deeply"


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)  # the credentials file refuses more
    return str(path)


@pytest.mark.parametrize("text", [_TOML, _INLINE], ids=["arrays", "inline-tables"])
def test_commands_refuse_a_deep_toml_file_in_one_line(tmp_path: Path, text: str) -> None:
    """--config of any command, a cluster file, a plan: one line naming it, exit 2."""
    deep = _file(tmp_path, "deep.toml", text)
    db = str(tmp_path / "capwatch.db")
    for args in (
        ("query", "--config", deep, "--db", db),
        ("apply", "-f", deep, "--db", db, "--dry-run"),
        ("solve", "--config", deep),
    ):
        code, out, err = collector_cli(*args)
        assert (code, out) == (2, ""), args
        (line,) = err.splitlines()
        assert deep in line
        assert _SAID in line
    done = run_agent("sample", "--config", deep, "--gpu-backend", "none")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert deep in line
    assert _SAID in line


def test_a_deep_json_table_in_the_environment_is_one_line(tmp_path: Path) -> None:
    """A table given as JSON in a CAPWATCH_* variable, and the agent's JSON lists: one line
    naming the setting, exit 2."""
    for env in ({"CAPWATCH_MQTT": _JSON}, {"CAPWATCH_NIC_INCLUDE": "[" * _DEPTH + "]" * _DEPTH}):
        done = run_agent("sample", "--gpu-backend", "none", env=env)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert _SAID in line


def test_loaders_refuse_deep_json_toml_and_yaml_as_malformed(tmp_path: Path) -> None:
    """The plan (JSON, TOML), the BMCs' credentials (JSON, TOML) and the web config (YAML)."""
    for name, text in (("plan.json", _JSON), ("plan.toml", _TOML)):
        with pytest.raises(ConfigError, match=_SAID):
            load_plan(Path(_file(tmp_path, name, text)))
    for name, text in (("creds.json", _JSON), ("creds.toml", _TOML)):
        with pytest.raises(ConfigError, match=_SAID):
            load_credentials(Path(_file(tmp_path, name, text)))
    with pytest.raises(ConfigError, match=_SAID):
        load_web_config(Path(_file(tmp_path, "web.yml", _YAML)))
