"""Memory held by :func:`shared.schema.decode_sample`'s caches of checked strings
(``_known_uuids``, ``_known_text``) under hostile samples that fill them with invented names.

Each scenario decodes ``--samples`` samples (200,000 by default) of one kind and prints the
most memory that was held (tracemalloc, after each sample, less what was held before: the
payload decoded last is a few kB of it) and what the caches hold at the end:

- ``nodes0``: GPU-less samples, each under a new 63-character node name;
- ``nodes1``: each under a new node name with one new 52-character MIG UUID;
- ``nodes8``: each under a new node name with 8 new 52-character UUIDs;
- ``text``: one node; each sample's process has a new user of 64 characters (54 of them
  4-byte), a new 64-character job id, and its job a new 64-character id and new 253-character
  namespace and pod name.

Usage: ``PYTHONPATH=$PWD .venv/bin/python bench/bench_known_caches.py [SCENARIO ...]``
"""

from __future__ import annotations

import argparse
import tracemalloc
from typing import Any

import msgspec

from shared import schema
from shared.schema import decode_sample
from tests.shared.wire_samples import sample_dict

SCENARIOS = ("nodes0", "nodes1", "nodes8", "text")


def _hex(i: int, n: int) -> str:
    return format(i, "x").rjust(n, "0")


def _mig(i: int) -> str:
    h = _hex(i, 32)
    return f"MIG-GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}/999/999"


def _payload(base: dict[str, Any], scenario: str, i: int) -> bytes:
    d = dict(base, node="n" + _hex(i, 62), jobs=[], xids=[])
    gpu0 = base["gpus"][0]
    if scenario == "nodes0":
        d["gpus"] = []
    elif scenario in ("nodes1", "nodes8"):
        n = 1 if scenario == "nodes1" else 8
        d["gpus"] = [dict(gpu0, index=k, uuid=_mig(i * n + k), processes=[]) for k in range(n)]
    else:
        process = {
            "pid": 4000,
            "user": "\U0001f600" * 54 + _hex(i, 10),
            "job": _hex(i, 64),
            "step": "0",
        }
        d["node"] = "node-1"
        d["gpus"] = [dict(gpu0, uuid=_mig(1), processes=[process])]
        d["jobs"] = [
            {
                "id": _hex(i + 1, 64),
                "scheduler": "kubernetes",
                "namespace": "a" * 243 + _hex(i, 10),
                "name": "b" * 243 + _hex(i, 10),
            }
        ]
    return msgspec.json.encode(d)


def run(scenario: str, samples: int) -> None:
    schema._known_uuids.__init__()  # type: ignore[misc]
    schema._known_text.__init__()  # type: ignore[misc]
    base = sample_dict()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    most = 0
    for i in range(samples):
        decode_sample(_payload(base, scenario, i))
        most = max(most, tracemalloc.get_traced_memory()[0] - before)
    tracemalloc.stop()
    uuids, text = schema._known_uuids, schema._known_text
    print(
        f"{scenario}: {samples:,} samples: {most / 1e6:.1f} MB held at most; at the end "
        f"{len(uuids.by_node):,} nodes ({uuids.count:,} counted), {len(text.users):,} users, "
        f"{len(text.ids):,} ids, {len(text.k8s):,} Kubernetes names"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="*", help=f"of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    for scenario in args.scenario or SCENARIOS:
        if scenario not in SCENARIOS:
            parser.error(f"scenario: {scenario!r} is none of {', '.join(SCENARIOS)}")
    for scenario in args.scenario or SCENARIOS:
        run(scenario, args.samples)


if __name__ == "__main__":
    main()
