"""The BMCs' user names and passwords: ``redfish.credentials_file``.

A TOML (``.toml``) or JSON (``.json``) file that others cannot read and group cannot write
(0600, 0400, or 0440/0640 for a group of the collector's own: a Kubernetes Secret volume with the
pod's ``fsGroup`` is mounted 0440 whatever its ``defaultMode``, the kubelet adding group read
for that group); a file others can read, or group can write, is refused, as OpenSSH refuses a
private key::

    [default]                       # every BMC without its own entry
    username = "capwatch"
    password = "..."

    [nodes."gpu-017"]               # this node's BMC
    username = "admin"
    password = "..."

Passwords are :class:`~pydantic.SecretStr`: never in a log line, a ``repr()`` or an error.
Read once, at start; a changed file is read at the next start.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shared.errors import ConfigError
from shared.files import TOO_DEEP, parse_json, parse_toml
from shared.settings import format_validation_error

__all__ = ["BmcCredentials", "Credentials", "load_credentials"]

_FIELD: Final = "redfish.credentials_file"
_MAX_BYTES: Final = 16 << 20


class BmcCredentials(NamedTuple):
    """One BMC's user and password (the password stays a secret until it is sent)."""

    username: str
    password: SecretStr


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    username: str = Field(min_length=1, max_length=256)
    password: SecretStr = Field(min_length=1, max_length=1024)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    default: _Entry | None = None
    nodes: dict[str, _Entry] = Field(default={}, max_length=1_000_000)


class Credentials:
    """The credentials file as read: :meth:`of` a node's BMC."""

    def __init__(self, default: BmcCredentials | None, nodes: dict[str, BmcCredentials]) -> None:
        self._default = default
        self._nodes = nodes

    def of(self, node: str) -> BmcCredentials | None:
        """``node``'s own entry, else the default (``None``: neither)."""
        return self._nodes.get(node, self._default)

    def check_covers(self, nodes: Iterable[str], path: Path) -> None:
        """Raise :class:`ConfigError` naming the first node without credentials."""
        for node in nodes:
            if self.of(node) is None:
                raise ConfigError(
                    f"setting '{_FIELD}' ({path}) has no entry for the BMC of node {node!r} "
                    f'and no [default]: add [nodes."{node}"] or [default] with username and '
                    "password",
                    field=_FIELD,
                )

    def __repr__(self) -> str:
        return f"Credentials(default={self._default is not None}, nodes={len(self._nodes)})"


def load_credentials(path: Path) -> Credentials:
    """Read and check ``path``; a :class:`ConfigError` (one line, no secret) when it is
    missing, readable by others, malformed or holds unknown keys."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(
            f"setting '{_FIELD}' ({path}) must be a .toml or .json file, not "
            f"{suffix or 'no suffix'!r}",
            field=_FIELD,
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(
            f"setting '{_FIELD}' ({path}) cannot be opened ({exc.strerror}): point it at the "
            "BMC credentials file, owned by the collector's user, mode 0600",
            field=_FIELD,
        ) from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"setting '{_FIELD}' ({path}) is not a regular file", field=_FIELD)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o027:  # others: any access; group: write (group read: see the docstring)
            raise ConfigError(
                f"setting '{_FIELD}' ({path}) is readable by others or writable by group "
                f"(mode {mode:04o}): it holds passwords; chmod 600 {path}",
                field=_FIELD,
            )
        raw = f.read(_MAX_BYTES + 1)
    if len(raw) > _MAX_BYTES:
        raise ConfigError(f"setting '{_FIELD}' ({path}) is over 16 MiB", field=_FIELD)
    try:
        doc = parse_json(raw) if suffix == ".json" else parse_toml(raw.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The parser's message quotes no value, only where it stopped.
        where = (
            f"line {exc.lineno}"
            if isinstance(exc, json.JSONDecodeError) and exc.msg != TOO_DEEP
            else str(exc)
        )
        raise ConfigError(
            f"setting '{_FIELD}' ({path}) is not valid {suffix[1:].upper()} ({where})",
            field=_FIELD,
        ) from None
    try:
        parsed = _File.model_validate(doc)
    except ValidationError as exc:
        line = format_validation_error(
            exc,
            hint="keys: [default] and [nodes.NODE], each with username and password",
            model=_File,
        )
        raise ConfigError(f"setting '{_FIELD}' ({path}): {line}", field=_FIELD) from None

    def creds(e: _Entry) -> BmcCredentials:
        return BmcCredentials(e.username, e.password)

    return Credentials(
        None if parsed.default is None else creds(parsed.default),
        {node: creds(e) for node, e in parsed.nodes.items()},
    )
