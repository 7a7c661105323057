"""Start a throw-away PostgreSQL server on this machine, for the demo, benchmarks and tests.

:class:`LocalPostgres` runs Debian's (or any) PostgreSQL binaries — ``initdb``, ``pg_ctl`` —
against a cluster in a directory of its own, listening on a loopback port with ``trust``
authentication for local connections only, and creates one database. It is the same
PostgreSQL a site runs (see ``deploy/README.md``), just not configured for production:
``fsync`` stays on (the durability tests rely on it), but the cluster has no replica, no
password and no tuning.

PostgreSQL refuses to run as root. When this process is root the cluster is created and run
as the ``postgres`` system user (Debian's ``postgresql`` package creates it) in a directory
under ``$TMPDIR`` that user can reach; the ``data_dir`` given then holds only the server's log.

``python -m collector.localpg [--port N] [--data-dir D] [--db NAME]`` runs one in the
foreground until Ctrl-C or SIGTERM and prints its URL.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Final, Self

from collector.localbroker import free_port, wait_for_port
from shared.errors import CapwatchError

__all__ = ["SUPERUSER", "LocalPostgres", "find_pg_bin", "main"]

SUPERUSER: Final = "capwatch"
"""The cluster's superuser name (``initdb -U``), whoever runs the server."""

_INSTALL_HINT: Final = (
    "PostgreSQL is not installed: `apt-get install postgresql` (Debian/Ubuntu), "
    "or put initdb and pg_ctl on PATH"
)


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: from PATH, else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found.sort(key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0)
    return found[-1] if found else None


_WAIT_S: Final = 300
"""How long ``pg_ctl`` waits for a start (crash recovery included) or a stop (the shutdown
checkpoint writes every dirty buffer): its default, 60 s, ran out on a loaded 2-core machine."""


class LocalPostgres:
    """One PostgreSQL cluster on ``host:port``, with database ``database`` created.

    ``url`` is what ``collector --db`` takes. ``restart()`` stops the server (fast shutdown,
    so open connections are cut as in a real restart) and starts it again on the same port;
    ``kill()`` sends SIGKILL to the postmaster, as a crash would.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        database: str = "capwatch",
        bin_dir: Path | None = None,
    ) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise CapwatchError(_INSTALL_HINT)
        self.bin_dir = found
        self.host = host
        self.port = port or free_port(host)
        self.database = database
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None
        if self._run_as is not None:
            try:
                pwd.getpwnam(self._run_as)
            except KeyError:
                raise CapwatchError(
                    "PostgreSQL refuses to run as root and there is no `postgres` user: "
                    "`apt-get install postgresql` creates it, or run as an unprivileged user"
                ) from None
            # A directory the postgres user can reach, whatever the permissions above
            # data_dir (pytest's tmp_path is 0700 root).
            home = Path(tempfile.mkdtemp(prefix="capwatch-pg-"))
            home.chmod(0o755)
            self.cluster_dir = home / "cluster"
        else:
            self.cluster_dir = data_dir / "cluster"
        self._started = False

    # ----------------------------------------------------------------------------- paths
    @property
    def url(self) -> str:
        """``postgresql://capwatch@host:port/database``."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The URL of another database on this server."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        """The server's own log."""
        return self.data_dir / "postgresql.log"

    # ------------------------------------------------------------------------- processes
    def _run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            user=self._run_as,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=check,
            cwd="/",
        )

    def _initdb(self) -> None:
        if (self.cluster_dir / "PG_VERSION").exists():
            return
        self.cluster_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            shutil.chown(self.cluster_dir.parent, user=self._run_as)
        try:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.cluster_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise CapwatchError(f"initdb failed: {exc.stderr.strip()[-400:]}") from None

    def _log_file(self) -> Path:
        # The server writes its log as the user it runs as.
        if self._run_as is None:
            return self.log_path
        return self.cluster_dir.parent / "postgresql.log"

    def start(self) -> None:
        """initdb (first time), start the server, wait for it, create the database."""
        if self._started:
            return
        self._initdb()
        options = (
            f"-c listen_addresses={self.host} -p {self.port} "
            f"-c unix_socket_directories='' -c max_connections=200 "
            f"-c shared_buffers=128MB"
        )
        try:
            self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.cluster_dir),
                    "-l",
                    str(self._log_file()),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(_WAIT_S),
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise CapwatchError(
                f"PostgreSQL did not start: {exc.stdout.strip()[-300:]} (log: {self._log_file()})"
            ) from None
        self._started = True
        wait_for_port(self.host, self.port, timeout_s=30.0)
        self._create_database(self.database)

    def _create_database(self, name: str, icu_locale: str | None = None) -> None:
        import psycopg  # noqa: PLC0415  # the collector extra; not needed to import this module
        from psycopg import sql  # noqa: PLC0415

        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if icu_locale is not None:
            # ICU's collation, as a site's database made with its distribution's defaults
            # (en_US.UTF-8) compares: by language rules, not bytes. A locale of its own
            # needs template0 (https://www.postgresql.org/docs/15/sql-createdatabase.html).
            create += sql.SQL(" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                sql.Literal(icu_locale)
            )
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                try:
                    conn.execute(create)
                except psycopg.Error as exc:
                    raise CapwatchError(
                        f"cannot create database {name!r}: {str(exc).strip()}"
                    ) from None

    def create_database(self, name: str, *, icu_locale: str | None = None) -> str:
        """Create (if missing) another database on this server; its URL. ``icu_locale``
        (``en-US``...): its default collation that ICU locale's (PostgreSQL 15 built with
        ICU), not the cluster's ``C``."""
        self._create_database(name, icu_locale)
        return self.url_for(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and disconnect)."""
        if not self._started:
            return
        self._started = False
        self._run(
            [
                *(str(self.bin_dir / "pg_ctl"), "-D", str(self.cluster_dir), "-m", mode),
                *("-w", "-t", str(_WAIT_S), "stop"),
            ],
            check=False,
        )
        self._copy_log()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (the next start runs recovery)."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        self._started = False
        # Children of a killed postmaster exit on their own; a new start waits for them.

    def restart(self, downtime_s: float = 0.0) -> None:
        """Stop (fast), stay down ``downtime_s``, start again on the same port."""
        self.stop()
        if downtime_s:
            time.sleep(downtime_s)
        self.start()

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        pidfile = self.cluster_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().splitlines()[0])
        return None

    def _copy_log(self) -> None:
        if self._run_as is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(self._log_file(), self.log_path)

    def cleanup(self) -> None:
        """Stop and remove the cluster (when it lives outside ``data_dir``)."""
        self.stop()
        if self._run_as is not None:
            shutil.rmtree(self.cluster_dir.parent, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m collector.localpg",
        description=(
            "Run a throw-away PostgreSQL server in the foreground until Ctrl-C (demo and tests: "
            "trust authentication on loopback, no replica). Prints the URL for collector --db."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--db", default="capwatch", help="database to create (default capwatch)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="cluster and log directory (default: $TMPDIR/capwatch-pg-PORT)",
    )
    parser.add_argument(
        "--url-file", type=Path, default=None, help="write the URL to this file once ready"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m collector.localpg``."""
    args = _parse_args(argv)
    port: int = args.port or free_port(args.host)
    data_dir: Path = args.data_dir or Path(tempfile.gettempdir()) / f"capwatch-pg-{port}"
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with LocalPostgres(data_dir, host=args.host, port=port, database=args.db) as server:
            print(server.url, flush=True)
            if args.url_file is not None:
                args.url_file.write_text(server.url + "\n")
            while server.pid is not None and _alive(server.pid):
                time.sleep(0.5)
            print(f"localpg: server exited (log: {server.log_path})", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    except CapwatchError as exc:
        print(f"localpg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
