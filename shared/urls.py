"""A URL's password: whether one is there and the URL without it, for every line that shows
a URL (the store's, a setting's value echoed in its error)."""

from __future__ import annotations

import urllib.parse

__all__ = ["has_password", "redact"]


def redact(url: str) -> str:
    """``url`` without a password (in the user part or a ``password=`` parameter, its key
    in any case or percent-encoded); the rest as given."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not has_password(url):
        return url  # as given: urlunsplit writes sqlite:///x as sqlite:/x (empty netloc)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = "&".join(
        f"{piece.partition('=')[0]}=***" if _password_key(piece.partition("=")[0]) else piece
        for piece in parts.query.split("&")
    )
    slashes = "//" if netloc or url[len(parts.scheme) + 1 :].startswith("//") else ""
    return f"{parts.scheme}:{slashes}{netloc}{parts.path}" + (f"?{query}" if query else "")


def _password_key(key: str) -> bool:
    """Whether a query key names a password: libpq's key is ``password``; any case or
    encoding of it is still the operator's password, whatever the driver makes of it."""
    return urllib.parse.unquote_plus(key).strip().lower() == "password"


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (:func:`redact` hides it); :class:`ValueError`
    where it is no URL ``urllib.parse`` can split."""
    parts = urllib.parse.urlsplit(url)
    user = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    return ":" in user or any(_password_key(p.partition("=")[0]) for p in parts.query.split("&"))
