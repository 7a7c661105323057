"""``collector inventory``: components per node from a real store, --node, --json, import."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec

from collector.governance.inventory import components_of
from collector.paths import StoreTarget
from collector.store.db import NodeUpdate, Store
from shared.schema import AcceleratorInfo, NicInfo, encode
from tests.collector.governance.hw_fleet import A100, EPYC, H100, Spec, cli, inventory, make_store
from tests.helpers import db_execute


async def test_table_has_a_column_per_component_kind_and_marks_what_a_node_lacks(
    tmp_path: Path,
) -> None:
    """An A100 node shows ❌ under the H100 column and the other way round."""
    db = str(
        await make_store(
            tmp_path,
            [Spec("x1000c0s0b0n0", gpu=A100, gpus=4), Spec("x1000c0s1b0n0", gpu=H100, gpus=8)],
        )
    )
    code, out, err = cli("inventory", "--db", db)
    assert code == 0, err
    header, a, h = out.splitlines()
    assert "GPU NVIDIA A100-SXM4-80GB" in header
    assert "MEMORY (16 GiB)" in header
    assert "MISSING/ERROR" in header
    assert "✅ (4)" in a
    assert "❌" in a
    assert "✅ (8)" in h
    assert "❌" in h
    assert a.count("✅ (32)") == 1  # 512 GiB installed = 32 units


async def _rows_line_up(tmp_path: Path, *, gpu: str, cpu: str) -> None:
    """`collector inventory` of a node with the ``gpu`` and ``cpu`` models and an H100 node:
    its GPU column is named by the model, and every row's memory cell starts under its
    header, in terminal columns."""
    from collector.cli._render import width  # noqa: PLC0415

    db = str(
        await make_store(
            tmp_path,
            [
                Spec("x1000c0s0b0n0", gpu=gpu, cpu=cpu),
                Spec("x1000c0s1b0n0", gpu=H100, gpus=8),
            ],
        )
    )
    code, out, err = cli("inventory", "--db", db)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert f"GPU {gpu}" in header
    start = width(header[: header.index("MEMORY")])
    assert [width(r[: r.rindex("✅")]) for r in rows] == [start, start]


async def test_columns_line_up_in_a_terminal_whatever_the_model_names(tmp_path: Path) -> None:
    """A GPU model in Chinese and a CPU model with combining accents take their terminal
    width, and each ✅ two columns: every row's memory cell starts under its header."""
    from collector.cli._render import width  # noqa: PLC0415

    assert (width("中文"), width("e\u0301"), width("✅ (8)"), width("abc")) == (4, 1, 6, 3)
    await _rows_line_up(tmp_path, gpu="中文显卡名称", cpu="Cafe\u0301 CPU")


async def test_nonspacing_marks_take_no_column_whatever_their_combining_class(
    tmp_path: Path,
) -> None:
    """A nonspacing mark of combining class 0 (the Devanagari vowel sign U in "कुमार", the
    Thai vowels in "สวัสดี"), an enclosing mark and a Hangul syllable in conjoining jamo take
    no column of their own in a terminal (UAX #11, wcwidth): counted as one each, a node's
    Thai GPU model pushed every other row's cells two columns right of their header's."""
    from collector.cli._render import cut, width  # noqa: PLC0415

    assert (width("कुमार"), width("สวัสดี"), width("a\u20dd"), width("\u1100\u1161\u11a8")) == (
        4,
        4,
        1,
        2,
    )
    assert cut("สวัสดี GPU", 5) == "สวัสดี…"  # the vowel signs stay with their letters
    await _rows_line_up(tmp_path, gpu="การ์ดจอ สวัสดี", cpu="कुमार CPU")


async def test_json_counts_units_per_column(store_url: StoreTarget) -> None:
    """--json: CPU sockets, GPUs and 16 GiB units per node."""
    db = str(await make_store(store_url, [Spec("x1000c0s0b0n0", sockets=2, mem_gib=256)]))
    code, out, _ = cli("inventory", "--db", db, "--json")
    assert code == 0
    (node,) = json.loads(out)["nodes"]
    assert node["components"] == {
        f"cpu {EPYC}": 2,
        f"gpu {A100}": 4,
        "memory 16 GiB": 16,
    }
    assert (node["pool"], node["state"], node["rack"], node["problems"]) == (
        "free",
        "online",
        "x1000",
        [],
    )


async def test_gpus_missing_from_the_latest_sample_and_a_nic_down_are_errors(
    store_url: StoreTarget,
) -> None:
    """A node whose latest sample has 3 of its 4 GPUs, with a NIC down, says so."""
    nics = [NicInfo(name="ib0", speed_mbps=200_000, model="Mellanox ConnectX-6", up=False)]
    db = str(await make_store(store_url, [Spec("n1", sample_gpus=3, nics=nics)]))
    _code, out, _ = cli("inventory", "--db", db, "--json")
    (node,) = json.loads(out)["nodes"]
    assert node["problems"] == ["nic ib0 down", "gpu: 3 of 4 in the latest sample"]
    _code, out, _ = cli("inventory", "--db", db)
    assert "gpu: 3 of 4 in the latest sample" in out


async def test_a_node_with_a_thousand_nics_down_keeps_its_table_row_short(
    tmp_path: Path,
) -> None:
    """1,024 NICs down (an inventory says what it likes) make one short MISSING/ERROR cell
    that counts the rest; --json still lists every problem."""
    nics = [NicInfo(name=f"eth{i}", speed_mbps=100_000, up=False) for i in range(1024)]
    db = str(await make_store(tmp_path, [Spec("n1", nics=nics), Spec("n2")]))
    code, out, err = cli("inventory", "--db", db)
    assert code == 0, err
    header, row, _ = out.splitlines()
    assert row.endswith("nic eth0 down; nic eth1 down; nic eth2 down; +1,021 more (--node n1)")
    assert len(row) < len(header) + 100
    _code, out, _ = cli("inventory", "--db", db, "--json")
    assert len(json.loads(out)["nodes"][0]["problems"]) == 1024


def test_nvidia_gpu_on_the_bus_that_nvml_lost_is_an_error_not_a_component() -> None:
    """An NVIDIA device in ``accelerators`` is a lost GPU; an AMD one is a component."""
    inv = msgspec.structs.replace(
        inventory(Spec("n1", gpu=None)),
        gpu_status="no_driver",
        accelerators=[
            AcceleratorInfo(vendor_id=0x10DE, device_id=0x2330, name="NVIDIA GH100"),
            AcceleratorInfo(vendor_id=0x1002, device_id=0x74A1, name="AMD Instinct MI300X"),
        ],
    )
    comps, problems = components_of(inv)
    assert [(c.kind, c.model, c.count) for c in comps if c.kind == "accelerator"] == [
        ("accelerator", "AMD Instinct MI300X", 1)
    ]
    assert problems == ["gpu: 1 NVIDIA on the PCI bus not seen by NVML (no_driver)"]


def test_memory_without_installed_size_rounds_reported_total_up() -> None:
    """503 GiB reported by the kernel (512 GiB installed, unknown) is 32 units, not 31."""
    inv = msgspec.structs.replace(
        inventory(Spec("n1", mem_gib=512)), mem_installed_bytes=None, cpus=[]
    )
    comps, _ = components_of(inv)
    by_kind = {c.kind: c for c in comps}
    assert by_kind["memory"].count == 32
    assert (by_kind["cpu"].model, by_kind["cpu"].count) == (EPYC, 1)  # old agent: one package


async def test_node_lists_components_one_per_row_with_serials(store_url: StoreTarget) -> None:
    """--node: kind, model, count or size, and the GPU serials."""
    db = str(await make_store(store_url, [Spec("x1000c0s0b0n0", gpus=2, mem_gib=1024)]))
    code, out, _ = cli("inventory", "--db", db, "--node", "x1000c0s0b0n0")
    assert code == 0
    assert "SN-x1000c0s0b0n0-0, SN-x1000c0s0b0n0-1" in out
    assert "1024 GiB" in out
    code, out, _ = cli("inventory", "--db", db, "--node", "x1000c0s0b0n0", "--json")
    comps = json.loads(out)["components"]
    assert [(c["kind"], c["count"]) for c in comps] == [("cpu", 2), ("gpu", 2), ("memory", 64)]
    code, _, err = cli("inventory", "--db", db, "--node", "nope")
    assert code == 2
    assert "no inventory for node 'nope'" in err


async def test_import_declares_nodes_and_an_agent_inventory_replaces_them(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """Declared nodes show as `declared`; once an agent reports, its own inventory wins."""
    db = await make_store(store_url, [Spec("n1")])
    lines = tmp_path / "racked.jsonl"
    declared = [inventory(Spec("n1", gpu=H100, gpus=8)), inventory(Spec("n2", gpu=H100, gpus=8))]
    lines.write_bytes(b"\n".join(encode(i) for i in declared) + b"\n\n")
    code, out, err = cli("inventory", "import", str(lines), "--db", str(db))
    assert code == 0, err
    assert out.startswith("declared 2 node inventories")
    nodes = {
        n["node"]: n for n in json.loads(cli("inventory", "--db", str(db), "--json")[1])["nodes"]
    }
    assert nodes["n1"]["state"] == "online"
    assert nodes["n1"]["components"][f"gpu {A100}"] == 4  # the agent's, not the declared H100s
    assert nodes["n2"]["state"] == "declared"
    assert nodes["n2"]["components"][f"gpu {H100}"] == 8


async def test_import_with_a_bad_line_names_it_and_imports_nothing(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """Line 2 has 65 GPUs: exit 2 naming line 2 and the field; no node declared."""
    db = await make_store(store_url, [Spec("n1")])
    good = encode(inventory(Spec("n2")))
    bad = msgspec.json.decode(encode(inventory(Spec("n3", gpus=1))))
    bad["gpus"] = bad["gpus"] * 65
    lines = tmp_path / "bad.jsonl"
    lines.write_bytes(good + b"\n" + msgspec.json.encode(bad) + b"\n")
    code, _, err = cli("inventory", "import", str(lines), "--db", str(db))
    assert code == 2
    assert f"{lines}:2: not an inventory" in err
    assert "$.gpus" in err
    assert err.count("\n") == 1
    nodes = json.loads(cli("inventory", "--db", str(db), "--json")[1])["nodes"]
    assert [n["node"] for n in nodes] == ["n1"]


async def test_import_naming_a_node_twice_names_both_lines_and_imports_nothing(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """n2 on lines 1 and 3 (8 H100s, then 4 A100s): which is right is the operator's call,
    not the last line's (it replaced the first and reported one node, without a word)."""
    db = await make_store(store_url, [Spec("n1")])
    lines = tmp_path / "twice.jsonl"
    invs = [Spec("n2", gpu=H100, gpus=8), Spec("n3"), Spec("n2", gpu=A100, gpus=4)]
    lines.write_bytes(b"\n".join(encode(inventory(i)) for i in invs) + b"\n")
    code, _, err = cli("inventory", "import", str(lines), "--db", str(db))
    assert (code, err.count("\n")) == (2, 1), err
    assert f"{lines}:3: node n2 is also on line 1: one inventory per node" in err
    nodes = json.loads(cli("inventory", "--db", str(db), "--json")[1])["nodes"]
    assert [n["node"] for n in nodes] == ["n1"]


async def test_import_of_a_file_over_32_mib_is_refused_before_it_is_read_whole(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """`inventory import /dev/zero` (or a runaway generator on stdin) is refused as `apply
    -f` refuses it: one line, exit 2, instead of reading without end into memory."""
    db = await make_store(store_url, [Spec("n1")])
    big = tmp_path / "huge.jsonl"
    with big.open("wb") as f:
        f.truncate((32 << 20) + 1)  # sparse: costs no disk
    code, _, err = cli("inventory", "import", str(big), "--db", str(db))
    assert (code, err.count("\n")) == (2, 1)
    assert f"'{big}' is larger than 32 MiB" in err, err


async def test_unknown_pool_is_a_clear_error(store_url: StoreTarget) -> None:
    """`inventory nope` names the pools that exist."""
    db = await make_store(store_url, [Spec("n1")])
    code, _, err = cli("inventory", "nope", "--db", str(db))
    assert code == 2
    assert "no pool 'nope': pools are free" in err
    code, out, _ = cli("inventory", "free", "--db", str(db))
    assert code == 0
    assert "n1" in out


async def test_a_stored_inventory_gone_bad_is_a_problem_not_a_crash(store_url: StoreTarget) -> None:
    """A row that is not JSON, or with 10^6 sockets, shows as unreadable; the rest still shows."""
    db = await make_store(store_url, [Spec("good")])
    bad = msgspec.json.decode(encode(inventory(Spec("huge"))))
    bad["cpus"][0]["sockets"] = 10**6
    db_execute(db, "INSERT INTO nodes (node, inventory) VALUES ('junk', ?)", (b"\x00\xff",))
    db_execute(
        db, "INSERT INTO nodes (node, inventory) VALUES ('huge', ?)", (msgspec.json.encode(bad),)
    )
    code, out, _ = cli("inventory", "--db", str(db), "--json")
    assert code == 0
    nodes = {n["node"]: n for n in json.loads(out)["nodes"]}
    assert nodes["good"]["components"][f"gpu {A100}"] == 4
    for name in ("junk", "huge"):
        assert nodes[name]["components"] == {}
        assert nodes[name]["problems"][0].startswith("inventory unreadable")


def test_gpus_listed_with_a_status_other_than_ok_are_an_error() -> None:
    """An inventory whose NVML status is not ``ok`` although it lists GPUs says so."""
    inv = msgspec.structs.replace(inventory(Spec("n1")), gpu_status="nvml_error")
    _, problems = components_of(inv)
    assert problems == ["gpu: status nvml_error"]


def test_a_node_with_two_gpu_models_counts_each_with_or_without_ids() -> None:
    """Mixed GPUs and NICs are counted per model on both paths (table and --node)."""
    inv = inventory(Spec("n1", gpus=3))
    mixed = msgspec.structs.replace(
        inv,
        gpus=[
            *inv.gpus,
            msgspec.structs.replace(
                inv.gpus[0], name=H100, index=3, uuid="GPU-00000003-0000-4000-8000-00000000ffff"
            ),
        ],
        nics=[
            NicInfo(name="ib0", speed_mbps=400_000, model="ConnectX-7"),
            NicInfo(name="ib1", speed_mbps=400_000, model="ConnectX-7"),
            NicInfo(name="eno1", speed_mbps=25_000, model="BCM57414"),
        ],
    )
    for with_ids in (True, False):
        comps, _ = components_of(mixed, with_ids=with_ids)
        counts = {c.key: c.count for c in comps if c.kind in ("gpu", "nic")}
        assert counts == {
            f"gpu {A100}": 3,
            f"gpu {H100}": 1,
            "nic ConnectX-7 400 Gb/s": 2,
            "nic BCM57414 25 Gb/s": 1,
        }


async def test_control_characters_a_node_sends_never_reach_the_terminal(tmp_path: Path) -> None:
    """ANSI escapes and newlines in model and NIC names are shown escaped, one row per node."""
    evil = "H100\x1b[2J\nEVIL\u202e"
    nics = [NicInfo(name="ib\x1b]0;x\x07", speed_mbps=100_000, up=False)]
    db = str(
        await make_store(
            tmp_path, [Spec("x1000c0s0b0n0", gpu=evil, cpu="EPYC\r\x1b[31m", nics=nics)]
        )
    )
    for args in (("inventory",), ("inventory", "--node", "x1000c0s0b0n0")):
        code, out, err = cli(*args, "--db", db)
        assert code == 0, err
        assert not any(c in out for c in "\x1b\x07\r\u202e"), out
        assert "H100\\x1b[2J\\nEVIL\\u202e" in out
        assert "ib\\x1b]0;x\\x07" in out
    _code, out, _ = cli("inventory", "--db", db)
    assert len(out.splitlines()) == 2  # the header and the node's one row
    _code, out, _ = cli("inventory", "--db", db, "--json")
    assert f"gpu {evil}" in json.loads(out)["columns"]  # scripts get the text as sent


async def test_one_node_with_a_thousand_models_cannot_widen_the_fleet_table(
    store_url: StoreTarget,
) -> None:
    """The table keeps the MAX_COLUMNS kinds most nodes have; the rest count under OTHER."""
    from collector.cli.inventory import MAX_COLUMNS  # noqa: PLC0415

    nics = [
        NicInfo(name=f"n{i}", speed_mbps=1000 + i, model=f"NIC-{i:04d}-" + "x" * 200)
        for i in range(MAX_COLUMNS * 3)
    ]
    specs = [Spec(f"x1000c0s{i}b0n0") for i in range(3)] + [Spec("evil", nics=nics)]
    db = str(await make_store(store_url, specs))
    code, out, err = cli("inventory", "--db", db)
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0]
    assert f"GPU {A100}" in header  # what every node has stays
    assert header.count("NIC ") <= MAX_COLUMNS
    assert "OTHER" in header
    assert max(len(line) for line in lines) < 80 * (MAX_COLUMNS + 6)
    evil = next(line for line in lines if line.startswith("evil"))
    assert f"+{MAX_COLUMNS * 3 - (MAX_COLUMNS - 3)} kinds" in evil
    assert lines[-1].startswith(f"({MAX_COLUMNS * 2 + 3:,} more component kinds")
    _code, out, _ = cli("inventory", "--db", db, "--json")
    assert len(json.loads(out)["columns"]) == 3 + MAX_COLUMNS * 3  # --json keeps them all


async def test_import_reads_a_file_with_a_utf8_bom_and_says_one_inventory_per_line(
    store_url: StoreTarget,
    tmp_path: Path,
) -> None:
    """A BOM from a Windows editor is skipped; pretty-printed JSON gets the one-per-line hint."""
    db = await make_store(store_url, [Spec("n1")])
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + encode(inventory(Spec("n2"))) + b"\r\n")
    code, out, err = cli("inventory", "import", str(lines), "--db", str(db))
    assert code == 0, err
    assert out.startswith("declared 1 node inventories")
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(encode(inventory(Spec("n3")))), indent=2))
    code, _, err = cli("inventory", "import", str(pretty), "--db", str(db))
    assert code == 2
    assert "one JSON inventory per line" in err
    assert err.count("\n") == 1


async def test_nodes_known_without_an_inventory_are_named_in_the_empty_answer(
    store_url: StoreTarget,
) -> None:
    """`collector inventory` said only "no nodes with an inventory yet" while `query` listed
    nodes that had sent samples (probe11): it says how many and where inventories come from."""
    db = await make_store(store_url, [])
    code, out, err = cli("inventory", "--db", str(db))
    assert code == 0, err
    assert out.strip() == "no nodes with an inventory yet"
    async with Store(db) as store:
        await store.write_batch([], [NodeUpdate("n9", "online", time.time())], ["n9"])
    code, out, err = cli("inventory", "--db", str(db))
    assert code == 0, err
    assert "no nodes with an inventory yet; 1 node(s) reported without one" in out
    assert "`collector inventory import`" in out
