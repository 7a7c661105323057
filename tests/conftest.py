"""Fixtures shared by all tests: a real Mosquitto on a free loopback port.

Every test that uses a broker carries the ``integration`` marker (added here for users of
the ``mosquitto`` fixture), so ``-m "not integration"`` runs the rest in seconds. When
Mosquitto is missing those tests are skipped, and the run ends with one loud line saying
how many and the command that fixes it; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from collector.localbroker import (
    BrokerProcess,
    EmbeddedBroker,
    MosquittoBroker,
    amqtt_available,
    find_mosquitto,
)
from collector.localpg import LocalPostgres, find_pg_bin
from collector.natsbroker import NatsBroker, find_nats_server
from collector.paths import StoreTarget, parse_target
from shared.errors import CapwatchError
from tests.helpers import (
    NO_MOSQUITTO,
    NO_NATS,
    NO_POSTGRES,
    NO_PROMETHEUS,
    skip_without_mosquitto,
    skip_without_nats,
    skip_without_postgres,
)
from tests.slurm import SlurmCluster, slurm_missing

BROKERS: Final = ("mosquitto", "nats", "embedded")
"""The brokers the subscriber's conformance tests run against (the ``broker`` fixture)."""


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MosquittoBroker]:
    """A running Mosquitto with persistence in ``tmp_path``; stopped after the test.

    ``persistence`` of :class:`MosquittoBroker` through indirect parametrisation:
    ``@pytest.mark.parametrize("mosquitto", [{"persistence": False}], indirect=True)``.
    """
    if find_mosquitto() is None:
        skip_without_mosquitto()
    options: dict[str, bool] = getattr(request, "param", {})
    persistence = options.get("persistence", True)
    with MosquittoBroker(tmp_path / "broker", persistence=persistence) as broker:
        yield broker


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsBroker]:
    """A running NATS server (JetStream + MQTT) with its store in ``tmp_path``."""
    if find_nats_server() is None:
        skip_without_nats()
    with NatsBroker(tmp_path / "nats") as broker:
        yield broker


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real one-node Slurm (munged, slurmctld, slurmd; tests/slurm.py) for the whole
    session; skipped without Debian's munge and slurm-wlm (failed under ``CI=true``)."""
    missing = slurm_missing()
    if missing:
        message = (
            f"Slurm is not installed ({', '.join(missing)} missing; "
            "apt-get install munge slurm-wlm)"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{message}; .ci/run must install it")
        pytest.skip(message)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """Each broker capwatch is tested with, in turn: Mosquitto, NATS, the embedded amqtt.

    A test that needs what one of them documentedly lacks checks its class and skips.
    """
    kind: str = request.param
    found: BrokerProcess
    if kind == "mosquitto":
        if find_mosquitto() is None:
            skip_without_mosquitto()
        found = MosquittoBroker(tmp_path / "broker")
    elif kind == "nats":
        if find_nats_server() is None:
            skip_without_nats()
        found = NatsBroker(tmp_path / "nats")
    else:
        if not amqtt_available():
            pytest.fail("amqtt is not installed: it is a dev dependency (pip install -e .[dev])")
        found = EmbeddedBroker(tmp_path / "amqtt")
    with found:
        yield found


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """One real PostgreSQL for the whole run (initdb costs seconds); tests take a fresh
    database each through :func:`postgres_url`."""
    if find_pg_bin() is None:
        skip_without_postgres()
    with LocalPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL of the test's own, for a test that SIGKILLs the server: the crash
    recovery that follows replays the WAL written since the last checkpoint, which on the
    session's server (every test's writes) took minutes on a loaded machine, long enough that
    every later test found it still starting up. A fresh cluster replays only the test's."""
    if find_pg_bin() is None:
        skip_without_postgres()
    with LocalPostgres(tmp_path / "postgres") as server:
        yield server


_databases = itertools.count()


COLLATED_LOCALE: Final = "en-US"
"""The ICU locale of :func:`collated_postgres_url`'s databases: text compared as a site's
database made with its distribution's defaults (``en_US.UTF-8``) compares it (``gpu_2`` <
``gpu-10`` < ``GPU-3`` < ``gpu.a``), not as bytes (SQLite, Python's ``str``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg-icu-locale",
        default=None,
        metavar="LOCALE",
        help="create every test database of PostgreSQL with this ICU locale's collation "
        f"(e.g. {COLLATED_LOCALE}, as most sites' databases compare text), not the C of the "
        "tests' cluster",
    )


def _new_database(server: LocalPostgres, icu_locale: str | None) -> str:
    name = f"test_{next(_databases)}"
    if icu_locale is None:
        return server.create_database(name)
    try:
        return server.create_database(name, icu_locale=icu_locale)
    except CapwatchError as exc:  # PostgreSQL < 15, or built without ICU
        pytest.skip(f"no database with the ICU collation {icu_locale}: {exc}")


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the session's PostgreSQL (its collation the
    cluster's C, or ``--pg-icu-locale``'s)."""
    return _new_database(postgres_server, request.config.getoption("--pg-icu-locale"))


@pytest.fixture
def collated_postgres_url(postgres_server: LocalPostgres) -> str:
    """The URL of a new, empty database whose default collation is ICU's
    :data:`COLLATED_LOCALE`, not C."""
    return _new_database(postgres_server, COLLATED_LOCALE)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    """Each backend in turn, as ``--db`` takes it: a SQLite file in ``tmp_path`` (not yet
    created), then a fresh empty PostgreSQL database. ``str()`` of either is the ``--db``
    argument."""
    if request.param == "sqlite":
        return tmp_path / "c.db"
    url: str = request.getfixturevalue("postgres_url")
    return parse_target(url)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql-collated", marks=pytest.mark.integration)]
)
def collated_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    """As :func:`store_url`, the PostgreSQL database's collation :data:`COLLATED_LOCALE`
    (:func:`collated_postgres_url`): what compares names as bytes on SQLite must on it."""
    if request.param == "sqlite":
        return tmp_path / "c.db"
    return parse_target(request.getfixturevalue("collated_postgres_url"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a broker are integration tests, whatever module they live in."""
    for item in items:
        if {"mosquitto", "nats", "broker", "postgres_server", "slurm"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.integration)


def _stop_orphaned_sqlite_threads() -> int:
    """Stop the worker thread of each aiosqlite connection nobody closed; how many there were.

    aiosqlite's thread is not a daemon and stops only when its connection is closed. A
    connection dropped unclosed under ``filterwarnings = error`` raises its ResourceWarning in
    ``Connection.__del__`` before that method stops the thread (aiosqlite/core.py), so the
    thread waits on its queue for ever and the interpreter never exits: one leak hung a CI
    run until its time ran out. Queueing aiosqlite's own stop sentinel ends each such thread,
    so a leak fails its test (the warning) and the run ends."""
    try:  # the agent's own test environment (scripts/test-nvml-min.sh) has no aiosqlite
        import aiosqlite.core  # noqa: PLC0415 - only needed at the end of the session
    except ImportError:
        return 0
    worker = aiosqlite.core._connection_worker_thread
    sentinel = aiosqlite.core._STOP_RUNNING_SENTINEL
    stopped = 0
    for thread in threading.enumerate():
        if thread.is_alive() and getattr(thread, "_target", None) is worker:
            queue = thread._args[0]  # type: ignore[attr-defined]
            queue.put_nowait((None, lambda: sentinel))
            stopped += 1
    return stopped


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An SQLite connection still open when every test has run is a leak: say so, fail the
    run, and stop its thread so the process can exit."""
    stopped = _stop_orphaned_sqlite_threads()
    if stopped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"!!! {stopped} SQLite connection(s) were never closed (their threads are "
                "stopped now); find the test whose Store was not closed",
                red=True,
                bold=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_MISSING_PEERS: Final = (
    (NO_MOSQUITTO, "integration tests", "Mosquitto is not installed", "mosquitto"),
    (NO_NATS, "broker conformance tests", "nats-server is not installed", "nats-server"),
    (NO_POSTGRES, "PostgreSQL tests", "PostgreSQL is not installed", "postgresql"),
    (NO_PROMETHEUS, "metrics tests", "Prometheus (promtool) is not installed", "prometheus"),
)
"""Per real peer: the text in its skips (tests/helpers.py), the tests it skips, why, and the
Debian package that fixes it."""


def pytest_unconfigure(config: pytest.Config) -> None:
    """Say loudly, as the very last lines, when integration tests were skipped for want of a
    real peer (every skip through the ``skip_without_*`` helpers of :mod:`tests.helpers`)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skips = [str(getattr(r, "longrepr", "")) for r in reporter.stats.get("skipped", [])]
    for marker, tests, why, package in _MISSING_PEERS:
        n = sum(marker in text for text in skips)
        if n:
            reporter.write_line(
                f"!!! {n} {tests} were SKIPPED: {why}. "
                f"Fix: sudo apt-get install -y {package}   (then run scripts/test.sh again)",
                red=True,
                bold=True,
            )
