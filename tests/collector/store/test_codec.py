"""Stored payloads: packed by the schema's layout, compressed with a dictionary the store
trains on what it stores; every field read back, old rows and new side by side, on both
backends."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

from agent.simulate import FleetSimulator
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget
from collector.store.codec import (
    LAYOUT,
    DictionaryTrainer,
    PayloadCodec,
    dictionary_bytes,
    pack_sample,
    split_payload,
    varint,
)
from collector.store.db import SampleRow, Store
from collector.store.reader import StoreReader
from collector.store.unpack import PayloadDecoder
from shared.errors import StoreError
from shared.schema import Sample, decode_sample, encode
from tests.helpers import db_rows
from tests.shared.wire_samples import sample_dict

_ZSTD_DICT_MAGIC = b"\x37\xa4\x30\xec"  # a trained (not raw-content) zstd dictionary


def _full() -> Sample:
    """Every optional field the wire schema carries: per-core CPU, disks, NICs, node power,
    GPUs with processes (user, job, step, container), ECC, remapped rows, MIG, XIDs, jobs."""
    return decode_sample(encode_dict(sample_dict()))


def encode_dict(d: dict[str, Any]) -> bytes:
    return msgspec.json.encode(d)


def _minimal() -> Sample:
    """Only the required fields: every optional one at its default (None, empty)."""
    return decode_sample(
        b'{"v":1,"node":"n-0","ts":1800000000.5,"seq":0,"interval_s":5.0,'
        b'"cpu":{"count":1},"mem":{"total_bytes":1,"used_bytes":0,"available_bytes":1}}'
    )


def _awkward() -> Sample:
    """Values whose text is easy to get wrong: the smallest float, 2**53 - 1, 17 digits,
    quotes, backslashes and non-ASCII in a string."""
    d = sample_dict()
    d["ts"] = 1_800_000_000.123_456_7
    d["cpu"]["pct"] = 5e-324
    d["seq"] = 2**53 - 1
    d["gpus"][0]["energy_j"] = 0.1 + 0.2
    d["gpus"][0]["processes"][0]["user"] = 'jö"\\ß'
    d["disks"][1]["mount"] = '/raid/jö"\\ß\u2028'  # a user name may not hold U+2028 (schema)
    return decode_sample(encode_dict(d))


@pytest.mark.parametrize("make", [_full, _minimal, _awkward])
@pytest.mark.parametrize("fast_json", [True, False])
def test_a_packed_sample_decodes_to_the_same_sample(make: Any, fast_json: bool) -> None:
    """decode(encode(s)) == s for every field, through zstd and either JSON reader."""
    sample = make()
    codec = PayloadCodec()
    (template,), _, (frame,) = codec.compress_rows([pack_sample(sample)])
    decoder = PayloadDecoder(
        codec.dictionary, codec.layout, fast_json=fast_json, templates={300: template}.__getitem__
    )
    blob = varint(300) + frame  # a two-byte id
    assert decode_sample(decoder.json(blob)) == sample
    assert msgspec.convert(decoder.object(blob), Sample) == sample
    inline = PayloadDecoder(b"", codec.layout, fast_json=fast_json)  # uncompressed
    assert decode_sample(inline.json(pack_sample(sample))) == sample
    assert msgspec.convert(inline.object(pack_sample(sample)), Sample) == sample


def _v1_packed(sample: Sample) -> bytes:
    """``sample`` as version 1 packed it: one array by :data:`LAYOUT`, no template."""

    def pack(obj: dict[str, Any], layout: list[Any]) -> list[Any]:
        out: list[Any] = []
        for e in layout:
            if isinstance(e, str):
                out.append(obj[e])
            elif "fields" in e:
                out.append(pack(obj[e["name"]], e["fields"]))
            else:
                out.append([[row[n] for n in e["rows"]] for row in obj[e["name"]]])
        return out

    return msgspec.json.encode(pack(json.loads(encode(sample)), LAYOUT))


def test_packing_drops_the_keys_and_keeps_a_nodes_constants_apart() -> None:
    """A packed sample is its template (name, interval, totals, NIC and filesystem names,
    each GPU's index, UUID and memory sizes) and the rest, each a JSON array of the fields
    in schema order, each GPU an array."""
    sample = _full()
    template_text, rest_text = split_payload(pack_sample(sample))
    template, rest = json.loads(template_text), json.loads(rest_text)
    assert template[:3] == [sample.node, sample.interval_s, [sample.cpu.count]]
    assert template[-1] == [
        [g.index, g.uuid, g.mem_total_bytes, g.mem_reserved_bytes] for g in sample.gpus
    ]
    assert rest[:3] == [1, sample.ts, sample.seq]
    assert rest[3][:2] == [sample.cpu.pct, list(sample.cpu.per_core_pct or ())]
    for g in sample.gpus:
        assert f'"{g.uuid}"'.encode() not in rest_text  # (a MIG UUID may hold it)
    assert b'"power_w"' not in pack_sample(sample)  # (a MIG device's own keys stay)
    typical = FleetSimulator(1, gpus_per_node=8, seed=1, interval_s=5).sample(0, 1.8e9, 0)
    assert len(split_payload(pack_sample(typical))[1]) * 3 < len(encode(typical))


async def test_new_and_old_payloads_read_back_side_by_side(store_url: StoreTarget) -> None:
    """One store holds rows of the JSON era (their dictionary, no layout), uncompressed JSON,
    packed rows of version 1 (no template, frames with zstd's magic), a caller's JSON and
    packed samples with templates: each reads back as the sample it was."""
    sim = FleetSimulator(3, gpus_per_node=8, seed=5, interval_s=5)
    samples = [sim.sample(i, 1.8e9 + 5 * k, k) for k in range(4) for i in range(3)]
    old_dict = encode(samples[0])  # a JSON-era raw-content dictionary: a typical sample
    old = zstandard.ZstdCompressor(
        level=1,
        dict_data=zstandard.ZstdCompressionDict(old_dict, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
    )
    async with Store(store_url) as store:
        async with store.transaction("an old codec"):
            await store.execute(
                "INSERT INTO payload_dicts (sha256, dict) VALUES ('old', ?)", (old_dict,)
            )
            await store.execute(
                "INSERT INTO payload_dicts (sha256, dict, layout) VALUES ('v1', ?, ?)",
                (old_dict, json.dumps(LAYOUT, separators=(",", ":"))),
            )
        ids = {r[0]: r[1] for r in await store.fetchall("SELECT sha256, id FROM payload_dicts")}
        old_id, v1_id = ids["old"], ids["v1"]
        columns = store.sample_columns()
        as_stored = []
        for s, (blob, dict_id) in zip(
            samples[:4] + samples[9:],
            [(old.compress(encode(s)), old_id) for s in samples[:2]]
            + [(encode(s), None) for s in samples[2:4]]
            + [(old.compress(_v1_packed(s)), v1_id) for s in samples[9:]],
            strict=True,
        ):
            r = sample_row(s, b"", 1.8e9)
            row = dict(zip(columns, (*r[:13], blob, dict_id, r.epoch, None, None), strict=True))
            as_stored.append(tuple(row[c] for c in columns))
        await store.import_rows("samples", columns, as_stored)
        await store.write_batch([sample_row(s, encode(s), 1.8e9) for s in samples[4:6]])
        await store.write_batch([sample_row(s, pack_sample(s), 1.8e9) for s in samples[6:]])
    with StoreReader(store_url) as reader:
        rows = reader.fetchall("SELECT node, ts_ms, payload, payload_dict FROM samples")
        assert len(rows) == 12
        got = {
            (r["node"], r["ts_ms"]): decode_sample(reader.payload(r["payload"], r["payload_dict"]))
            for r in rows
        }
        by_key = {(s.node, round(s.ts * 1000)): s for s in samples}
        assert got == by_key
        assert {r["payload_dict"] for r in rows} == {old_id, v1_id, None, store._dict_id}


def _fleet_rows(nodes: int, ticks: int, *, t0: float = 1.8e9) -> list[list[SampleRow]]:
    """One batch of packed 8-GPU samples per tick."""
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=11, interval_s=5)
    return [
        [
            sample_row(s, pack_sample(s), t0 + 5 * k)
            for s in (sim.sample(i, t0 + 5 * k, k) for i in range(nodes))
        ]
        for k in range(ticks)
    ]


def _sizes(db: StoreTarget) -> dict[int, float]:
    """Mean stored payload bytes per codec row."""
    return {
        int(d): float(n)
        for d, n in db_rows(db, "SELECT payload_dict, avg(length(payload)) FROM samples GROUP BY 1")
    }


async def test_the_store_trains_a_dictionary_on_its_samples_and_reads_both(
    store_url: StoreTarget,
) -> None:
    """After the trainer's samples, later rows use a trained zstd dictionary (a new codec
    row, same layout): they are smaller, and every row still reads back exactly."""
    batches = _fleet_rows(40, 10)
    async with Store(store_url) as store:
        store.trainer = DictionaryTrainer(160, dict_size=16_384)
        first = store._dict_id
        for batch in batches:
            await store.write_batch(batch)
        trained = store._dict_id
    assert trained is not None
    assert first is not None
    assert trained != first
    codecs = dict(db_rows(store_url, "SELECT id, dict FROM payload_dicts"))
    assert bytes(codecs[trained]).startswith(_ZSTD_DICT_MAGIC)
    assert not bytes(codecs[first]).startswith(_ZSTD_DICT_MAGIC)
    layouts = {r[0] for r in db_rows(store_url, "SELECT layout FROM payload_dicts")}
    assert layouts == {PayloadCodec(b"").layout}
    sizes = _sizes(store_url)
    assert sizes[trained] < sizes[first] * 0.8
    with StoreReader(store_url) as reader:
        rows = reader.fetchall("SELECT node, ts_ms, payload, payload_dict FROM samples")
        stored = {
            (r["node"], r["ts_ms"]): reader.payload(r["payload"], r["payload_dict"]) for r in rows
        }
    expected = {(r.node, r.ts_ms): r.payload for batch in batches for r in batch}
    assert {k: decode_sample(v) for k, v in stored.items()} == {
        k: decode_sample(PayloadDecoder(b"", PayloadCodec(b"").layout).json(v))
        for k, v in expected.items()
    }


async def test_a_trained_dictionary_that_is_no_better_is_not_kept(tmp_path: Path) -> None:
    """The trainer keeps a dictionary only when it beats the one in use on samples it was
    not trained on: no better, no new codec row."""
    async with Store(tmp_path / "c.db") as store:
        store.trainer = DictionaryTrainer(160, dict_size=16_384, min_gain=0.99)
        for batch in _fleet_rows(40, 6):
            await store.write_batch(batch)
    assert db_rows(tmp_path / "c.db", "SELECT count(*) FROM payload_dicts") == [(1,)]


def test_the_trainer_collects_across_batches_then_again_after_every() -> None:
    """Payloads are kept until the collection is full; after training, the next collection
    starts once ``every`` more payloads went by."""
    payloads = [r.payload for batch in _fleet_rows(40, 2) for r in batch]
    trainer = DictionaryTrainer(80, every=100, dict_size=4096)
    trainer.offer(payloads[:40])
    assert not trainer.due
    trainer.offer(payloads[40:])
    assert trainer.due
    trainer.train(PayloadCodec())
    assert not trainer.due
    trainer.offer(payloads[:90])
    trainer.offer(payloads[:5])
    trainer.offer(payloads[:40])  # 5 more to pass, then 35 kept
    trainer.offer(payloads[:40])
    assert not trainer.due
    trainer.offer(payloads[:40])
    assert trainer.due


async def test_a_reopened_store_goes_on_with_its_trained_dictionary(tmp_path: Path) -> None:
    """The newest codec of this layout is used again after a restart: no warm-up on the
    first dictionary, no new codec row."""
    db = tmp_path / "c.db"
    batches = _fleet_rows(40, 6)
    async with Store(db) as store:
        store.trainer = DictionaryTrainer(160, dict_size=16_384)
        for batch in batches[:5]:
            await store.write_batch(batch)
        trained = store._dict_id
    async with Store(db) as store:
        assert store._dict_id == trained
        await store.write_batch(batches[5])
    assert db_rows(db, "SELECT count(*) FROM payload_dicts") == [(2,)]
    last = {r.node: r.ts_ms for r in batches[5]}
    used = db_rows(db, "SELECT node, ts_ms, payload_dict FROM samples")
    assert {d for n, t, d in used if last[n] == t} == {trained}


async def test_uncompressed_stores_keep_packed_payloads_readable(tmp_path: Path) -> None:
    """compress=False: payloads stored as they are, under a codec row with no dictionary
    and the layout (none is registered before the first samples: a copy target stays
    empty)."""
    db = tmp_path / "c.db"
    rows = _fleet_rows(3, 2)
    async with Store(db, compress=False) as store:
        assert db_rows(db, "SELECT count(*) FROM payload_dicts") == [(0,)]
        for batch in rows:
            await store.write_batch(batch)
    assert db_rows(db, "SELECT length(dict) FROM payload_dicts") == [(0,)]
    with StoreReader(db) as reader:
        for r in reader.fetchall("SELECT payload, payload_dict FROM samples"):
            assert bytes(r["payload"]).startswith(b'["x1000')  # the template inline
            assert decode_sample(reader.payload(r["payload"], r["payload_dict"])).v == 1


async def test_a_reader_before_the_layout_column_reads_json_era_rows(tmp_path: Path) -> None:
    """A store whose collector has not applied 0023 yet (no ``layout`` column) still reads."""
    db = tmp_path / "c.db"
    sim = FleetSimulator(1, gpus_per_node=8, seed=3, interval_s=5)
    s = sim.sample(0, 1.8e9, 0)
    old_dict = encode(s)  # a JSON-era raw-content dictionary
    old = zstandard.ZstdCompressor(
        level=1,
        dict_data=zstandard.ZstdCompressionDict(old_dict, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
    )
    async with Store(db, compress=False) as store:
        async with store.transaction("an old codec"):
            await store.execute(
                "INSERT INTO payload_dicts (id, sha256, dict) VALUES (7, 'old', ?)", (old_dict,)
            )
        row = sample_row(s, b"", 1.8e9)
        await store.import_rows(
            "samples",
            store.sample_columns(),
            [(*row[:13], old.compress(encode(s)), 7, row.epoch, None, None)],
        )
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE payload_dicts DROP COLUMN layout")
    conn.commit()
    conn.close()
    with StoreReader(db) as reader:
        r = reader.fetchall("SELECT payload, payload_dict FROM samples")[0]
        assert decode_sample(reader.payload(r["payload"], r["payload_dict"])) == s


async def test_a_damaged_payload_is_one_store_error(tmp_path: Path) -> None:
    """A payload zstd cannot read, or that does not fit its layout: StoreError, one line."""
    db = tmp_path / "c.db"
    s = FleetSimulator(1, gpus_per_node=8, seed=3, interval_s=5).sample(0, 1.8e9, 0)
    async with Store(db) as store:
        await store.write_batch([sample_row(s, pack_sample(s), 1.8e9)])
        dict_id = store._dict_id
    codec = PayloadCodec()
    with StoreReader(db) as reader:
        with pytest.raises(StoreError, match="cannot be decompressed"):
            reader.payload(b"\x01\x28\xb5\x2f\xfdgarbage", dict_id)
        with pytest.raises(StoreError, match="does not fit its layout"):
            reader.payload(b"\x01" + codec.compress(b"[1,2,3]"), dict_id)
        with pytest.raises(StoreError, match="does not fit its layout"):
            reader.sample_object(b"\x01" + codec.compress(b'[1,"n",1.0,0,1.0,[1],7]'), dict_id)
        with pytest.raises(StoreError, match="payload template 99 is missing"):
            reader.payload(b"\x63" + codec.compress(b"[1]"), dict_id)
        with pytest.raises(StoreError, match="no template id"):
            reader.payload(b"\xff" * 10, dict_id)


def test_the_first_dictionary_holds_a_sample_as_json_and_packed() -> None:
    """Rows a caller built from the wire JSON compress as well as they did before packing."""
    d = dictionary_bytes()
    assert d.startswith(b'{"v":1,')
    assert d.endswith(b"]")
    assert b"[1," in d


async def test_a_nodes_template_is_stored_once_and_a_new_one_when_it_changes(
    store_url: StoreTarget,
) -> None:
    """Each node's constants go into ``payload_templates`` once, in the batch that first
    needs them; a node whose constants change (a GPU gone) gets a second template; a
    reopened store names the stored ones again; every row reads back exactly."""
    batches = _fleet_rows(4, 3)
    lost = batches[2][0]
    sample = decode_sample(PayloadDecoder(b"", PayloadCodec(b"").layout).json(lost.payload))
    seven = msgspec.structs.replace(sample, gpus=sample.gpus[:7])
    batches[2][0] = sample_row(seven, pack_sample(seven), 1.8e9 + 10)
    async with Store(store_url) as store:
        for batch in batches[:2]:
            await store.write_batch(batch)
        assert db_rows(store_url, "SELECT count(*) FROM payload_templates") == [(4,)]
    async with Store(store_url) as store:
        await store.write_batch(batches[2])
    assert db_rows(store_url, "SELECT count(*) FROM payload_templates") == [(5,)]
    with StoreReader(store_url) as reader:
        rows = reader.fetchall("SELECT node, ts_ms, payload, payload_dict FROM samples")
        got = {
            (r["node"], r["ts_ms"]): decode_sample(reader.payload(r["payload"], r["payload_dict"]))
            for r in rows
        }
    plain = PayloadDecoder(b"", PayloadCodec(b"").layout)
    assert got == {
        (r.node, r.ts_ms): decode_sample(plain.json(r.payload)) for batch in batches for r in batch
    }
    assert len(got[(lost.node, lost.ts_ms)].gpus) == 7
    for row in rows:  # the UUIDs are in the templates, not in the rows
        d = db_rows(store_url, f"SELECT dict FROM payload_dicts WHERE id = {row[3]}")[0][0]
        assert b"GPU-" not in zstandard.ZstdDecompressor(
            dict_data=zstandard.ZstdCompressionDict(bytes(d)),
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        ).decompress(bytes(row["payload"])[1:])


async def test_a_batch_rolled_back_leaves_no_template_id_behind(tmp_path: Path) -> None:
    """The templates a failed batch wrote are rolled back with it: the store does not name
    them in later batches (it writes them again)."""
    db = tmp_path / "c.db"
    (batch,) = _fleet_rows(2, 1)
    async with Store(db) as store:
        broken = batch[1]._replace(node=None)  # type: ignore[arg-type]  # NOT NULL refuses it
        with pytest.raises(StoreError):
            await store.write_batch([batch[0], broken])
        assert db_rows(db, "SELECT count(*) FROM payload_templates") == [(0,)]
        await store.write_batch(batch)
    assert db_rows(db, "SELECT count(*) FROM payload_templates") == [(2,)]
    with StoreReader(db) as reader:
        for r in reader.fetchall("SELECT payload, payload_dict FROM samples"):
            assert decode_sample(reader.payload(r["payload"], r["payload_dict"])).v == 1


def test_a_template_is_named_by_the_sha256_of_its_layout_and_body() -> None:
    """``payload_templates.sha256`` is sha256(layout, NUL, template), whichever codec (a
    trained dictionary's too) and however many templates it named before: another
    collector of the store, or an older version, finds the same row."""
    template = pack_sample(_full()).partition(b"\n")[0]
    for codec in (PayloadCodec(), PayloadCodec(b"")):
        want = hashlib.sha256(codec.layout.encode() + b"\0" + template).hexdigest()
        assert [codec.template_key(template) for _ in range(2)] == [want, want]
        assert codec.template_key(b"") == hashlib.sha256(codec.layout.encode() + b"\0").hexdigest()
