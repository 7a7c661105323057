"""Stored sample payloads: packed by the wire schema's layout, then zstd with a dictionary.

**Packing** (:func:`pack_sample`). A sample's JSON less its keys: each struct is a JSON array
of its fields in the schema's order, and so is each element of an array of structs (each
GPU, NIC, disk, XID, job): no key is written eight times. Numbers stay the decimal text
msgspec writes (a float is its shortest round-trip form), which zstd compresses better than
binary floats. A packed 8-GPU sample is ~35 % of its JSON and costs ~1 us more to make than
that JSON did. (Packing the GPUs by column, each field's eight values side by side,
compressed 7 % worse with a trained dictionary and cost ~3 us more: zstd finds each GPU's
array in the one before.) The layout (field names, nesting: :data:`LAYOUT`, derived from
:class:`~shared.schema.Sample`) is stored with the codec, so a later schema does not make
old rows unreadable; :class:`~collector.store.unpack.PayloadDecoder` gives the JSON back,
field for field. A payload that is a JSON object is the sample's JSON itself: rows stored
before packing, and rows a caller built from :func:`shared.schema.encode`.

**Compression**: zstd level 1 against a dictionary (`RFC 8878
<https://www.rfc-editor.org/rfc/rfc8878>`_, section 5). A store starts with a raw-content
dictionary (a typical sample, packed and as JSON: :func:`dictionary_bytes`), then trains a
zstd dictionary on the samples it stores (:class:`DictionaryTrainer`, zstd's FastCover
trainer) and keeps it when it compresses samples it was not trained on better. A
dictionary learnt from the fleet's own samples knows its node names, GPU UUIDs and typical
values: an 8-GPU sample of ``bench/bench_pipeline.py`` compresses to ~200 B instead of
~410 B (JSON against the first dictionary), in less than half the time. Frames carry no
dictionary id (the row names its codec) and record their size.

**Per-node templates** (layout version 2, :data:`TEMPLATE`). What does not change from one
sample of a node to the next, its name, interval, CPU count, memory and filesystem totals,
filesystem and NIC names, each GPU's index, UUID and memory sizes, is packed apart from the
rest: the template. A store keeps each template once (``payload_templates``, content
addressed, written in the transaction of the first batch that needs it) and a compressed
payload is the template's id (a varint) and a zstd frame of the rest. On samples at the
agent's precision the GPUs' random UUIDs alone were ~200 of ~1,190 compressed bytes: a
dictionary cannot learn 8 random UUIDs per node of a large fleet. With templates
(``bench/bench_codec.py``, trained dictionary): the agent's samples 1,187 -> 935 B, the
simulator's 198 -> 150 B; a template is ~0.6-0.8 KB once per node (~1 KB with its key
and index). Packing costs ~3 us more per sample (the GPU rows split in two). Frames are zstd's
magicless format (``ZSTD_f_zstd1_magicless``: the 4-byte magic number left out, the row
names its codec). Uncompressed (an empty dictionary), a payload keeps its template inline:
the template's array, a newline, then the rest's.

Templates do not outlive the samples that name them: each row's ``used_ms`` is the latest
arrival of a sample stored with it (set in the batch that stores or, after a while, looks it
up again; other uses written back every few minutes), and retention deletes the ones unused
for the samples' retention plus an hour (:meth:`collector.store.db.Store.delete_unused_templates`),
so a node whose constants keep changing costs a template per change only within the window.

Each codec (dictionary + layout) is a row of ``payload_dicts``; each sample row names its
codec in ``payload_dict``. ``NULL`` there: the payload is the sample's JSON, uncompressed.
An empty dictionary: the payloads are stored uncompressed (``compress_payloads = false``).
The layout tells the formats apart: ``NULL`` (JSON payloads), a JSON array (packed, zstd
frames with their magic, no template: version 1), a JSON object (``{"version": 2, ...}``:
packed with a template, magicless frames).
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, get_args, get_origin

import msgspec
import zstandard
from msgspec.structs import astuple

from collector.store.unpack import Layout
from shared.schema import (
    CpuStats,
    DiskIoStats,
    DiskStats,
    GpuProcess,
    GpuSample,
    MemStats,
    NetStats,
    NicStats,
    Sample,
    encode,
)

__all__ = [
    "LAYOUT",
    "TEMPLATE",
    "DictionaryTrainer",
    "PayloadCodec",
    "dictionary_bytes",
    "pack_sample",
    "split_payload",
    "varint",
]

_LEVEL: Final = 1  # level 3 compresses 2% better for 30% more CPU


def _bare(tp: Any) -> Any:
    """``tp`` without ``Annotated`` (constraints do not change the encoding)."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _struct(tp: Any) -> type[msgspec.Struct] | None:
    tp = _bare(tp)
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _layout(struct: type[msgspec.Struct]) -> Layout:
    """``struct``'s layout: required struct fields nest, arrays of structs become arrays of
    arrays, the rest (optional structs, arrays of numbers) stay as msgspec encodes them."""
    hints = typing.get_type_hints(struct, include_extras=True)
    out: Layout = []
    for name in struct.__struct_fields__:
        tp = _bare(hints[name])
        inner = _struct(tp)
        if inner is not None:
            out.append({"name": name, "fields": _layout(inner)})
        elif get_origin(tp) is tuple and (element := _struct(get_args(tp)[0])) is not None:
            out.append({"name": name, "rows": list(element.__struct_fields__)})
        else:
            out.append(name)
    return out


LAYOUT: Final = _layout(Sample)
"""The layout :func:`pack_sample` writes today."""

TEMPLATE: Final = (
    "node",
    "interval_s",
    "cpu.count",
    "mem.total_bytes",
    "mem.swap_total_bytes",
    "disks.mount",
    "disks.device",
    "disks.fstype",
    "disks.total_bytes",
    "net.nics.name",
    "gpus.index",
    "gpus.uuid",
    "gpus.mem_total_bytes",
    "gpus.mem_reserved_bytes",
)
"""The fields of a node's template (dotted paths through :data:`LAYOUT`; a row field names
its array): what a node sends alike in every sample, its identity and its capacities.
Counters (errors, replays) and clocks change, so they stay in the sample."""


def _rows(fields: list[str], array: str) -> str:
    """Code for a list of ``fields`` of each row of ``array``, a tuple per row."""
    return f"[({''.join(f'r.{n}, ' for n in fields)}) for r in {array}]"


def _compile_split(layout: Layout, template: frozenset[str]) -> Callable[[Any], Any]:
    """A function of a sample that returns its two packed arrays, (the fields that vary,
    those of the template), both in layout order.

    Generated as one Python function (as :mod:`dataclasses` makes ``__init__``): a walk of
    the layout per sample cost ~4 us more than packing without templates, most of it the
    walk itself; the generated function reads each field once by name, and an array of rows
    that the template splits as two list comprehensions of those names (each row a tuple:
    msgspec writes it as an array). Converting each row with ``astuple`` and splitting it
    with :func:`operator.itemgetter` s was ~27,000 more instructions per 8-GPU sample (each
    index a lookup through the number protocol): ``bench/bench_validate.py --callgrind``.
    The names come from the schema's own structs.
    """
    lines: list[str] = []
    env: dict[str, Any] = {"astuple": astuple}

    def walk(layout: Layout, obj: str, prefix: str) -> tuple[str | None, str | None]:
        var: list[str] = []
        fixed: list[str] = []
        for e in layout:
            if isinstance(e, str):
                (fixed if prefix + e in template else var).append(f"{obj}.{e}")
                continue
            local = f"_v{len(lines)}"
            lines.append(f"{local} = {obj}.{e['name']}")
            if "fields" in e:
                a, b = walk(e["fields"], local, f"{prefix}{e['name']}.")
            else:
                names = [f"{prefix}{e['name']}.{n}" for n in e["rows"]]
                keep = [n for n, full in zip(e["rows"], names, strict=True) if full not in template]
                take = [n for n, full in zip(e["rows"], names, strict=True) if full in template]

                if not take:  # each row an array of all its fields
                    a, b = f"list(map(astuple, {local}))", None
                else:
                    a = _rows(keep, local) if keep else None
                    b = _rows(take, local)
            if a is not None:
                var.append(a)
            if b is not None:
                fixed.append(b)
        return (
            f"({', '.join(var)},)" if var else None,
            f"({', '.join(fixed)},)" if fixed else None,
        )

    var, fixed = walk(layout, "s", "")
    body = "\n    ".join([*lines, f"return {var or '()'}, {fixed or '()'}"])
    exec(f"def _split(s):\n    {body}\n", env)
    split: Callable[[Any], Any] = env["_split"]
    return split


_split: Final = _compile_split(LAYOUT, frozenset(TEMPLATE))
_encoder = msgspec.json.Encoder()
_encode_into: Final = _encoder.encode_into
_PACKED_BYTES: Final = 2048
"""Room made for a packed sample before it is written (an 8-GPU one is ~1,650 bytes):
msgspec then writes it without growing its buffer as it goes, and the two arrays are not
joined by copies. ~1,900 instructions less a sample than two ``encode`` and two ``+``
(callgrind); a larger sample grows it, as ``encode`` would."""


def pack_sample(sample: Sample) -> bytes:
    """``sample`` packed by :data:`LAYOUT`: its template's JSON array, a newline, then the
    array of the rest (see the module docstring). msgspec's JSON holds no newline."""
    var, fixed = _split(sample)
    out = bytearray(_PACKED_BYTES)
    _encode_into(fixed, out)  # from the start; the bytearray ends where the array does
    out += b"\n"
    _encode_into(var, out, -1)  # -1: after what is there
    return bytes(out)


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    """A row's payload as (template, the rest); a JSON object (a sample's own JSON) has no
    template: ``b""``."""
    if payload[:1] != b"[":
        return b"", payload
    fixed, _, var = payload.partition(b"\n")
    return fixed, var


def varint(n: int) -> bytes:
    """``n`` (>= 0) as an unsigned LEB128 varint (a template id before its frame)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def dictionary_bytes() -> bytes:
    """The raw-content dictionary a store starts with: one representative 8-GPU sample,
    as JSON (what older rows and callers' own rows hold) and packed (placed last: zstd
    prefers the dictionary's end, the nearest matches)."""
    gpus = [
        GpuSample(
            index=g,
            uuid=f"GPU-00000000-0000-0000-0000-00000000000{g}",
            util_pct=87.0,
            mem_util_pct=41.0,
            mem_used_bytes=61_234_567_890,
            mem_total_bytes=85_899_345_920,
            power_w=612.3,
            power_interval_w=598.7,
            energy_j=123_456_789.1,
            temp_c=64.0,
            sm_clock_mhz=1980,
            clock_event_reasons=0,
            pstate=0,
            processes=(GpuProcess(pid=12345, used_mem_bytes=60_000_000_000),),
            mem_clock_mhz=2619,
            mem_temp_c=71.0,
            enc_util_pct=0.0,
            dec_util_pct=3.0,
            pcie_replays=0,
            mem_reserved_bytes=536_870_912,
        )
        for g in range(8)
    ]
    sample = Sample(
        v=1,
        node="x1000c0s0b0n0",
        ts=1_800_000_000.123,
        seq=1234,
        interval_s=5.0,
        cpu=CpuStats(count=224, pct=23.4, per_core_pct=None, load1=51.2, load5=49.1, load15=46.9),
        mem=MemStats(
            total_bytes=2_199_023_255_552,
            used_bytes=1_228_704_244_039,
            available_bytes=970_319_011_513,
            swap_total_bytes=0,
            swap_used_bytes=0,
        ),
        disks=(
            DiskStats(
                mount="/",
                device="/dev/nvme0n1p2",
                fstype="ext4",
                total_bytes=1_900_000_000_000,
                used_bytes=420_000_000_000,
            ),
        ),
        disk_io=DiskIoStats(read_bytes_per_s=163_500_000.0, write_bytes_per_s=40_875_000.0),
        net=NetStats(
            rx_bytes_per_s=9_810_000_000.0,
            tx_bytes_per_s=8_992_500_000.0,
            nics=(NicStats(name="ib0", rx_bytes_per_s=1.2e9, tx_bytes_per_s=1.1e9),),
        ),
        cpu_power_w=480.0,
        gpus=tuple(gpus),
    )
    return encode(sample) + pack_sample(sample)


STORED_LAYOUT: Final = {
    "version": 2,
    "fields": LAYOUT,
    "template": list(TEMPLATE),
    "frame": "zstd-magicless",
}
"""What a codec row's ``layout`` says of the payloads :class:`PayloadCodec` stores today."""


class PayloadCodec:
    """Compresses payloads with one dictionary (none: stored as they are).

    Its :attr:`layout` (stored with the dictionary, for readers) is :data:`STORED_LAYOUT`.
    Not thread-safe (zstd contexts are not): one thread at a time.
    """

    def __init__(self, dictionary: bytes | None = None) -> None:
        self.dictionary = dictionary if dictionary is not None else dictionary_bytes()
        self.layout = json.dumps(STORED_LAYOUT, separators=(",", ":"))
        """The layout as stored (JSON text)."""
        digest = hashlib.sha256(self.layout.encode())
        digest.update(b"\0")
        digest.update(self.dictionary)
        self.sha256 = digest.hexdigest()
        """Names the codec in ``payload_dicts`` (one row per dictionary and layout)."""
        self._template_prefix = hashlib.sha256(self.layout.encode())
        """What every :meth:`template_key` hashes first (the layout, ~1.4 KB: twice a
        template), hashed once; each key continues a copy of it."""
        self._template_prefix.update(b"\0")
        self._compressor: zstandard.ZstdCompressor | None = None
        if self.dictionary:
            zdict = zstandard.ZstdCompressionDict(self.dictionary)  # raw content or trained
            params = zstandard.ZstdCompressionParameters.from_level(
                _LEVEL,
                format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                write_dict_id=False,
                write_content_size=True,
            )
            zdict.precompute_compress(compression_params=params)
            self._compressor = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)

    def template_key(self, template: bytes) -> str:
        """Names a template in ``payload_templates``: its body read by this layout."""
        digest = self._template_prefix.copy()
        digest.update(template)
        return digest.hexdigest()

    def compress(self, body: bytes) -> bytes:
        """Compressed body (a magicless zstd frame that records its size)."""
        return body if self._compressor is None else self._compressor.compress(body)

    def compress_batch(self, bodies: Sequence[bytes]) -> list[bytes]:
        """Compress many bodies in one C call that holds no GIL (run it in a thread).

        Compressing one at a time from the writer's thread would re-take the GIL per payload,
        and each re-take waits for the busy event loop's switch interval.
        """
        if not bodies or self._compressor is None:
            return list(bodies)
        frames = self._compressor.multi_compress_to_buffer(list(bodies), threads=0)
        return [frames[i].tobytes() for i in range(len(frames))]

    def compress_rows(
        self, payloads: Sequence[bytes]
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Rows' payloads (:func:`pack_sample`'s, or samples' JSON) as their templates
        (``b""``: none), their bodies (the rest) and the bodies' frames (run it in a thread)."""
        split = list(map(split_payload, payloads))
        templates = [t for t, _ in split]
        bodies = [b for _, b in split]
        return templates, bodies, self.compress_batch(bodies)


class DictionaryTrainer:
    """Collects stored payloads and trains a zstd dictionary on them.

    The first ``samples`` payloads offered (taken across batches) train the first
    dictionary; after that, every ``every`` payloads another collection starts, so the
    dictionary follows the fleet (new GPU models, other jobs). A trained codec is kept only
    when, on a quarter of the payloads held out of training, it compresses at least
    ``min_gain`` better than the codec in use: a store keeps one codec row per dictionary it
    used, so one that is no better is dropped, not stored.
    """

    def __init__(
        self,
        samples: int = 2_000,
        *,
        every: int = 20_000_000,
        dict_size: int = 65_536,
        min_gain: float = 0.02,
    ) -> None:
        self.samples = samples
        self.every = every
        self.dict_size = dict_size
        self.min_gain = min_gain
        self._kept: list[bytes] = []
        self._skip = 0
        """Payloads still to pass before collecting again."""

    @property
    def due(self) -> bool:
        """Enough payloads were collected: :meth:`train` now."""
        return self.samples > 0 and len(self._kept) >= self.samples

    def offer(self, payloads: Sequence[bytes]) -> None:
        """See a batch's payloads; keep some while collecting."""
        if self.samples <= 0 or self.due:
            return
        if self._skip >= len(payloads):
            self._skip -= len(payloads)
            return
        payloads = payloads[self._skip :]
        self._skip = 0
        # Spread over the batch (many nodes). A large fleet's nodes cannot all be learnt (8
        # GPU UUIDs each): what a dictionary learns is their shared shape and values.
        want = self.samples - len(self._kept)
        step = max(1, len(payloads) // want)
        self._kept.extend(payloads[::step][:want])

    def train(self, current: PayloadCodec) -> PayloadCodec | None:
        """A codec with a dictionary trained on the collected payloads, or ``None`` when it
        would not compress them better than ``current`` (or zstd could not train one).
        Starts the next collection either way. Holds no GIL while training (~0.2 s for
        2,000 samples): run it in a thread."""
        kept, self._kept, self._skip = self._kept, [], self.every
        held_out = kept[::4]
        learn: list[bytes | bytearray | memoryview] = [p for i, p in enumerate(kept) if i % 4]
        if not learn:
            return None
        try:
            trained = zstandard.train_dictionary(self.dict_size, learn, level=_LEVEL)
        except zstandard.ZstdError:
            return None  # too few or too uniform payloads: try again with the next ones
        candidate = PayloadCodec(trained.as_bytes())
        before = sum(map(len, current.compress_batch(held_out)))
        after = sum(map(len, candidate.compress_batch(held_out)))
        return candidate if after <= before * (1 - self.min_gain) else None
