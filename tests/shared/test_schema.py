"""Wire schema v1: what validates, what is rejected and why."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from agent.simulate import FleetSimulator
from shared import schema
from shared.errors import SchemaError
from shared.schema import decode_inventory, decode_sample, decode_status, encode
from tests.shared.wire_samples import inventory_dict, sample_dict


def _sample_dict() -> dict[str, object]:
    sim = FleetSimulator(1, gpus_per_node=2, seed=5, interval_s=5)
    result: dict[str, object] = msgspec.json.decode(encode(sim.sample(0, 1.8e9, 3)))
    return result


def test_a_node_whose_uuids_passed_is_still_refused_a_bad_one() -> None:
    """decode_sample does not match a node's GPU UUIDs again while they are its last
    sample's: a sample of that node with one UUID changed to a malformed one is refused
    (msgspec's words, the field's path); with the good ones again, accepted."""
    good = sample_dict()
    decode_sample(msgspec.json.encode(good))
    bad = sample_dict()
    bad["gpus"][3]["uuid"] = "GPU-" + "0" * 36
    with pytest.raises(SchemaError, match=r"matching regex .* - at `\$\.gpus\[3\]\.uuid`$") as e:
        decode_sample(msgspec.json.encode(bad))
    assert e.value.reason == "invalid"
    assert decode_sample(msgspec.json.encode(good)).gpus[3].uuid == good["gpus"][3]["uuid"]


def test_a_node_whose_uuids_passed_is_still_refused_two_gpus_under_one_index() -> None:
    """Its known UUIDs are distinct; its GPUs' indexes are checked in every sample."""
    d = sample_dict()
    decode_sample(msgspec.json.encode(d))
    d["gpus"][1]["index"] = d["gpus"][0]["index"]
    with pytest.raises(SchemaError, match=r"^two GPUs with index 0 in `\$\.gpus`$") as e:
        decode_sample(msgspec.json.encode(d))
    assert e.value.reason == "invalid"


def test_the_known_uuids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node names are the sender's to invent: past the bound the known UUIDs start again, and
    every sample is still checked."""
    monkeypatch.setattr(schema, "_known_uuids", schema._KnownUuids())
    monkeypatch.setattr(schema, "_UUIDS_KEPT", 20)
    for i in range(5):
        d = sample_dict()
        d["node"] = f"n{i}"
        decode_sample(msgspec.json.encode(d))
        known = schema._known_uuids
        assert known.count == sum(1 + len(u) for u in known.by_node.values()) <= 20
    d["gpus"][0]["uuid"] = "NaN"
    with pytest.raises(SchemaError, match=r"gpus\[0\]\.uuid"):
        decode_sample(msgspec.json.encode(d))


def test_gpu_less_samples_under_invented_node_names_are_bounded_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """decode_sample holds a sample's node before the ingest compares it with the topic's
    (refused after it, ``topic_mismatch``): a node sending GPU-less samples under invented
    names added a name a message, no UUID, and the bound, which counted UUIDs only, never
    came (200,000 names: 200,000 held, ~22 MB). A node held counts as one beside its UUIDs."""
    monkeypatch.setattr(schema, "_known_uuids", schema._KnownUuids())
    monkeypatch.setattr(schema, "_UUIDS_KEPT", 20)
    d = sample_dict()
    d.update(gpus=[], jobs=[], xids=[])
    for i in range(50):
        d["node"] = f"invented-{i}"
        decode_sample(msgspec.json.encode(d))
        assert len(schema._known_uuids.by_node) <= 20
    known = schema._known_uuids
    assert known.count == sum(1 + len(u) for u in known.by_node.values())


def test_a_string_that_matched_one_pattern_is_still_checked_against_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """decode_sample keeps the strings that matched lately a set per pattern: a user name
    (spaces inside) accepted is still refused as a job id, a job account (capitals, an
    underscore) still refused as a Kubernetes name, in each field of that pattern, with
    msgspec's words and the field's path."""
    monkeypatch.setattr(schema, "_known_text", schema._KnownText())
    d = sample_dict()
    d["gpus"][0]["processes"][0]["user"] = "Alice Smith"
    d["jobs"][0]["account"] = "Trainer_1"
    decode_sample(msgspec.json.encode(d))
    for path, value in (
        (("gpus", 0, "processes", 0, "job"), "Alice Smith"),
        (("gpus", 0, "processes", 0, "step"), "Alice Smith"),
        (("jobs", 0, "id"), "Alice Smith"),
        (("gpus", 7, "processes", 0, "container"), "Trainer_1"),
        (("jobs", 1, "namespace"), "Trainer_1"),
        (("jobs", 1, "name"), "Trainer_1"),
    ):
        bad = sample_dict()
        where: Any = bad
        for key in path[:-1]:
            where = where[key]
        where[path[-1]] = value
        shown = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)
        with pytest.raises(
            SchemaError, match=rf"matching regex .* - at `{re.escape('$' + shown)}`$"
        ) as e:
            decode_sample(msgspec.json.encode(bad))
        assert e.value.reason == "invalid"


def test_the_known_process_and_job_strings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users, job ids and pod names are the sender's to invent: each kind's set starts again
    past the bound, and every sample is still checked after."""
    monkeypatch.setattr(schema, "_known_text", schema._KnownText())
    monkeypatch.setattr(schema, "_TEXT_KEPT", 20)
    d = sample_dict()
    for i in range(50):
        for g, gpu in enumerate(d["gpus"]):
            gpu["processes"][0]["user"] = f"user-{i}-{g}"
            gpu["processes"][0]["job"] = f"job-{i}-{g}"
        d["jobs"][1]["name"] = f"pod-{i}"
        decode_sample(msgspec.json.encode(d))
        known = schema._known_text
        assert max(len(known.users), len(known.ids), len(known.k8s)) <= 20
    d["gpus"][0]["processes"][0]["user"] = " user-49-0"
    with pytest.raises(SchemaError, match=r"gpus\[0\]\.processes\[0\]\.user`$"):
        decode_sample(msgspec.json.encode(d))


def test_sample_round_trips_through_json() -> None:
    """encode() then decode_sample() gives back an equal struct."""
    sample = FleetSimulator(1, seed=1).sample(0, 1.8e9, 7)
    assert decode_sample(encode(sample)) == sample


@pytest.mark.parametrize(
    ("mutate", "reason", "where"),
    [
        (lambda d: d.update(v=2), "version", "$.v"),
        (lambda d: d.update(node="a/b"), "invalid", "$.node"),
        (lambda d: d.update(ts=-1.0), "invalid", "$.ts"),
        (lambda d: d["gpus"][0].update(util_pct=101.0), "invalid", "$.gpus[0].util_pct"),
        (lambda d: d["gpus"][1].update(power_w=-5.0), "invalid", "$.gpus[1].power_w"),
        (lambda d: d["mem"].update(used_bytes="lots"), "invalid", "$.mem.used_bytes"),
        (lambda d: d.pop("cpu"), "invalid", "cpu"),
        # Past SQLite's signed 64-bit integers: would crash the writer, so rejected here.
        (lambda d: d.update(seq=2**70), "invalid", "$.seq"),
        (lambda d: d["mem"].update(total_bytes=2**64), "invalid", "$.mem.total_bytes"),
        (lambda d: d.update(ts=1e300), "invalid", "$.ts"),
        # Two GPUs under one index (or UUID) would merge into one in the rollups and rules.
        (lambda d: d["gpus"][1].update(index=d["gpus"][0]["index"]), "invalid", "$.gpus"),
        (lambda d: d["gpus"][1].update(uuid=d["gpus"][0]["uuid"]), "invalid", "$.gpus"),
    ],
)
def test_bad_sample_is_rejected_with_reason_and_field(
    mutate: object, reason: str, where: str
) -> None:
    """Each broken field gives a SchemaError naming the path and its category."""
    d = _sample_dict()
    mutate(d)  # type: ignore[operator]
    with pytest.raises(SchemaError) as info:
        decode_sample(msgspec.json.encode(d))
    assert info.value.reason == reason
    assert where in str(info.value)


def test_non_json_is_its_own_reason() -> None:
    """Bytes that are not JSON are 'not_json', not 'invalid'."""
    with pytest.raises(SchemaError) as info:
        decode_sample(b"\x00\x01garbage")
    assert info.value.reason == "not_json"


def test_unknown_fields_are_tolerated_for_forward_compatibility() -> None:
    """A v1.x writer may add fields; a v1 reader ignores them."""
    d = _sample_dict()
    d["future_field"] = {"x": 1}
    assert decode_sample(msgspec.json.encode(d)).node == "x1000c0s0b0n0"


def test_first_sample_rates_are_null_not_zero() -> None:
    """Unknown rates travel as null and decode as None."""
    d = _sample_dict()
    d["disk_io"] = {"read_bytes_per_s": None, "write_bytes_per_s": None}
    assert decode_sample(msgspec.json.encode(d)).disk_io.read_bytes_per_s is None


def test_inventory_and_status_decode() -> None:
    """Inventory and status messages have their own validated structs."""
    sim = FleetSimulator(1, gpus_per_node=4)
    inv = decode_inventory(encode(sim.inventory(0, 1.8e9)))
    assert [g.index for g in inv.gpus] == [0, 1, 2, 3]
    assert decode_status(b'{"v":1,"node":"n1","status":"offline"}').status == "offline"
    with pytest.raises(SchemaError):
        decode_status(b'{"v":1,"node":"n1","status":"sleeping"}')


def test_inventory_from_an_agent_before_the_hardware_fields_still_decodes() -> None:
    """cpus, memory modules, accelerators and NIC models are optional additions."""
    d = inventory_dict()
    for key in ("cpus", "mem_installed_bytes", "mem_dimms", "accelerators"):
        del d[key]
    for nic in d["nics"]:
        del nic["model"], nic["up"]
    inv = decode_inventory(msgspec.json.encode(d))
    assert (inv.cpus, inv.accelerators, inv.mem_dimms, inv.nics[0].model) == ([], [], None, None)


@pytest.mark.parametrize("field", ["index", "uuid"])
def test_an_inventory_naming_one_gpu_twice_is_rejected(field: str) -> None:
    """An inventory's GPUs are one each: a repeated index or UUID is invalid."""
    d = inventory_dict()
    gpus = d["gpus"]
    assert isinstance(gpus, list)
    assert len(gpus) >= 2
    gpus[1][field] = gpus[0][field]
    with pytest.raises(SchemaError) as info:
        decode_inventory(msgspec.json.encode(d))
    assert info.value.reason == "invalid"
    assert "$.gpus" in str(info.value)
    assert field in str(info.value)
