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

Each codec (dictionary + layout) is a row of ``payload_dicts``; each sample row names its
codec in ``payload_dict``. ``NULL`` there: the payload is the sample's JSON, uncompressed.
An empty dictionary: the payloads are stored uncompressed (``compress_payloads = false``).
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Final, get_args, get_origin

import msgspec
import zstandard
from msgspec.structs import astuple

from collector.store.unpack import ROWS, STRUCT, Layout
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

__all__ = ["LAYOUT", "DictionaryTrainer", "PayloadCodec", "dictionary_bytes", "pack_sample"]

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

_Plan = tuple[tuple[int, int, Any], ...]
"""The fields :func:`_pack` changes: (position, kind, the nested struct's plan)."""


def _plan(layout: Layout) -> _Plan:
    return tuple(
        (i, STRUCT, _plan(e["fields"])) if "fields" in e else (i, ROWS, None)
        for i, e in enumerate(layout)
        if not isinstance(e, str)
    )


_PLAN: Final = _plan(LAYOUT)
_encoder = msgspec.json.Encoder()


def _pack(obj: msgspec.Struct, plan: _Plan) -> list[Any]:
    values = list(astuple(obj))
    for i, kind, inner in plan:
        if kind == STRUCT:
            values[i] = _pack(values[i], inner)
        else:
            values[i] = list(map(astuple, values[i]))
    return values


def pack_sample(sample: Sample) -> bytes:
    """``sample`` packed by :data:`LAYOUT` (a JSON array); see the module docstring."""
    return _encoder.encode(_pack(sample, _PLAN))


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


class PayloadCodec:
    """Compresses payloads with one dictionary (none: stored as they are).

    ``layout`` is the one the payloads were packed by (stored with the dictionary, for
    readers). Not thread-safe (zstd contexts are not): one thread at a time.
    """

    def __init__(self, dictionary: bytes | None = None, layout: Layout | None = None) -> None:
        self.dictionary = dictionary if dictionary is not None else dictionary_bytes()
        self.layout_fields: Layout = LAYOUT if layout is None else layout
        self.layout = json.dumps(self.layout_fields, separators=(",", ":"))
        """The layout as stored (JSON text)."""
        digest = hashlib.sha256(self.layout.encode())
        digest.update(b"\0")
        digest.update(self.dictionary)
        self.sha256 = digest.hexdigest()
        """Names the codec in ``payload_dicts`` (one row per dictionary and layout)."""
        self._compressor: zstandard.ZstdCompressor | None = None
        if self.dictionary:
            zdict = zstandard.ZstdCompressionDict(self.dictionary)  # raw content or trained
            zdict.precompute_compress(level=_LEVEL)
            self._compressor = zstandard.ZstdCompressor(
                level=_LEVEL, dict_data=zdict, write_dict_id=False
            )

    def compress(self, payload: bytes) -> bytes:
        """Compressed payload (a zstd frame that records its size)."""
        return payload if self._compressor is None else self._compressor.compress(payload)

    def compress_batch(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Compress many payloads in one C call that holds no GIL (run it in a thread).

        Compressing one at a time from the writer's thread would re-take the GIL per payload,
        and each re-take waits for the busy event loop's switch interval.
        """
        if not payloads or self._compressor is None:
            return list(payloads)
        frames = self._compressor.multi_compress_to_buffer(list(payloads), threads=0)
        return [frames[i].tobytes() for i in range(len(frames))]


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
        candidate = PayloadCodec(trained.as_bytes(), current.layout_fields)
        before = sum(map(len, current.compress_batch(held_out)))
        after = sum(map(len, candidate.compress_batch(held_out)))
        return candidate if after <= before * (1 - self.min_gain) else None
