"""Hostile input: every wire field at its documented bound, just past it, and far past it.

The bounds come from tests/shared/documented_bounds.py (shared/schema.md restated), so a
bound dropped from shared/schema.py fails here twice: in the introspection check, and in
the behaviour (the value past the bound decodes).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

import shared.schema as s
from shared.errors import SchemaError
from tests.shared.documented_bounds import LISTS, NUMBERS, STRINGS, Bound, Text
from tests.shared.wire_samples import (
    RAW,
    Raw,
    encode,
    get,
    inventory_dict,
    json_path,
    keys,
    sample_dict,
    set_at,
    status_dict,
)

_STRUCTS: dict[str, type[msgspec.Struct]] = {
    "sample": s.Sample,
    "inventory": s.Inventory,
    "status": s.NodeStatus,
}
_DECODE: dict[str, Callable[[bytes], msgspec.Struct]] = {
    "sample": s.decode_sample,
    "inventory": s.decode_inventory,
    "status": s.decode_status,
}
_DICTS: dict[str, Callable[[], dict[str, Any]]] = {
    "sample": sample_dict,
    "inventory": inventory_dict,
    "status": status_dict,
}


def _with(kind: str, path: str, value: Any) -> bytes:
    """The realistic message of ``kind`` with ``path`` set to ``value``, encoded."""
    d = _DICTS[kind]()
    if isinstance(value, Raw):
        set_at(d, path, RAW)
        return encode(d, [value])
    set_at(d, path, value)
    return encode(d)


def _accepts(kind: str, payload: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.to_builtins(_DECODE[kind](payload))
    return decoded


def _rejects(kind: str, payload: bytes, reason: str = "invalid") -> str:
    with pytest.raises(SchemaError) as info:
        _DECODE[kind](payload)
    assert info.value.reason == reason, str(info.value)
    return str(info.value)


def _cases(table: dict[str, dict[str, Any]]) -> Iterator[Any]:
    for kind, fields in table.items():
        for path, limit in fields.items():
            yield pytest.param(kind, path, limit, id=f"{kind}:{path}")


# -- the tables match the code and the document -----------------------------------------------


def _leaves(t: msgspec.inspect.Type, path: str, out: dict[str, msgspec.inspect.Type]) -> None:
    """Every number, string and list under ``t``, keyed by table path."""
    if isinstance(t, msgspec.inspect.UnionType):
        for member in t.types:
            _leaves(member, path, out)
    elif isinstance(t, msgspec.inspect.StructType):
        for f in t.fields:
            _leaves(f.type, f"{path}.{f.name}" if path else f.name, out)
    elif isinstance(t, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
        out[path] = t
        _leaves(t.item_type, f"{path}[]", out)
    elif isinstance(
        t, msgspec.inspect.IntType | msgspec.inspect.FloatType | msgspec.inspect.StrType
    ):
        out[path] = t


_DECODER_CHECKED: Final = {
    ("sample", path)
    for path in (
        "node",
        "gpus[].uuid",
        "gpus[].processes[].user",
        "gpus[].processes[].job",
        "gpus[].processes[].step",
        "gpus[].processes[].container",
        "jobs[].id",
        "jobs[].account",
        "jobs[].partition",
        "jobs[].namespace",
        "jobs[].name",
    )
}
"""Patterns :func:`shared.schema.decode_sample` checks itself, not msgspec (it knows each
node's UUIDs, and the processes' and jobs' strings that matched lately):
test_patterned_string_accepts_the_real_forms_only holds them to it."""


@pytest.mark.parametrize("kind", list(_STRUCTS))
def test_every_number_list_and_string_has_its_documented_bound(kind: str) -> None:
    """The schema's constraints are exactly the documented ones, and none is missing."""
    leaves: dict[str, msgspec.inspect.Type] = {}
    _leaves(msgspec.inspect.type_info(_STRUCTS[kind]), "", leaves)
    numeric = msgspec.inspect.IntType | msgspec.inspect.FloatType
    numbers = {p: t for p, t in leaves.items() if isinstance(t, numeric)}
    arrays = msgspec.inspect.ListType | msgspec.inspect.VarTupleType
    lists = {p: t for p, t in leaves.items() if isinstance(t, arrays)}
    strings = {p: t for p, t in leaves.items() if isinstance(t, msgspec.inspect.StrType)}
    assert set(numbers) == set(NUMBERS[kind])
    assert set(lists) == set(LISTS[kind])
    assert set(strings) == set(STRINGS[kind])
    for path, t in numbers.items():
        b = NUMBERS[kind][path]
        assert isinstance(t, msgspec.inspect.IntType if b.integer else msgspec.inspect.FloatType)
        assert (t.ge, t.gt) == (b.lo, None), path
        assert (t.lt, t.le) == ((b.hi, None) if b.hi_open else (None, b.hi)), path
    for path, lt in lists.items():
        assert isinstance(lt, arrays)
        assert lt.max_length == LISTS[kind][path], path
    for path, st in strings.items():
        assert isinstance(st, msgspec.inspect.StrType)
        text = STRINGS[kind][path]
        pattern = None if (kind, path) in _DECODER_CHECKED else text.pattern
        assert (st.max_length, st.pattern) == (text.max_length, pattern), path
        if text.pattern is None:
            assert (st.min_length or 0) == text.min_length, path


def _section(doc: str, title: str) -> str:
    return doc.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(("kind", "title"), [("sample", "Sample"), ("inventory", "Inventory")])
def test_schema_md_documents_every_bounded_field(kind: str, title: str) -> None:
    """shared/schema.md has a row for each number, list and string of the message."""
    doc = (Path(s.__file__).parent / "schema.md").read_text(encoding="utf-8")
    section = _section(doc, title)
    for path in [*NUMBERS[kind], *LISTS[kind], *STRINGS[kind]]:
        assert f"| `{path}` |" in section, f"{path} is not documented under '## {title}'"


def test_bounds_keep_per_sample_sums_inside_int64() -> None:
    """The overflow arithmetic of shared/schema.md holds for the constants as they are."""
    assert s.MAX_GPUS * s.MAX_GPU_MEM_BYTES == 2**48
    assert s.MAX_GPUS * s.MAX_PROCESSES_PER_GPU * s.MAX_GPU_MEM_BYTES == 2**56
    assert s.MAX_DISKS * s.MAX_FS_BYTES == 2**62
    assert s.MAX_NICS * s.MAX_COUNTER <= s.INT64_MAX
    assert 4 * s.MAX_GPUS * s.MAX_COUNTER <= s.INT64_MAX  # ECC counters of a node
    assert 5 * s.MAX_HOST_MEM_BYTES <= s.INT64_MAX  # the mem fields of one sample
    assert s.MAX_ENERGY_J * 1000 < 2**53  # NVML's mJ stay exact in a float64
    assert round(s.MAX_TS_S * 1000) < s.INT64_MAX  # ts stored in ms


def test_worst_case_accepted_sample_sums_store_in_sqlite() -> None:
    """MAX_GPUS GPUs at the memory bound decode, and the collector's sum fits a SQLite integer."""
    d = sample_dict()
    d["gpus"] = [
        d["gpus"][0] | {"index": i, "uuid": f"GPU-{i:08x}-0000-4000-8000-000000000000"}
        for i in range(s.MAX_GPUS)
    ]
    for g in d["gpus"]:
        g["mem_used_bytes"] = s.MAX_GPU_MEM_BYTES
        g["processes"] = [{"pid": 1, "used_mem_bytes": s.MAX_GPU_MEM_BYTES}]
    d["gpus"][0]["processes"] *= s.MAX_PROCESSES_PER_GPU
    sample = s.decode_sample(msgspec.json.encode(d))
    gpu_mem = sum(g.mem_used_bytes or 0 for g in sample.gpus)
    proc_mem = sum(p.used_mem_bytes or 0 for g in sample.gpus for p in g.processes)
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        db.executemany("INSERT INTO t VALUES (?)", [(gpu_mem,), (proc_mem,)])
        assert db.execute("SELECT sum(x) FROM t").fetchone() == (gpu_mem + proc_mem,)
    assert gpu_mem == 2**48


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "path", "bound"), list(_cases(NUMBERS)))
def test_number_at_its_bounds_is_accepted_and_just_past_rejected(
    kind: str, path: str, bound: Bound
) -> None:
    """lo and hi decode to themselves; one step (1, or one float ulp) outside is 'invalid'."""
    where = keys(path)
    hi = math.nextafter(bound.hi, -math.inf) if bound.hi_open else bound.hi
    inside = [int(bound.lo), int(hi)] if bound.integer else [bound.lo, hi]
    for value in inside:
        assert get(_accepts(kind, _with(kind, path, value)), where) == value
    if bound.integer:
        outside: list[float] = [int(bound.lo) - 1, int(hi) + 1]
    else:
        outside = [math.nextafter(bound.lo, -math.inf), math.nextafter(hi, math.inf)]
    for value in outside:
        assert json_path(path) in _rejects(kind, _with(kind, path, value)), value


_FAR = [2**63, 2**64, -(2**63) - 1, 2**80, -(2**80), 1e300, -1e300, Raw("1e400"), Raw("-1e400")]


@pytest.mark.parametrize(("kind", "path", "bound"), list(_cases(NUMBERS)))
def test_number_far_out_of_range_or_not_a_number_is_rejected(
    kind: str, path: str, bound: Bound
) -> None:
    """Past int64, 1e300, 1e400 (inf), negatives and the string "NaN" are 'invalid';
    bare NaN / Infinity tokens are not JSON at all."""
    hostile: list[Any] = [*_FAR, "NaN", True]
    if bound.lo > -1:
        hostile.append(-1)
    for value in hostile:
        assert json_path(path) in _rejects(kind, _with(kind, path, value)), value
    for token in ("NaN", "Infinity", "-Infinity"):
        _rejects(kind, _with(kind, path, Raw(token)), reason="not_json")


# -- lists ------------------------------------------------------------------------------------


def _filled(kind: str, path: str, length: int) -> bytes:
    """The message with the list at ``path`` grown to ``length`` (copies of its first item)."""
    d = _DICTS[kind]()
    items = get(d, keys(path))
    grown = [items[i % len(items)] for i in range(length)]
    if path == "gpus":  # each GPU once (index below MAX_GPUS, and its UUID)
        grown = [
            g | {"index": i % s.MAX_GPUS, "uuid": f"GPU-{i:08x}-0000-4000-8000-000000000000"}
            for i, g in enumerate(grown)
        ]
    set_at(d, path, grown)
    return encode(d)


@pytest.mark.parametrize(("kind", "path", "limit"), list(_cases(LISTS)))
def test_list_at_max_length_is_accepted_and_one_more_rejected(
    kind: str, path: str, limit: int
) -> None:
    """A list of exactly its maximum decodes whole; one item more is 'invalid' at the list."""
    assert len(get(_accepts(kind, _filled(kind, path, limit)), keys(path))) == limit
    message = _rejects(kind, _filled(kind, path, limit + 1))
    assert f"length <= {limit}" in message
    assert message.endswith(f"at `{json_path(path)}`")


# -- strings ----------------------------------------------------------------------------------


_LENGTH_CAPPED = [
    (kind, path, text)
    for kind, fields in STRINGS.items()
    for path, text in fields.items()
    if text.max_length is not None
]


@pytest.mark.parametrize(("kind", "path", "text"), _LENGTH_CAPPED)
def test_string_at_max_length_is_accepted_and_longer_rejected(
    kind: str, path: str, text: Text
) -> None:
    """max_length characters decode; one more, or 100,000, are 'invalid'; so is '' where a
    value is required."""
    assert text.max_length is not None
    at_max = "a" * text.max_length
    assert get(_accepts(kind, _with(kind, path, at_max)), keys(path)) == at_max
    for value in ("a" * (text.max_length + 1), "a" * 100_000):
        assert json_path(path) in _rejects(kind, _with(kind, path, value))
    if text.min_length:
        assert json_path(path) in _rejects(kind, _with(kind, path, ""))


_BODY = "e3e70682-c209-4cac-a29f-6fbed82c07cd"

_PATTERN_CASES: list[tuple[str, str, list[str], list[str]]] = [
    (
        "sample",
        "gpus[].uuid",
        [f"GPU-{_BODY}", f"GPU-{_BODY.upper()}", f"MIG-{_BODY}", f"MIG-GPU-{_BODY}/1/0"],
        [
            "NaN",
            "",
            "GPU-",
            f"GPU-{_BODY[:-1]}",
            f"GPU-{_BODY}0",
            f"GPU-{_BODY[:-1]}g",
            f"gpu-{_BODY}",
            f"GPU-{_BODY}\n",
            f"GPU-{_BODY}/1/0",
            f"MIG-GPU-{_BODY}",
            f"GPU-0000{_BODY}",  # a 12-digit first group
            f"GPU-{_BODY.replace('-', '')}",
            "GPU-" + "0" * 100_000,
        ],
    ),
    (
        "sample",
        "gpus[].mig[].uuid",
        [f"MIG-{_BODY}", f"MIG-GPU-{_BODY}/1/0", f"MIG-GPU-{_BODY}/14/255"],
        ["", f"GPU-{_BODY}", f"MIG-{_BODY}\n", f"MIG-GPU-{_BODY}", f"MIG-GPU-{_BODY}/1/1000"],
    ),
    (
        "inventory",
        "gpus[].pci_bus_id",
        ["00000000:3B:00.0", "0000:3b:1f.7"],
        ["", "3B:00.0", "00000000:108:00.0", "00000000:3B:00.8", "00000000:3B:00.0\n", "NaN"],
    ),
    (
        "inventory",
        "nics[].mac",
        ["02:fc:00:00:00:01", ":".join(["ab"] * 20), ":".join(["ab"] * 32)],
        [
            "",
            ":".join(["ab"] * 33),
            "zz:fc:00:00:00:01",
            "02-fc-00-00-00-01",
            "02:fc:00:00:00:01\n",
        ],
    ),
    (
        "sample",
        "node",
        ["n", "x1000c0s0b0n0", "a" * 63, "node-7.rack_2"],
        ["", "a" * 64, "a/b", "n1\n", "-x", "n+", "n#", "n 1", "NaN\x00"],
    ),
    (
        "sample",
        "gpus[].processes[].job",
        ["4242", "4242_7", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "0+1", "a" * 64],
        ["", "a" * 65, "_4242", "42 42", "4242\n", "job/1", "42;rm", "ü"],
    ),
    *(
        (
            "sample",
            path,
            ["4242", "4242_7", "batch", "0+1", "gpu-a100", "a" * 64],
            ["", "a" * 65, "_4242", "42 42", "4242\n", "job/1", "ü"],
        )
        for path in (
            "gpus[].processes[].step",
            "jobs[].id",
            "jobs[].account",
            "jobs[].partition",
        )
    ),
    *(
        (
            "sample",
            path,
            ["trainer", "a", "kube-system", "a" * 253],
            ["", "a" * 254, "Trainer", "-x", "x-", "a_b", "x\n"],
        )
        for path in ("gpus[].processes[].container", "jobs[].namespace")
    ),
    (
        "sample",
        "jobs[].name",
        ["trainer-7f9c", "a", "vllm-0.svc", "a" * 253],
        ["", "a" * 254, "Trainer", "-x", "x-", "a_b", "x\n", "ns/pod"],
    ),
    (
        "inventory",
        "gpu_status",
        ["ok", "no_driver", "a" * 32],
        ["", "OK", "no driver", "a" * 33, "ok\n"],
    ),
    (
        "inventory",
        "metrics_address",
        [
            "gpu-node-017.cluster.example:9400",
            "10.1.2.3:1",
            "[fd00::17]:65535",
            "x1000c0s0b0n0:9400",
            "a" * 253 + ":9400",
        ],
        [
            "",
            "gpu-node-017",
            "gpu-node-017:",
            ":9400",
            "host:0",
            "host:65536",
            "host:99999",
            "host:09400",
            "a" * 254 + ":9400",
            "fd00::17:9400",
            "http://host:9400",
            "host:9400/metrics",
            "host :9400",
            "host:9400\n",
            "-host:9400",
        ],
    ),
    (
        "sample",
        "gpus[].processes[].user",
        # POSIX names, a uid, directory services' forms (SSSD, winbind), non-ASCII letters.
        [
            "root",
            "jdoe",
            "4242000",
            "jdoe@EXAMPLE.COM",
            "EXAMPLE\\jdoe",
            "john smith",
            "józef",
            "用户",
            "svc$",
            "a" * s.MAX_USER_LEN,
        ],
        # What a terminal, a chat message or a mail header would act on or hide: controls,
        # ANSI escapes, bidi overrides and isolates, zero-width and invisible spaces, a
        # padded name posing as another.
        [
            "",
            "a\nb",
            "a\tb",
            "ev\x1b[2Jil",
            "x\x1b]0;pwn\x07",
            "a\x00",
            "a\x7f",
            "a\x85b",
            "\u202eevil",
            "ab\u2066c",
            "a\u200bb",
            "a\u200d",
            "\ufeffroot",
            "a\u00adb",
            "a\u2028b",
            "a\u00a0b",
            "a\u3000b",
            "a\U000e0041",
            # The rest of Unicode's Default_Ignorable_Code_Point (invisible where shown).
            "root\uffa0",
            "a\u034fb",
            "a\u17b4b",
            "a\u180bb",
            "a\u180fb",
            "a\ufe0fb",
            "a\ufff0b",
            "a\U0001bca0b",
            "a\U0001d173b",
            "a\U000e0100b",
            # Blanks that are not ignorable: a Braille pattern without dots, a null notehead.
            "root\u2800",
            "a\U0001d159b",
            " root",
            "root ",
            "a" * (s.MAX_USER_LEN + 1),
        ],
    ),
]


@pytest.mark.parametrize(
    ("kind", "path", "good", "bad"),
    _PATTERN_CASES,
    ids=[f"{kind}:{path}" for kind, path, _, _ in _PATTERN_CASES],
)
def test_patterned_string_accepts_the_real_forms_only(
    kind: str, path: str, good: list[str], bad: list[str]
) -> None:
    """NVML UUIDs (GPU and both MIG forms), PCI bus ids, link addresses, node ids, statuses."""
    for value in good:
        assert get(_accepts(kind, _with(kind, path, value)), keys(path)) == value
    for value in bad:
        assert json_path(path) in _rejects(kind, _with(kind, path, value)), repr(value)


def test_issue_examples_are_rejected() -> None:
    """The values the issue found accepted among 5,000 mutated samples are now 'invalid'."""
    examples: list[tuple[str, Any]] = [
        ("disk_io.read_bytes_per_s", 1e300),
        ("net.nics[].rx_bytes_per_s", 1e300),
        ("net.tx_bytes_per_s", 1e300),
        ("gpus[].energy_j", 1e300),
        ("cpu.load1", 2**80),
        ("cpu.per_core_pct", [50.0] * 150_000),
        ("gpus[].uuid", "NaN"),
    ]
    for path, value in examples:
        _rejects("sample", _with("sample", path, value))
    d = sample_dict()
    d["gpus"][0]["mem_used_bytes"] = d["gpus"][1]["mem_used_bytes"] = 2**62
    assert "$.gpus[0].mem_used_bytes" in _rejects("sample", encode(d))
