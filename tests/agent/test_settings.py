"""AgentSettings: NIC patterns and the fake backend's MIG layouts from the environment and a
file, down to the sampler."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.service import build_sampler
from agent.settings import AgentSettings
from shared.clock import FakeClock
from shared.errors import ConfigError
from shared.settings import load_settings
from tests.agent.helpers import REPO
from tests.agent.test_host import FakeHost
from tests.helpers import SET_WAYS, set_one_way


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CAPWATCH_* variable of the developer's shell leaks into these tests."""
    for name in (
        "CAPWATCH_NIC_INCLUDE",
        "CAPWATCH_NIC_EXCLUDE",
        "CAPWATCH_BUFFER_S",
        "CAPWATCH_FAKE_MIG",
        "CAPWATCH_GPU_BACKEND",
        "CAPWATCH_FAKE_GPUS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("bond*, br-data", ("bond*", "br-data")),
        ("bond*", ("bond*",)),
        ('["bond*", "ib?"]', ("bond*", "ib?")),
        ("", ()),
    ],
)
def test_nic_patterns_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: tuple[str, ...]
) -> None:
    """CAPWATCH_NIC_INCLUDE takes comma-separated globs or a JSON list."""
    monkeypatch.setenv("CAPWATCH_NIC_INCLUDE", env)
    monkeypatch.setenv("CAPWATCH_NIC_EXCLUDE", "eth1")
    settings = load_settings(AgentSettings)
    assert (settings.nic_include, settings.nic_exclude) == (expected, ("eth1",))


@pytest.mark.parametrize(
    "env",
    ["bond *", "a/b", '["bond*"', "[1]", '"ifb0"', '{"a": 1}', '["a", 1]', "a;b", "'x'", 'ifb0"'],
)
def test_bad_nic_pattern_is_one_config_error(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """A pattern that cannot be an interface name is refused, naming the setting."""
    monkeypatch.setenv("CAPWATCH_NIC_EXCLUDE", env)
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings)
    assert caught.value.field is not None
    assert caught.value.field.startswith("nic_exclude")
    assert "\n" not in str(caught.value)


def test_nic_patterns_reach_the_sampler(tmp_path: Path) -> None:
    """nic_include in a TOML file makes a virtual interface count in the inventory."""
    fake = FakeHost(tmp_path / "host")
    fake.nics["bond0"] = (1, 1, 0, 0, 0, 0)
    fake.nics["veth9"] = (1, 1, 0, 0, 0, 0)
    fake.write()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'nic_include = ["bond*"]\nproc_root = "{fake.proc}"\nsysfs_root = "{fake.sys}"\n'
        'gpu_backend = "none"\nnode_id = "n1"\n'
    )
    settings = load_settings(AgentSettings, config_file=config)
    sampler = build_sampler(settings, FakeClock())
    try:
        inventory = sampler.start()
    finally:
        sampler.close()
    assert [n.name for n in inventory.nics] == ["eth0", "bond0"]


def _env_file_lines(path: Path) -> dict[str, str]:
    """NAME=value of an env file, the commented-out ``#CAPWATCH_...=`` examples included."""
    pairs = {}
    for line in path.read_text().splitlines():
        text = line.removeprefix("#")
        if text.startswith("CAPWATCH_") and "=" in text:
            name, _, value = text.partition("=")
            pairs[name] = value
    return pairs


def test_deploy_agent_env_example_loads_with_every_example_uncommented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/agent.env.example, active and commented lines alike, loads as AgentSettings and
    documents the settings an operator sets: NIC globs, buffer, interval, broker."""
    pairs = _env_file_lines(REPO / "deploy" / "agent.env.example")
    for name, value in pairs.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(AgentSettings)
    assert settings.nic_include == ("bond*", "br-data")
    assert settings.nic_exclude == ("ib*",)
    assert (settings.node_id, settings.mqtt.username) == ("gpu-node-017", "gpu-node-017")
    assert (settings.interval_s, settings.buffer_s) == (5.0, 86_400.0)
    assert settings.spool_dir == Path("/var/lib/capwatch-agent")
    for documented in ("CAPWATCH_NIC_INCLUDE", "CAPWATCH_NIC_EXCLUDE", "CAPWATCH_BUFFER_S"):
        assert documented in pairs


@pytest.mark.parametrize("value", ["1e30", "inf", "-1", "604801"])
def test_buffer_s_is_bounded_to_a_week(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """CAPWATCH_BUFFER_S past a week (or negative, or not finite) is one error naming it."""
    monkeypatch.setenv("CAPWATCH_BUFFER_S", value)
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings)
    assert caught.value.field == "buffer_s"


def test_a_week_of_buffer_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound itself is a valid buffer: 604800 s at 5 s is 120960 samples."""
    monkeypatch.setenv("CAPWATCH_BUFFER_S", "604800")
    assert load_settings(AgentSettings).buffer_samples == 120_960


@pytest.mark.parametrize(
    "env",
    ["0=3g.40gb,2g.20gb,2g.20gb; 2=", '{"0": ["3g.40gb", "2g.20gb", "2g.20gb"], "2": []}'],
)
def test_fake_mig_layouts_from_the_environment(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """CAPWATCH_FAKE_MIG: GPU=profiles separated by ';', or a JSON object; an empty list is
    MIG mode without instances."""
    monkeypatch.setenv("CAPWATCH_GPU_BACKEND", "fake")
    monkeypatch.setenv("CAPWATCH_FAKE_GPUS", "3")
    monkeypatch.setenv("CAPWATCH_FAKE_MIG", env)
    settings = load_settings(AgentSettings)
    assert settings.fake_mig == {0: ("3g.40gb", "2g.20gb", "2g.20gb"), 2: ()}


@pytest.mark.parametrize(
    ("backend", "env", "message"),
    [
        ("fake", "3=7g.80gb", "GPU 3 is not one of the 2 fake GPUs (0..1)"),
        ("fake", "0=5g.50gb", "GPU 0: no H100 GPU instance profile '5g.50gb'"),
        ("fake", "0=4g.40gb,4g.40gb", "needs more than 7 slices"),
        ("fake", "0:7g.80gb", "names no GPU: write GPU=PROFILES"),
        # `--fake-mig 0=... --fake-mig 0=...`: the second silently replaced the first.
        ("fake", "0=1g.10gb;0=3g.40gb", "GPU 0 has two layouts: give one --fake-mig per GPU"),
        ("fake", "{0: 1}", "not a JSON object"),
        ("nvml", "0=7g.80gb", "MIG layouts are for the fake GPU backend"),
    ],
)
def test_bad_fake_mig_layout_is_one_config_error(
    monkeypatch: pytest.MonkeyPatch, backend: str, env: str, message: str
) -> None:
    """A layout an H100 cannot hold, a GPU the fake lacks, or a real backend: one line
    naming fake_mig and what to write."""
    monkeypatch.setenv("CAPWATCH_GPU_BACKEND", backend)
    monkeypatch.setenv("CAPWATCH_FAKE_GPUS", "2")
    monkeypatch.setenv("CAPWATCH_FAKE_MIG", env)
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings)
    assert caught.value.field == "fake_mig"
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        "q" * 10_000,  # echoed whole twice: as the value, and in "... names no GPU"
        "0=" + "x" * 10_000,  # and as the profile it does not know
        "x" * 10_000 + "=1g.10gb",  # a GPU index: in the field's name
        "0=" + "1g.10gb," * 2_000,  # every profile, in the list of what does not fit
    ],
)
def test_a_huge_fake_mig_value_is_quoted_cut_in_its_error(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    """A 10 KB value: the error line quotes its start and says how long it was (the whole
    value was echoed, twice: 20 KB of one line)."""
    monkeypatch.setenv("CAPWATCH_GPU_BACKEND", "fake")
    monkeypatch.setenv("CAPWATCH_FAKE_MIG", env)
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings)
    text = str(caught.value)
    assert f"{env[:64]}'... (" in text  # the value, or the GPU index of env2
    assert " characters)" in text
    assert len(text) < 500
    assert "\n" not in text


def test_fake_mig_table_reaches_the_sampler(tmp_path: Path) -> None:
    """fake_mig as a TOML table: the fake GPUs report MIG mode and those MIG devices."""
    config = tmp_path / "agent.toml"
    config.write_text(
        'gpu_backend = "fake"\nfake_gpus = 2\nnode_id = "n1"\n'
        '[fake_mig]\n1 = ["3g.40gb", "2g.20gb", "2g.20gb"]\n'
    )
    settings = load_settings(AgentSettings, config_file=config)
    sampler = build_sampler(settings, FakeClock())
    try:
        inventory = sampler.start()
        sample = sampler.sample()
    finally:
        sampler.close()
    assert [g.mig_mode for g in inventory.gpus] == [False, True]
    assert [m.profile for m in sample.gpus[1].mig] == ["3g.40gb", "2g.20gb", "2g.20gb"]
    assert sample.gpus[0].mig == ()


@pytest.mark.parametrize("how", SET_WAYS)
def test_an_empty_spool_dir_is_one_line_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """`--spool-dir ''`, an empty CAPWATCH_SPOOL_DIR or `spool_dir = ""` is Path(""): the
    agent once spooled into its working directory (`/` under systemd) without a word."""
    from agent.cli import main  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    given = set_one_way(
        how, monkeypatch, tmp_path / "a.toml", key="spool_dir", flag="--spool-dir", value=""
    )
    assert main(["run", "--gpu-backend", "none", "--port", "1", *given]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "'spool_dir' = '': is empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml"]


def test_a_buffer_must_outlast_two_sampling_intervals() -> None:
    """The floor is a minute or two intervals, the longer: at 60 s a 90 s buffer keeps one
    sample at most, dropped before the next if the broker missed a tick."""
    with pytest.raises(ConfigError) as caught:
        AgentSettings(node_id="n1", interval_s=60.0, buffer_s=90.0)
    assert caught.value.field == "buffer_s"
    assert "at least 2m" in str(caught.value)
    assert AgentSettings(node_id="n1", interval_s=60.0, buffer_s=120.0).buffer_samples == 2
    assert AgentSettings(node_id="n1", interval_s=5.0, buffer_s=60.0).buffer_samples == 12


@pytest.mark.parametrize("value", ["5", "{ a = 1 }", "[1]", '["bond*", 2]'])
def test_nic_globs_not_text_or_a_list_name_what_to_give(tmp_path: Path, value: str) -> None:
    """`nic_include = 5` in a config file said "Input should be a valid tuple" (probe11)."""
    config = tmp_path / "agent.toml"
    config.write_text(f"nic_include = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(AgentSettings, config_file=config)
    message = str(info.value)
    assert message.startswith("setting 'nic_include'"), message  # a table is not echoed
    assert "comma-separated (bond*,br-data) or a list of strings" in message
    assert "Value error" not in message
