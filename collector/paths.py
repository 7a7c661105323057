"""Where the collector keeps its store unless told otherwise, and which store a setting names.

Read by the settings (``db_path``, ``store.url``) and by the commands' fast path, which builds
no settings object (no pydantic): a module of its own, so that neither imports the other nor
the store.

Which store: a SQLite file, or a PostgreSQL database named by a ``postgresql://`` URL.

``--db`` and the settings (``db_path``, ``[store] url``) give text; :func:`parse_target`
turns it into a :class:`~pathlib.Path` (a SQLite file, created by ``collector run``) or a
:class:`PgTarget`. Any other ``scheme://`` is refused: without this, ``--db
postgresql://...`` was a SQLite file named ``./postgresql:/...``, created empty and
answering with empty figures.

A password never travels in the URL (it would be on the command line, in ``ps``, in the
logs): libpq reads ``PGPASSWORD`` or ``~/.pgpass`` itself, or ``[store] password_file``
names a file holding it. ``str(target)`` is the URL without its password, so every log line
and error that names the store shows it redacted (a password given anyway is removed, and
refused by :func:`parse_target`).

Imports nothing heavy: commands parse their ``--db`` before any store module loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeAlias

from shared.errors import ConfigError
from shared.urls import has_password, redact

__all__ = [
    "DEFAULT_DB_PATH",
    "NO_FILE",
    "SCHEMES",
    "PgTarget",
    "StoreTarget",
    "is_url",
    "names_no_file",
    "parse_target",
    "redact",
]

DEFAULT_DB_PATH: Final = Path("capwatch.db")
"""The store, relative to the working directory (``db_path``, ``--db``)."""


SCHEMES: Final = ("postgresql", "postgres")
"""URL schemes of the PostgreSQL backend (libpq accepts both)."""

_URL: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A PostgreSQL store: ``url`` (no password in it) and where its password comes from.

    ``str()`` is the URL with any password removed: what logs and errors show.
    """

    url: str
    password_file: Path | None = field(default=None)

    def __str__(self) -> str:
        return redact(self.url)

    def password(self) -> str | None:
        """The password from ``password_file`` (its first line), or ``None`` to let libpq
        find one (``PGPASSWORD``, ``~/.pgpass``)."""
        if self.password_file is None:
            return None
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"setting 'store.password_file' ({self.password_file}): cannot read it "
                f"({exc.strerror}): point it at a file this user can read",
                field="store.password_file",
            ) from None
        except UnicodeDecodeError:
            # Neither the bytes nor their position: they are the password's.
            raise ConfigError(
                f"setting 'store.password_file' ({self.password_file}): not UTF-8 text: save "
                "the password as UTF-8",
                field="store.password_file",
            ) from None
        return text.splitlines()[0].strip() if text.strip() else ""


StoreTarget: TypeAlias = Path | PgTarget
"""Where the store is: a SQLite file or a PostgreSQL database."""


def is_url(text: str) -> bool:
    """Whether ``text`` is a ``scheme://`` URL rather than a file path."""
    return _URL.match(text) is not None


NO_FILE: Final = "names no file: give the SQLite file's path, e.g. capwatch.db"
"""Why a store path such as ``""``, ``.`` or ``/`` is refused (:func:`names_no_file`)."""


def names_no_file(path: str | Path) -> bool:
    """Whether ``path`` names no file a SQLite store could be (``""`` is ``.``, then ``/``):
    the store's lock file and its WAL are named after the file."""
    return not Path(path).name


def parse_target(
    text: str | Path, *, field: str = "--db", password_file: Path | None = None
) -> StoreTarget:
    """``text`` as a store: a ``postgresql://`` URL or a SQLite file path.

    :class:`ConfigError` naming ``field`` for any other URL scheme, a URL that carries
    a password, or a path that :func:`names_no_file`.
    """
    if isinstance(text, Path):
        text = str(text)
    match = _URL.match(text)
    if match is None:
        if names_no_file(text):
            raise ConfigError(f"{field} {text!r} {NO_FILE}", field=field)
        return Path(text)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"{field}: {scheme}:// is not a store capwatch can use ({redact(text)}): give a "
            "SQLite file path (capwatch.db) or a postgresql://user@host:port/database URL",
            field=field,
        )
    try:
        secret = has_password(text)
    except ValueError as exc:
        raise ConfigError(f"{field}: not a valid URL ({exc})", field=field) from None
    if secret:
        raise ConfigError(
            f"{field}: the URL carries a password ({redact(text)}): take it out and give it "
            "in PGPASSWORD, ~/.pgpass or the file named by store.password_file",
            field=field,
        )
    return PgTarget(text, password_file)
