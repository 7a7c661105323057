"""Stored sample payloads read back: the read side of :mod:`collector.store.codec`.

A payload row names its codec (``payload_dicts``: a zstd dictionary and the layout the
payload was packed by); :class:`PayloadDecoder` is one codec's reader. A body that is a JSON
object is the sample's JSON itself (rows stored before packing, or built from the wire
encoding); a JSON array is a packed sample, made a JSON object again by the layout.

Imports only the standard library (zstandard when a dictionary is used), so that
``collector query --gpus`` stays light; it uses msgspec's JSON, ~8x faster, where the
process has loaded msgspec already (the commands that decode samples with the schema).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ROWS", "STRUCT", "Layout", "PayloadDecoder", "unpack_object"]

Layout = list[Any]
"""A struct's layout, as stored (JSON): per field, its name (a value as msgspec encodes it),
``{"name": n, "fields": <layout>}`` (a struct, packed as an array of its fields) or
``{"name": n, "rows": [field names]}`` (an array of structs, each packed as an array of its
fields)."""

STRUCT: Final = 0
ROWS: Final = 1
_PLAIN: Final = -1

Plan = tuple[tuple[str, int, Any], ...]
"""A layout compiled for :func:`unpack_object`: (name, kind, the nested plan or names)."""


def compile_layout(layout: Layout) -> Plan:
    """``layout`` as :func:`unpack_object` walks it."""
    out: list[tuple[str, int, Any]] = []
    for e in layout:
        if isinstance(e, str):
            out.append((e, _PLAIN, None))
        elif "fields" in e:
            out.append((e["name"], STRUCT, compile_layout(e["fields"])))
        else:
            out.append((e["name"], ROWS, tuple(e["rows"])))
    return tuple(out)


def unpack_object(values: list[Any], plan: Plan) -> dict[str, Any]:
    """A packed struct's values (a decoded JSON array) as the JSON object it was."""
    out: dict[str, Any] = {}
    for (name, kind, inner), value in zip(plan, values, strict=True):
        if kind == STRUCT:
            out[name] = unpack_object(value, inner)
        elif kind == ROWS:
            out[name] = [dict(zip(inner, row, strict=True)) for row in value]
        else:
            out[name] = value
    return out


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class PayloadDecoder:
    """Reads the payloads stored with one codec: ``dictionary`` (empty: stored as they
    are) and ``layout`` (JSON text; ``None``: every payload is the sample's JSON).

    :meth:`json` and :meth:`object` raise ``ValueError`` for a payload they cannot read.
    ``fast_json``: msgspec's JSON (``True``) or the standard library's (``False``); ``None``:
    msgspec's if the process has loaded it.
    """

    def __init__(
        self, dictionary: bytes, layout: str | None, *, fast_json: bool | None = None
    ) -> None:
        self._decompress: Callable[[bytes], bytes] = bytes
        self._errors: tuple[type[Exception], ...] = ()
        if dictionary:
            import zstandard  # noqa: PLC0415 - only where a payload is compressed

            # A raw-content dictionary (the first ones: JSON) or a trained one (its magic).
            zdict = zstandard.ZstdCompressionDict(dictionary)
            self._decompress = zstandard.ZstdDecompressor(dict_data=zdict).decompress
            self._errors = (zstandard.ZstdError,)
        self._plan = compile_layout(json.loads(layout) if layout is not None else [])
        self._loads: Callable[[bytes], Any] = json.loads
        self._dumps: Callable[[Any], bytes] = _stdlib_dumps
        if fast_json if fast_json is not None else "msgspec" in sys.modules:
            import msgspec  # noqa: PLC0415 - loaded already, or asked for

            self._loads, self._dumps = msgspec.json.decode, msgspec.json.encode

    def _body(self, blob: bytes) -> bytes:
        try:
            return self._decompress(blob)
        except self._errors as exc:
            raise ValueError(f"a stored payload cannot be decompressed: {exc}") from exc

    def _unpack(self, body: bytes) -> dict[str, Any]:
        try:
            return unpack_object(self._loads(body), self._plan)
        except (TypeError, ValueError, AttributeError) as exc:  # msgspec's errors: ValueErrors
            raise ValueError(f"a stored payload does not fit its layout: {exc}") from exc

    def json(self, blob: bytes) -> bytes:
        """The stored sample's JSON."""
        body = self._body(blob)
        return body if body[:1] != b"[" else self._dumps(self._unpack(body))

    def object(self, blob: bytes) -> dict[str, Any]:
        """The stored sample as a JSON object's values (no typed decoding)."""
        body = self._body(blob)
        if body[:1] == b"[":
            return self._unpack(body)
        try:
            value = self._loads(body)
        except ValueError as exc:
            raise ValueError(f"a stored payload is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError("a stored payload is not a JSON object")
        return value
