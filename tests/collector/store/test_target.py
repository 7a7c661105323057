"""Which store ``--db`` and the settings name: a SQLite path, a postgresql:// URL, or a line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector.cli import main
from collector.cli._args import read_settings_from_args, settings_from_args
from collector.cli.query import add_parser
from collector.paths import PgTarget, parse_target, redact
from shared.errors import ConfigError
from tests.helpers import SET_WAYS, set_one_way


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CAPWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # a store created by mistake would appear here


def test_a_postgresql_url_is_a_pg_target_and_a_path_stays_a_file() -> None:
    url = "postgresql://capwatch@db.example:5432/capwatch?sslmode=require"
    assert parse_target(url) == PgTarget(url)
    assert parse_target("postgres://u@h/d") == PgTarget("postgres://u@h/d")
    assert parse_target("capwatch.db") == Path("capwatch.db")
    assert parse_target("/var/lib/capwatch/x:y.db") == Path("/var/lib/capwatch/x:y.db")


@pytest.mark.parametrize(
    "url", ["mysql://u@h/d", "postgres+foo://u@h/d", "sqlite:///tmp/c.db", "HTTP://h/x"]
)
def test_another_scheme_is_one_line_and_exit_2(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any other scheme:// is refused, naming --db and what it takes; nothing is created."""
    assert main(["query", "--db", url]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "--db:" in err
    assert "postgresql://" in err
    assert list(tmp_path.iterdir()) == []


def test_a_password_in_the_url_is_refused_and_never_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--db would put it in ps and the shell history: refused, shown as ***."""
    assert main(["query", "--db", "postgresql://u:hunter2@h/d"]) == 2
    assert main(["query", "--db", "postgresql://u@h/d?password=hunter2"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert err.count("PGPASSWORD") == 2


def test_redact_hides_the_password_wherever_it_is() -> None:
    assert redact("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
    assert redact("postgresql://u@h/d?password=p&sslmode=x") == (
        "postgresql://u@h/d?password=***&sslmode=x"
    )
    assert str(PgTarget("postgresql://u@h/d")) == "postgresql://u@h/d"


def test_a_password_key_in_any_case_is_refused_and_never_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """?PASSWORD=hunter2 passed as no password: the driver refused the key, and the error
    echoed the URL, password and all ('cannot open database ...?PASSWORD=hunter2')."""
    for url in ("postgresql://u@h/d?PASSWORD=hunter2", "postgresql://u@h/d?%50assword=hunter2"):
        assert main(["query", "--db", url]) == 2
        assert "***" in redact(url)
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert err.count("PGPASSWORD") == 2


def test_a_url_with_a_password_in_another_setting_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CAPWATCH_DB_PATH (or db_path) given a PostgreSQL URL is refused, and the settings'
    error line echoes the value it refuses: it printed 'postgresql://u:hunter2@h/d'."""
    monkeypatch.setenv("CAPWATCH_DB_PATH", "postgresql://u:hunter2@h/d")
    assert main(["query"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "'postgresql://u:***@h/d'" in err
    assert "store.url" in err


def test_redact_keeps_the_slashes_of_a_url_with_no_host() -> None:
    """urlunsplit wrote postgresql:///d?host=h&password=p as postgresql:/d?... (no URL)."""
    assert redact("postgresql:///d?host=/run/pg&password=p") == (
        "postgresql:///d?host=/run/pg&password=***"
    )


def test_redact_leaves_a_url_without_a_password_as_given() -> None:
    """`migrate --to sqlite:///x` named it sqlite:/x (urlunsplit drops an empty netloc)."""
    for url in ("sqlite:///var/lib/capwatch/x.db", "postgresql:///capwatch?host=/run/pg"):
        assert redact(url) == url


def test_an_unreachable_server_is_one_line_and_no_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--db postgresql://...` once created ./postgresql:/... and answered with empty figures."""
    assert main(["query", "--db", "postgresql://capwatch@127.0.0.1:1/capwatch", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert "cannot open database 'postgresql://capwatch@127.0.0.1:1/capwatch'" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_the_settings_take_store_url_and_refuse_a_url_in_db_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[store] url selects PostgreSQL; --db PATH wins over it; CAPWATCH_DB_PATH holds paths."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    config = tmp_path / "c.toml"
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config.write_text(f'[store]\nurl = "postgresql://cw@h/d"\npassword_file = "{secret}"\n')
    args = parser.parse_args(["query", "--config", str(config)])
    target = settings_from_args(args).store_target
    assert target == PgTarget("postgresql://cw@h/d", secret)
    assert isinstance(target, PgTarget)
    assert target.password() == "s3cret"
    flag = parser.parse_args(["query", "--config", str(config), "--db", "here.db"])
    assert settings_from_args(flag).store_target == Path("here.db")
    monkeypatch.setenv("CAPWATCH_DB_PATH", "postgresql://cw@h/d")
    with pytest.raises(ConfigError, match=r"db_path.*store\.url"):
        read_settings_from_args(parser.parse_args(["query"]))
    monkeypatch.delenv("CAPWATCH_DB_PATH")
    config.write_text('[store]\nurl = "capwatch.db"\n')
    with pytest.raises(ConfigError, match=r"store\.url.*postgresql://"):
        settings_from_args(args)


def test_an_unreadable_password_file_names_the_setting(tmp_path: Path) -> None:
    target = PgTarget("postgresql://u@h/d", tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"store\.password_file"):
        target.password()


def test_a_password_file_that_is_not_utf8_names_the_setting_not_its_bytes(tmp_path: Path) -> None:
    """A Latin-1 password file: one line naming the setting and the fix, no byte of it shown."""
    secret = tmp_path / "pw"
    secret.write_bytes("s\u00e9cret\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"store\.password_file.*not UTF-8") as info:
        PgTarget("postgresql://u@h/d", secret).password()
    assert "0xe9" not in str(info.value)


@pytest.mark.parametrize("how", SET_WAYS)
@pytest.mark.parametrize("db", ["", ".", "/"])
def test_a_store_path_that_names_no_file_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
    db: str,
) -> None:
    """`collector run --db ''` (or an empty CAPWATCH_DB_PATH, `db_path = ""`) once reached the
    store's lock file, named after the file: "PosixPath('.') has an empty name", a traceback,
    exit 1; a read command looked for a database at '.'."""
    given = set_one_way(how, monkeypatch, tmp_path / "c.toml", key="db_path", flag="--db", value=db)
    for command in (["run", "--port", "1"], ["query"]):
        assert main([*command, *given]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert "names no file" in err
        assert ("--db" if how == "flag" else "'db_path'") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
