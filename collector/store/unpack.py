"""Stored sample payloads read back: the read side of :mod:`collector.store.codec`.

A payload row names its codec (``payload_dicts``: a zstd dictionary and the layout the
payload was packed by); :class:`PayloadDecoder` is one codec's reader. A body that is a JSON
object is the sample's JSON itself (rows stored before packing, or built from the wire
encoding); a JSON array is a packed sample, made a JSON object again by the layout. A
layout of version 2 (a JSON object) packs a node's constant fields apart, in a template
the store keeps once (``payload_templates``): its compressed payloads are the template's
id (a varint; 0: none, the body is the sample's JSON) and a magicless zstd frame, its
uncompressed ones the template's array, a newline and the rest's array.

Imports only the standard library (zstandard when a dictionary is used), so that
``collector query --gpus`` stays light; it uses msgspec's JSON, ~8x faster, where the
process has loaded msgspec already (the commands that decode samples with the schema).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ROWS", "STRUCT", "Layout", "PayloadDecoder", "read_varint", "unpack_object"]

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


_VAR: Final = 2
_FIXED: Final = 3

Split = tuple[tuple[str, int, Any], ...]
"""A version-2 layout compiled for :func:`unpack_split`: (name, kind, nested), where a plain
field's kind says which array holds it and a nested struct or array of rows says which
arrays hold any of its fields."""


def compile_split(layout: Layout, template: frozenset[str], prefix: str = "") -> Split:
    """``layout`` (the fields in ``template`` taken from the template) as
    :func:`unpack_split` walks it."""
    out: list[tuple[str, int, Any]] = []
    for e in layout:
        if isinstance(e, str):
            out.append((e, _FIXED if prefix + e in template else _VAR, None))
        elif "fields" in e:
            inner = compile_split(e["fields"], template, f"{prefix}{e['name']}.")
            out.append((e["name"], STRUCT, (inner, *_sides(inner))))
        else:
            names = tuple(e["rows"])
            fixed = {n for n in names if f"{prefix}{e['name']}.{n}" in template}
            # Each row field: (name, from the template?, its position in that side's row).
            order, counts = [], [0, 0]
            for n in names:
                side = int(n in fixed)
                order.append((n, side, counts[side]))
                counts[side] += 1
            out.append((e["name"], ROWS, (tuple(order), counts[0] > 0, counts[1] > 0)))
    return tuple(out)


def _sides(plan: Split) -> tuple[bool, bool]:
    """Whether the var array, the template, holds any field of ``plan``."""
    var = fixed = False
    for _, kind, inner in plan:
        if kind == _VAR:
            var = True
        elif kind == _FIXED:
            fixed = True
        else:
            var, fixed = var or inner[1], fixed or inner[2]
    return var, fixed


def unpack_split(var: list[Any], fixed: list[Any], plan: Split) -> dict[str, Any]:
    """A version-2 packed struct (its var array and its template's) as the JSON object it
    was."""
    out: dict[str, Any] = {}
    v = f = 0
    for name, kind, inner in plan:
        if kind == _VAR:
            out[name] = var[v]
            v += 1
        elif kind == _FIXED:
            out[name] = fixed[f]
            f += 1
        else:
            a: Any = None
            b: Any = None
            if inner[1]:
                a, v = var[v], v + 1
            if inner[2]:
                b, f = fixed[f], f + 1
            if kind == STRUCT:
                out[name] = unpack_split(a or [], b or [], inner[0])
            elif not inner[2]:
                out[name] = [dict(zip((n for n, _, _ in inner[0]), r, strict=True)) for r in a]
            else:
                order = inner[0]
                rows = zip(a if inner[1] else [()] * len(b), b, strict=True)
                out[name] = [
                    {n: (fr if side else vr)[j] for n, side, j in order} for vr, fr in rows
                ]
    if v != len(var) or f != len(fixed):
        raise ValueError(f"{len(var)} and {len(fixed)} values for a layout of {v} and {f}")
    return out


def read_varint(blob: bytes) -> tuple[int, int]:
    """An unsigned LEB128 varint at the start of ``blob``: (value, bytes it took)."""
    n = shift = 0
    for i, byte in enumerate(blob[:10]):
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, i + 1
        shift += 7
    raise ValueError("a stored payload starts with no template id")


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class PayloadDecoder:
    """Reads the payloads stored with one codec: ``dictionary`` (empty: stored as they
    are) and ``layout`` (JSON text; ``None``: every payload is the sample's JSON).

    ``templates``: a template's body by its id (``payload_templates``), for a layout of
    version 2; it raises ``ValueError`` for an id it does not know. :meth:`json` and
    :meth:`object` raise ``ValueError`` for a payload they cannot read. ``fast_json``:
    msgspec's JSON (``True``) or the standard library's (``False``); ``None``: msgspec's if
    the process has loaded it.
    """

    def __init__(
        self,
        dictionary: bytes,
        layout: str | None,
        *,
        fast_json: bool | None = None,
        templates: Callable[[int], bytes] | None = None,
    ) -> None:
        self._decompress: Callable[[bytes], bytes] = bytes
        self._errors: tuple[type[Exception], ...] = ()
        stored = json.loads(layout) if layout is not None else []
        self._split: Split | None = None
        if isinstance(stored, dict):  # version 2: templates, magicless frames
            self._split = compile_split(stored["fields"], frozenset(stored["template"]))
            stored = []
        self._compressed = bool(dictionary)
        if dictionary:
            import zstandard  # noqa: PLC0415 - only where a payload is compressed

            # A raw-content dictionary (the first ones: JSON) or a trained one (its magic).
            zdict = zstandard.ZstdCompressionDict(dictionary)
            frame = zstandard.FORMAT_ZSTD1_MAGICLESS if self._split else zstandard.FORMAT_ZSTD1
            self._decompress = zstandard.ZstdDecompressor(dict_data=zdict, format=frame).decompress
            self._errors = (zstandard.ZstdError,)
        self._plan = compile_layout(stored)
        self._templates = templates
        self._parsed: dict[int, list[Any]] = {}
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

    def _template(self, template_id: int) -> list[Any]:
        fixed = self._parsed.get(template_id)
        if fixed is None:
            if self._templates is None:
                raise ValueError(f"payload template {template_id}: no store to read it from")
            fixed = self._parsed[template_id] = self._loads(self._templates(template_id))
        return fixed

    def _split_object(self, blob: bytes) -> dict[str, Any] | bytes:
        """A version-2 payload: the sample's values, or its JSON when stored as such."""
        assert self._split is not None
        if self._compressed:
            template_id, start = read_varint(blob)
            body = self._body(blob[start:])
            if template_id == 0:
                return body
            fixed_body = None
        else:
            if blob[:1] != b"[":
                return blob
            fixed_body, _, body = blob.partition(b"\n")
        try:
            fixed = self._template(template_id) if fixed_body is None else self._loads(fixed_body)
            return unpack_split(self._loads(body), fixed, self._split)
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
            raise ValueError(f"a stored payload does not fit its layout: {exc}") from exc

    def json(self, blob: bytes) -> bytes:
        """The stored sample's JSON."""
        if self._split is not None:
            value = self._split_object(blob)
            return value if isinstance(value, bytes) else self._dumps(value)
        body = self._body(blob)
        return body if body[:1] != b"[" else self._dumps(self._unpack(body))

    def object(self, blob: bytes) -> dict[str, Any]:
        """The stored sample as a JSON object's values (no typed decoding)."""
        if self._split is not None:
            value = self._split_object(blob)
            if not isinstance(value, bytes):
                return value
            body = value
        else:
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
