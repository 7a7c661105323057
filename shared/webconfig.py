"""The web config file of both daemons' ``/metrics`` server: TLS and basic auth.

The format is Prometheus exporter-toolkit's (node_exporter's and dcgm-exporter's
``--web.config.file``, documented in exporter-toolkit's ``docs/web-configuration.md``), so a
site reuses the file it already has::

    tls_server_config:
      cert_file: /etc/capwatch/metrics.crt
      key_file: /etc/capwatch/metrics.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: /etc/capwatch/scrapers-ca.crt
      min_version: TLS12                              # TLS10 .. TLS13 (default TLS12)
    basic_auth_users:
      prometheus: $2b$12$...                          # bcrypt hash (htpasswd -nBC 12 "")

Supported keys are those; any other is refused with the list of known ones, as are a
missing or unreadable file, a bad hash, and client-certificate modes Python's TLS cannot do
(it always verifies a client certificate it asks for, so ``RequestClientCert`` and
``RequireAnyClientCert`` are refused). Every path (``/metrics``, ``/healthz``, ``/readyz``,
``/sd``) sits behind the same TLS and users, as exporter-toolkit wraps the whole handler.

Passwords are checked with bcrypt (constant time) once per user and password: a success
is remembered as the SHA-256 of the password beside the user's hash, and later requests
compare that digest with :func:`hmac.compare_digest` instead of paying bcrypt (~50 ms at
cost 10) on every scrape. An unknown user costs one bcrypt against a fixed hash too, so
timing does not tell which users exist (exporter-toolkit does both).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.errors import ConfigError
from shared.files import TOO_DEEP, FileTooLargeError, read_bounded

__all__ = ["BasicAuth", "WebConfig", "load_web_config"]

_DOC: Final = "see exporter-toolkit's web-configuration.md"
_TLS_KEYS: Final = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
)
_TOP_KEYS: Final = ("tls_server_config", "basic_auth_users")
_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH: Final = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert")
_BCRYPT: Final = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_DUMMY_HASH: Final = b"$2b$10$XI/rsA7ra/QqVepMwvfgkup/LAS6Orp/IfaFmewIZgstYydiQaJZW"
"""Checked against when the user is unknown (the result is thrown away)."""
_MAX_USERS: Final = 1024
_MAX_FILE_BYTES: Final = 1 << 20


@dataclass
class BasicAuth:
    """The users of ``basic_auth_users`` and the passwords already verified.

    :meth:`check` is called from the server's request threads; the cache of verified
    passwords is guarded by a lock (a dict write while another thread reads is safe in
    CPython, the lock keeps it so on any interpreter).
    """

    users: Mapping[str, bytes]
    """User name: bcrypt hash."""
    _verified: dict[tuple[str, bytes], bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value names a user with the right password."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        if hashed is None:
            _bcrypt_check(password, _DUMMY_HASH)
            return False
        digest = hashlib.sha256(password).digest()
        with self._lock:
            known = self._verified.get((user, hashed))
        if known is not None and hmac.compare_digest(known, digest):
            return True
        if not _bcrypt_check(password, hashed):
            return False
        with self._lock:
            self._verified[(user, hashed)] = digest
        return True

    def verified_users(self) -> frozenset[str]:
        """The users whose password is remembered as verified (no bcrypt on their next
        request)."""
        with self._lock:
            return frozenset(user for user, _ in self._verified)


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config: the server's TLS context (or ``None``) and its users (or
    ``None``: no authentication)."""

    tls: ssl.SSLContext | None
    auth: BasicAuth | None


def load_web_config(path: Path, *, field: str = "web_config_file") -> WebConfig:
    """Read and check ``path``; every mistake is one :class:`ConfigError` naming ``field``,
    the key at fault and the fix. Certificates and keys are loaded here, so a missing or
    mismatched one stops the daemon before it serves anything."""
    import yaml  # noqa: PLC0415 (only with a web config)

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{field} {path}: {what}", field=field)

    try:
        raw = read_bounded(path, _MAX_FILE_BYTES)
    except FileTooLargeError as exc:
        raise fail(f"larger than {_MAX_FILE_BYTES} bytes: is it the right file?") from exc
    except OSError as exc:
        raise fail(f"cannot read it ({exc.strerror}): give a readable file") from exc
    try:
        data: Any = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML ({_yaml_problem(exc)}): {_DOC}") from exc
    except RecursionError:  # PyYAML's composer recurses once per level
        raise fail(f"not valid YAML ({TOO_DEEP}): {_DOC}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail(f"must be a mapping of {', '.join(_TOP_KEYS)}: {_DOC}")
    _known(data, _TOP_KEYS, "", fail)
    tls = None
    if (tls_raw := data.get("tls_server_config")) is not None:
        tls = _tls_context(_mapping(tls_raw, "tls_server_config", fail), path.parent, fail)
    auth = None
    if (users_raw := data.get("basic_auth_users")) is not None:
        auth = BasicAuth(_users(_mapping(users_raw, "basic_auth_users", fail), fail))
    return WebConfig(tls=tls, auth=auth)


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's multi-line message as one line: ``line 2: expected ...``."""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return problem if mark is None else f"line {mark.line + 1}: {problem}"


def _mapping(value: object, key: str, fail: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{key} must be a mapping: {_DOC}")
    return value


def _known(data: Mapping[str, Any], known: tuple[str, ...], where: str, fail: Any) -> None:
    for key in data:
        if key not in known:
            raise fail(
                f"{where}{key} is not a key capwatch knows: remove it or use one of "
                f"{', '.join(known)}"
            )


def _text(tls: Mapping[str, Any], key: str, fail: Any) -> str | None:
    value = tls.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(f"tls_server_config.{key} must be a string")
    return value


def _tls_context(tls: Mapping[str, Any], base: Path, fail: Any) -> ssl.SSLContext:
    """An ``SSLContext`` as exporter-toolkit's ``ConfigToTLSConfig`` builds it."""
    _known(tls, _TLS_KEYS, "tls_server_config.", fail)
    cert, key = _text(tls, "cert_file", fail), _text(tls, "key_file", fail)
    if not cert:
        raise fail("tls_server_config.cert_file is missing: name the server's PEM certificate")
    if not key:
        raise fail("tls_server_config.key_file is missing: name the server's PEM private key")
    # Relative paths are relative to the config file, as exporter-toolkit resolves them.
    cert_path, key_path = base / cert, base / key
    for name, file in (("cert_file", cert_path), ("key_file", key_path)):
        if not file.is_file():
            raise fail(f"tls_server_config.{name} {file} does not exist: give a PEM file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise fail(
            f"tls_server_config cert_file {cert_path} and key_file {key_path} do not load "
            f"({exc}): give a PEM certificate and its unencrypted private key"
        ) from exc
    ctx.minimum_version = _version(tls, "min_version", "TLS12", fail)
    ctx.maximum_version = _version(tls, "max_version", "TLS13", fail)
    if ctx.minimum_version > ctx.maximum_version:
        raise fail("tls_server_config.min_version is above max_version: swap them")
    mode = _text(tls, "client_auth_type", fail) or "NoClientCert"
    ca = _text(tls, "client_ca_file", fail)
    if mode in _UNVERIFIED_AUTH:
        raise fail(
            f"tls_server_config.client_auth_type {mode} asks for a certificate without "
            "verifying it, which Python's TLS cannot do: use VerifyClientCertIfGiven or "
            "RequireAndVerifyClientCert with client_ca_file"
        )
    if mode not in _CLIENT_AUTH:
        raise fail(
            f"tls_server_config.client_auth_type {mode!r} is not one of {', '.join(_CLIENT_AUTH)}"
        )
    if ca is not None and mode == "NoClientCert":
        raise fail(
            "tls_server_config.client_ca_file is set but client_auth_type is NoClientCert: "
            "set client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
        )
    if mode != "NoClientCert":
        if ca is None:
            raise fail(
                f"tls_server_config.client_auth_type {mode} needs client_ca_file: name the "
                "PEM file of the CA that signs the scrapers' certificates"
            )
        try:
            ctx.load_verify_locations(cafile=base / ca)
        except (ssl.SSLError, OSError) as exc:
            raise fail(
                f"tls_server_config.client_ca_file {base / ca} does not load ({exc}): give "
                "a PEM CA certificate"
            ) from exc
        ctx.verify_mode = _CLIENT_AUTH[mode]
    return ctx


def _version(tls: Mapping[str, Any], key: str, default: str, fail: Any) -> ssl.TLSVersion:
    value = _text(tls, key, fail) or default
    if value not in _VERSIONS:
        raise fail(f"tls_server_config.{key} {value!r} is not one of {', '.join(_VERSIONS)}")
    return _VERSIONS[value]


def _users(raw: Mapping[Any, Any], fail: Any) -> dict[str, bytes]:
    if len(raw) > _MAX_USERS:
        raise fail(f"basic_auth_users has {len(raw)} users, more than {_MAX_USERS}")
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise fail(
                f"basic_auth_users: {user!r} is not a user name (a non-empty string without ':')"
            )
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            raise fail(
                f"basic_auth_users.{user} is not a bcrypt hash ($2b$<cost>$ and 53 characters): "
                "make one with `htpasswd -nBC 12 '' | tr -d ':\\n'` or Python's "
                "bcrypt.hashpw(password, bcrypt.gensalt())"
            )
        users[user] = hashed.encode()
    return users


def _parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """``Basic base64(user:password)`` as (user, password), or ``None``."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # noqa: PLC0415 (only with basic_auth_users)

    # bcrypt reads at most 72 bytes; bcrypt 5 refuses longer passwords instead of cutting.
    try:
        return bcrypt.checkpw(password[:72], hashed)
    except ValueError:
        return False
