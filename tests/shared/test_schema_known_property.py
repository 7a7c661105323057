"""decode_sample's own checks of names, UUIDs and job strings, with their caches, against
msgspec's ``pattern`` (what the schema declared before the caches): over many random hostile
samples of a few nodes, both must accept and refuse the same ones.

The hostile strings are the ones a node could try on a cache: a known UUID or name changed in
one character after a hit (a unicode look-alike, a control character, NUL, a newline at the
end, which ``$`` would let through and ``\\Z`` does not), truncated or very long; another
node's UUIDs; GPUs reordered or named twice; a node renamed; and the caches' bounds small
enough that they are emptied again and again while this runs.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

import msgspec
import pytest

from shared import schema
from shared.errors import SchemaError
from shared.schema import (
    GPU_UUID_PATTERN,
    JOB_ID_PATTERN,
    K8S_NAME_PATTERN,
    NODE_ID_PATTERN,
    USER_PATTERN,
    decode_sample,
)
from tests.shared.wire_samples import sample_dict, uuid

_LOOKALIKES = (
    "\u0430",  # Cyrillic a
    "\u0435",  # Cyrillic e
    "\uff10",  # fullwidth 0
    "\u0660",  # Arabic-Indic 0 (a Unicode digit: \d would match it)
    "\u2010",  # hyphen
    "\u2212",  # minus sign
    "\u00a0",  # no-break space
    "\u200b",  # zero-width space
    "\u0131",  # dotless i
    "K",  # Kelvin sign: lower-cases to k
    "\x00",
    "\x1b",
    "\x7f",
    "\n",
    "\r",
    "\t",
    " ",
    "/",
    "#",
    "+",
)


def _accepted(value: str, pattern: str) -> bool:
    """Whether msgspec's ``pattern`` (the schema's declaration) accepts ``value``."""
    try:
        msgspec.json.decode(
            msgspec.json.encode(value), type=Annotated[str, msgspec.Meta(pattern=pattern)]
        )
    except msgspec.ValidationError:
        return False
    return True


def _mutated(rng: random.Random, good: str, rate: float) -> str:
    """``good``, or (at ``rate``) a hostile near miss of it."""
    if rng.random() >= rate:
        return good
    kind = rng.randrange(4, 10)
    if kind == 4:  # one character replaced
        i = rng.randrange(len(good))
        return good[:i] + rng.choice(_LOOKALIKES) + good[i + 1 :]
    if kind == 5:  # one character added at the end or the start
        c = rng.choice((*_LOOKALIKES, "0", "a", "A", "-"))
        return good + c if rng.random() < 0.5 else c + good
    if kind == 6:
        return good[: rng.randrange(len(good))]
    if kind == 7:
        return good * rng.choice((2, 5, 300))
    if kind == 8:
        return good.upper() if rng.random() < 0.5 else good.swapcase()
    return "".join(rng.choice(_LOOKALIKES + tuple(good)) for _ in range(rng.randrange(1, 80)))


_NODES = ("x1000c0s0b0n0", "gpu-01", "gpu-02", "a", "N" * 63)
_UUIDS = (
    *(uuid(i) for i in range(12)),
    "MIG-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "MIG-GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/1/0",
)
_USERS = ("alice", "Alice Smith", "jdoe@EXAMPLE.COM", "EXAMPLE\\jdoe", "1001", "j\u00f6rg")
_IDS = ("4242", "4242_7", "0+1", "batch", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "Trainer_1")
_K8S = ("pytorch", "team-a", "train-7d9f-x", "a.b-c")


def _drawn(rng: random.Random, pool: tuple[str, ...]) -> str:
    """A string of ``pool``, or now and then one of another field's (valid there: a user
    name as a job id, a job id as a Kubernetes name)."""
    return rng.choice(pool if rng.random() < 0.95 else _USERS + _IDS + _K8S)


def _hostile_sample(rng: random.Random) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A sample of one of a few nodes with hostile strings in it, and each checked string
    with the pattern msgspec declared for it."""
    d = sample_dict()
    checked: list[tuple[str, str]] = []
    d["node"] = _mutated(rng, rng.choice(_NODES), 0.15)
    checked.append((d["node"], NODE_ID_PATTERN))
    gpus = d["gpus"][: rng.randrange(len(d["gpus"]) + 1)]
    rng.shuffle(gpus)  # GPUs reordered: the same UUIDs in another order
    uuids = rng.sample(_UUIDS, len(gpus))  # also another node's, sometimes
    if len(gpus) > 1 and rng.random() < 0.1:
        uuids[rng.randrange(len(gpus))] = uuids[0]  # one UUID twice
    for g, u in zip(gpus, uuids, strict=True):
        g["uuid"] = _mutated(rng, u, 0.05)
        checked.append((g["uuid"], GPU_UUID_PATTERN))
        for p in g["processes"]:
            for field, pool, pattern in (
                ("user", _USERS, USER_PATTERN),
                ("job", _IDS, JOB_ID_PATTERN),
                ("step", _IDS, JOB_ID_PATTERN),
                ("container", _K8S, K8S_NAME_PATTERN),
            ):
                if field in p:
                    p[field] = _mutated(rng, _drawn(rng, pool), 0.01)
                    checked.append((p[field], pattern))
    d["gpus"] = gpus
    for j in d["jobs"]:
        for field, pool, pattern in (
            ("id", _IDS, JOB_ID_PATTERN),
            ("account", _IDS, JOB_ID_PATTERN),
            ("partition", _IDS, JOB_ID_PATTERN),
            ("namespace", _K8S, K8S_NAME_PATTERN),
            ("name", _K8S, K8S_NAME_PATTERN),
        ):
            if field in j:
                j[field] = _mutated(rng, _drawn(rng, pool), 0.05)
                checked.append((j[field], pattern))
    return d, checked


@pytest.mark.parametrize("seed", range(4))
def test_the_cached_checks_agree_with_msgspecs_patterns(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of 600 hostile samples (after a good one of each node, so the caches hold them):
    decode_sample accepts it exactly when every string matches its declared pattern under
    msgspec and no UUID is named twice, and an accepted sample carries the strings sent."""
    monkeypatch.setattr(schema, "_known_uuids", schema._KnownUuids())
    monkeypatch.setattr(schema, "_known_text", schema._KnownText())
    monkeypatch.setattr(schema, "_UUIDS_KEPT", 40)  # emptied again and again below
    monkeypatch.setattr(schema, "_TEXT_KEPT", 12)
    rng = random.Random(seed)
    for node in _NODES:
        good = sample_dict()
        good["node"] = node
        decode_sample(msgspec.json.encode(good))
    agreed = {True: 0, False: 0}
    for _ in range(600):
        d, checked = _hostile_sample(rng)
        sent = [g["uuid"] for g in d["gpus"]]
        expected = all(_accepted(v, p) for v, p in checked) and len(set(sent)) == len(sent)
        payload = msgspec.json.encode(d)
        if not expected:
            with pytest.raises(SchemaError) as e:
                decode_sample(payload)
            assert e.value.reason == "invalid"
        else:
            sample = decode_sample(payload)  # a SchemaError here: a valid sample refused
            assert sample.node == d["node"]
            assert [g.uuid for g in sample.gpus] == sent
        agreed[expected] += 1
    assert min(agreed.values()) > 50, agreed  # both kinds were tried, many times
