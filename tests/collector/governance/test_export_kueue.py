"""``collector export --format kueue``: objects Kueue's CRDs accept, with the store's figures.

Every object is validated against the ``v1beta1`` openAPIV3Schema of Kueue's own CRD files
(tests/data/kueue, v0.14.8), made strict as ``kubectl apply --validate=strict`` is (a field
the schema does not name is an error, not pruned). The CRDs' CEL rules
(``x-kubernetes-validations``) and the two rules of Kueue's admission webhook that concern
quotas are checked by hand, each keyed by its text, so a rule a new CRD adds fails here
until it has a check.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import jsonschema
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from collector.governance.kueue import apportion, k8s_name, kueue_manifests
from collector.governance.lease import LeaseTerms
from collector.governance.quota import Quota, QuotaTree
from collector.governance.state import Governance, Lease, TenantQuota
from tests.collector.governance.hw_fleet import A100, H100, Spec, cli, make_store

CRDS: Final = Path(__file__).resolve().parents[2] / "data" / "kueue"
VERSION: Final = "v1beta1"
SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

Doc = dict[str, Any]


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it names the properties and
    does not keep unknown fields: what strict validation refuses, the API server prunes."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _schemas() -> dict[str, Doc]:
    out: dict[str, Doc] = {}
    for path in sorted(CRDS.glob("kueue.x-k8s.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
        out[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


SCHEMAS: Final = _schemas()


def _rules(schema: Doc, value: Any) -> Iterator[tuple[str, Any]]:
    """(CEL rule, the value it applies to) for every ``x-kubernetes-validations`` rule on a
    part of the schema that ``value`` fills."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule["rule"], value
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                yield from _rules(schema["properties"][key], sub)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            yield from _rules(schema["items"], item)


def _all(items: list[Doc], pred: Callable[[Doc], bool]) -> bool:
    return all(pred(x) for x in items)


CEL: Final[dict[str, Callable[[Any], bool]]] = {
    "self.flavors.all(x, size(x.resources) == size(self.coveredResources))": lambda rg: _all(
        rg["flavors"], lambda f: len(f["resources"]) == len(rg["coveredResources"])
    ),
    "!has(self.cohort) && has(self.resourceGroups) ? self.resourceGroups.all(rg, "
    "rg.flavors.all(f, f.resources.all(r, !has(r.borrowingLimit)))) : true": lambda spec: (
        "cohort" in spec
        or "resourceGroups" not in spec
        or not any(
            "borrowingLimit" in r
            for rg in spec["resourceGroups"]
            for f in rg["flavors"]
            for r in f["resources"]
        )
    ),
    "!(self.reclaimWithinCohort == 'Never' && has(self.borrowWithinCohort) "
    "&&  self.borrowWithinCohort.policy != 'Never')": lambda p: (
        not (
            p.get("reclaimWithinCohort") == "Never"
            and p.get("borrowWithinCohort", {}).get("policy", "Never") != "Never"
        )
    ),
    "!has(self.topologyName) || self.nodeLabels.size() >= 1": lambda spec: (
        "topologyName" not in spec or len(spec.get("nodeLabels", {})) >= 1
    ),
    # A transition rule: on create there is no old object, so it holds.
    "!has(oldSelf.topologyName) || self == oldSelf": lambda _spec: True,
}


def _webhook(doc: Doc) -> list[str]:
    """Kueue's admission webhook on quotas (pkg/webhooks/clusterqueue_webhook.go):
    lendingLimit <= nominalQuota, and no limit without a cohort (a Cohort: a parent)."""
    spec = doc["spec"]
    linked = "cohort" in spec if doc["kind"] == "ClusterQueue" else "parentName" in spec
    errors = []
    for rg in spec.get("resourceGroups", []):
        for f in rg["flavors"]:
            for r in f["resources"]:
                if not linked and ("borrowingLimit" in r or "lendingLimit" in r):
                    errors.append(f"{doc['metadata']['name']}: a limit without a cohort")
                if "lendingLimit" in r and float(r["lendingLimit"]) > float(r["nominalQuota"]):
                    errors.append(f"{doc['metadata']['name']}: lendingLimit > nominalQuota")
    return errors


def check_object(doc: Doc) -> None:
    """``doc`` as the API server with Kueue installed would take it, or AssertionError."""
    schema = SCHEMAS[doc["kind"]]
    jsonschema.validate(doc, _strict(schema), cls=jsonschema.Draft7Validator)
    assert doc["apiVersion"] == f"kueue.x-k8s.io/{VERSION}"
    jsonschema.validate(doc["metadata"]["name"], {"type": "string", "pattern": SUBDOMAIN})
    assert len(doc["metadata"]["name"]) <= 253
    for rule, value in _rules(schema, doc):
        assert rule in CEL, f"a CEL rule without a check here: {rule!r}"
        assert CEL[rule](value), f"{doc['metadata']['name']} breaks {rule!r}"
    assert _webhook(doc) == []


def _day(offset: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset)).isoformat()


CLUSTER: Final = f"""\
[cohorts.org]
quota = {{ gpus = 6 }}

[cohorts.research]
parent = "org"
quota = {{ gpus = {{ nominal = 8, borrowing_limit = 4, lending_limit = 5 }} }}

[cohorts.Lab_2]
parent = "org"

[tenants.acme]
cohort = "research"
quota.gpus = {{ nominal = 16, borrowing_limit = 4 }}
quota.gpu_hours = {{ nominal = 5000, period = "week" }}

[tenants.beta]
cohort = "research"
quota.gpus = {{ nominal = 9, lending_limit = 3 }}

[tenants.Team_A]
cohort = "Lab_2"
quota.gpus = {{ nominal = 4 }}

[tenants.solo]
quota.gpus = {{ nominal = 8, borrowing_limit = 2, lending_limit = 1 }}

[tenants.watcher]

[leases.acme-now]
tenant = "acme"
nodes = ["a1", "a2"]
start = {_day(-10)}
duration_days = 60

[leases.beta-now]
tenant = "beta"
nodes = ["h1"]
start = {_day(-10)}
duration_days = 60
"""
FLEET: Final = [
    Spec("a1", gpu=A100, gpus=4),
    Spec("a2", gpu=A100, gpus=4),
    Spec("a3", gpu=A100, gpus=4),
    Spec("h1", gpu=H100, gpus=8),
    Spec("h2", gpu=H100, gpus=8),
]


async def _store(tmp_path: Path, text: str = CLUSTER, fleet: list[Spec] = FLEET) -> str:
    db = str(await make_store(tmp_path, fleet))
    (tmp_path / "cluster.toml").write_text(text)
    code, _, err = cli("apply", "--db", db, "-f", str(tmp_path / "cluster.toml"))
    assert (code, err) == (0, ""), err
    return db


def _export(db: str, *extra: str) -> tuple[list[Doc], str]:
    code, out, err = cli("export", "--db", db, "--format", "kueue", *extra)
    assert code == 0, err
    return [d for d in yaml.safe_load_all(out) if d is not None], err


def _by(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["annotations"]["capwatch.io/name"]: d for d in docs if d["kind"] == kind}


def _sums(doc: Doc) -> dict[str, float | None]:
    """A ClusterQueue's or Cohort's figures summed over its flavors (``None``: unset)."""
    out: dict[str, float | None] = {"nominal": None, "borrowing_limit": None, "lending_limit": None}
    keys = {"nominalQuota": "nominal", "borrowingLimit": "borrowing_limit"}
    keys["lendingLimit"] = "lending_limit"
    for rg in doc["spec"].get("resourceGroups", []):
        assert rg["coveredResources"] == ["nvidia.com/gpu"]
        for f in rg["flavors"]:
            for r in f["resources"]:
                for key, name in keys.items():
                    if key in r:
                        out[name] = (out[name] or 0.0) + float(r[key])
    return out


async def test_every_object_validates_against_kueue_crds(tmp_path: Path) -> None:
    """ResourceFlavors, Cohorts and ClusterQueues pass the CRDs' schemas, CEL rules and the
    webhook's quota rules; one flavor per GPU model with GFD's product label."""
    db = await _store(tmp_path)
    docs, err = _export(db)
    assert sorted({d["kind"] for d in docs}) == ["ClusterQueue", "Cohort", "ResourceFlavor"]
    for doc in docs:
        check_object(doc)
    flavors = _by(docs, "ResourceFlavor")
    assert {n: d["spec"]["nodeLabels"] for n, d in flavors.items()} == {
        A100: {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        H100: {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    }
    assert "no ClusterQueue for the tenants without a gpus quota: watcher" in err
    assert "not expressed in Kueue: the gpu_hours quotas" in err
    docs, _ = _export(db, "--gpu-label", "example.com/gpu-model")
    labels = [d["spec"]["nodeLabels"] for d in docs if d["kind"] == "ResourceFlavor"]
    assert labels[0] == {"example.com/gpu-model": "NVIDIA-A100-SXM4-80GB"}


async def test_a_fleet_of_more_gpu_models_than_a_resource_group_holds_still_validates(
    tmp_path: Path,
) -> None:
    """A node declaring 64 GPUs of 64 made-up models (its inventory is its own to write)
    must not make every ClusterQueue one Kueue refuses (at most 64 flavors in a resource
    group): the 64 models with the most GPUs are flavors, the rest named in a note, and the
    figures still sum to the store's."""
    odd = [Spec(f"odd{i}", gpu=f"Odd GPU {i:02}", gpus=1) for i in range(64)]
    db = await _store(tmp_path, fleet=[*FLEET, *odd])
    docs, err = _export(db)
    for doc in docs:
        check_object(doc)
    flavors = _by(docs, "ResourceFlavor")
    assert len(flavors) == 64
    assert {A100, H100} <= set(flavors)
    assert "2 GPU models past Kueue's 64 flavors" in err
    assert "Odd GPU 62, Odd GPU 63" in err
    queues = _by(docs, "ClusterQueue")
    assert _sums(queues["acme"])["nominal"] == 16
    assert _sums(queues["solo"])["nominal"] == 8


async def test_gpu_models_left_out_cannot_write_into_the_manifest(tmp_path: Path) -> None:
    """A node's inventory names its GPU models, any text: a model left out (past the 64
    flavors) once went raw into the manifest's `# ...` note, so a newline in it ended the
    comment and wrote objects of the node's choosing into the file `kubectl apply -f` takes
    (and an ESC made it a file YAML refuses). Every model past the flavors was listed, on one
    line: 1,000 nodes of 64 made-up 256-character names made it megabytes long."""
    evil = "zz\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: pwned\n# \x1b[2J"
    odd = [Spec(f"odd{i}", gpu=f"Odd GPU {i:03} {'x' * 200}", gpus=1) for i in range(100)]
    db = await _store(tmp_path, fleet=[*FLEET, *odd, Spec("evil", gpu=evil, gpus=1)])
    docs, err = _export(db)
    assert sorted({d["kind"] for d in docs}) == ["ClusterQueue", "Cohort", "ResourceFlavor"]
    assert "\x1b" not in err
    (note,) = [line for line in err.splitlines() if "past Kueue's 64 flavors" in line]
    assert note.startswith("warning: 39 GPU models past Kueue's 64 flavors")
    assert note.endswith("and 29 more")
    assert len(note) < 3_000


def test_a_field_kueue_does_not_know_fails_the_check() -> None:
    """The strict schema refuses a misspelt field, the CEL check a limit without a cohort."""
    cq: Doc = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "ClusterQueue",
        "metadata": {"name": "q"},
        "spec": {
            "resourceGroups": [
                {
                    "coveredResources": ["nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": "f",
                            "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 1}],
                        }
                    ],
                }
            ]
        },
    }
    check_object(cq)
    bad = copy.deepcopy(cq)
    bad["spec"]["cohortName"] = "x"  # v1beta2's name of the field
    with pytest.raises(jsonschema.ValidationError):
        check_object(bad)
    bad = copy.deepcopy(cq)
    bad["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["borrowingLimit"] = 1
    with pytest.raises(AssertionError, match=r"breaks"):
        check_object(bad)


async def test_figures_equal_the_stores_quotas(tmp_path: Path) -> None:
    """Summed over flavors, each ClusterQueue's and Cohort's figures are the store's (as
    `collector export --json` reads them), limits kept only where Kueue allows them; the
    cohort tree is the store's."""
    db = await _store(tmp_path)
    docs, _ = _export(db)
    _, out, _ = cli("export", "--db", db, "--json")
    stored = json.loads(out)
    queues, cohorts = _by(docs, "ClusterQueue"), _by(docs, "Cohort")
    governed = {n for n, t in stored["tenants"].items() if "gpus" in t.get("quota", {})}
    assert set(queues) == governed == {"acme", "beta", "Team_A", "solo"}
    for name in governed:
        tenant = stored["tenants"][name]
        q = tenant["quota"]["gpus"]
        in_cohort = "cohort" in tenant
        assert _sums(queues[name]) == {
            "nominal": q["nominal"],
            "borrowing_limit": q.get("borrowing_limit") if in_cohort else None,
            "lending_limit": q.get("lending_limit") if in_cohort else None,
        }, name
        cohort_name = queues[name]["spec"].get("cohort")
        if in_cohort:
            assert cohorts[tenant["cohort"]]["metadata"]["name"] == cohort_name
        else:
            assert cohort_name is None
    assert queues["Team_A"]["metadata"]["name"] == k8s_name("Team_A") != "Team_A"
    assert set(cohorts) == set(stored["cohorts"])
    for name, c in stored["cohorts"].items():
        parent = c.get("parent")
        want = None if parent is None else cohorts[parent]["metadata"]["name"]
        assert cohorts[name]["spec"].get("parentName") == want
        own = c.get("quota", {}).get("gpus")
        if own is None:
            assert "resourceGroups" not in cohorts[name]["spec"]
            continue
        own = own if isinstance(own, dict) else {"nominal": own}
        assert _sums(cohorts[name]) == {
            "nominal": own["nominal"],
            "borrowing_limit": own.get("borrowing_limit"),
            "lending_limit": own.get("lending_limit"),
        }


async def test_quotas_go_to_the_models_a_tenant_holds(tmp_path: Path) -> None:
    """acme leases A100 nodes only: its 16 GPUs of nominal are all A100; beta holds an H100
    node: its 9 and lending limit 3 are H100; solo holds nothing: split as the fleet (12
    A100, 16 H100 GPUs) in whole GPUs."""
    db = await _store(tmp_path)
    docs, _ = _export(db)
    queues = _by(docs, "ClusterQueue")

    def per_flavor(name: str) -> dict[str, dict[str, Any]]:
        (rg,) = queues[name]["spec"]["resourceGroups"]
        return {f["name"]: f["resources"][0] for f in rg["flavors"]}

    a100, h100 = "nvidia-a100-sxm4-80gb", "nvidia-h100-80gb-hbm3"
    assert per_flavor("acme") == {
        a100: {"name": "nvidia.com/gpu", "nominalQuota": 16, "borrowingLimit": 4},
        h100: {"name": "nvidia.com/gpu", "nominalQuota": 0, "borrowingLimit": 0},
    }
    assert per_flavor("beta") == {
        a100: {"name": "nvidia.com/gpu", "nominalQuota": 0, "lendingLimit": 0},
        h100: {"name": "nvidia.com/gpu", "nominalQuota": 9, "lendingLimit": 3},
    }
    assert per_flavor("solo") == {
        a100: {"name": "nvidia.com/gpu", "nominalQuota": 3},
        h100: {"name": "nvidia.com/gpu", "nominalQuota": 5},
    }


async def test_round_trip_gives_kueue_the_stores_arithmetic(tmp_path: Path) -> None:
    """On a one-model fleet the manifests read back into the same quota tree: every
    tenant's potential and its available at each usage, every cohort's subtree quota."""
    fleet = [Spec(f"h{i}", gpu=H100, gpus=8) for i in range(1, 4)] + [Spec("a1", gpu=H100)]
    text = CLUSTER.replace('"a1", "a2"', '"h2", "h3"')
    db = await _store(tmp_path, text, fleet)
    docs, _ = _export(db)
    (flavor,) = _by(docs, "ResourceFlavor").values()
    assert flavor["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    back = _tree(docs)
    _, out, _ = cli("export", "--db", db, "--json")
    stored = json.loads(out)
    tenants = {
        n: (Quota(**t["quota"]["gpus"]), t.get("cohort"))
        for n, t in stored["tenants"].items()
        if "gpus" in t.get("quota", {})
    }
    own = {
        n: Quota(**q) if isinstance(q, dict) else Quota(q)
        for n, c in stored["cohorts"].items()
        if (q := c.get("quota", {}).get("gpus")) is not None
    }
    parents = {n: c.get("parent") for n, c in stored["cohorts"].items()}
    want = QuotaTree(tenants, own, parents)
    for usage in ({}, {"acme": 20.0}, {"acme": 10.0, "beta": 9.0, "Team_A": 5.0}):
        for t in want.tenants:
            k = k8s_name(t)
            assert back.potential(k) == want.potential(t), t
            assert back.available(k, _renamed(usage)) == want.available(t, usage), (t, usage)
    for c in want.cohorts():
        assert back.cohort_subtree(k8s_name(c)) == want.cohort_subtree(c)


def _renamed(usage: dict[str, float]) -> dict[str, float]:
    return {k8s_name(t): u for t, u in usage.items()}


def _tree(docs: list[Doc]) -> QuotaTree:
    """The quota tree the manifests describe, one flavor's figures summed (Kueue's view)."""

    def quota(doc: Doc) -> Quota:
        s = _sums(doc)
        return Quota(s["nominal"] or 0.0, s["borrowing_limit"], s["lending_limit"])

    tenants = {
        d["metadata"]["name"]: (quota(d), d["spec"].get("cohort"))
        for d in docs
        if d["kind"] == "ClusterQueue"
    }
    cohorts = {
        d["metadata"]["name"]: quota(d)
        for d in docs
        if d["kind"] == "Cohort" and "resourceGroups" in d["spec"]
    }
    parents = {
        d["metadata"]["name"]: d["spec"].get("parentName") for d in docs if d["kind"] == "Cohort"
    }
    return QuotaTree(tenants, cohorts, parents)


async def test_output_file_json_and_bad_flags(tmp_path: Path) -> None:
    """--output writes what stdout would; --json is a v1 List; a bad label key or a flag of
    another format: exit 2, one line naming it."""
    db = await _store(tmp_path)
    docs, _ = _export(db)
    target = tmp_path / "kueue.yaml"
    code, out, _ = cli("export", "--db", db, "--format", "kueue", "-o", str(target))
    assert (code, out) == (0, "")
    assert [d for d in yaml.safe_load_all(target.read_text()) if d] == docs
    code, out, _ = cli("export", "--db", db, "--format", "kueue", "--json")
    listed = json.loads(out)
    assert (listed["apiVersion"], listed["kind"], listed["items"]) == ("v1", "List", docs)
    for args, field in (
        (("--format", "kueue", "--gpu-label", "not a key"), "--gpu-label"),
        (("--format", "slurm", "--gpu-label", "a/b"), "--gpu-label"),
        (("--format", "kueue", "--slurm-nodes", "x"), "--slurm-nodes"),
        (("--format", "kueue", "-o", str(tmp_path / "no" / "such" / "dir.yaml")), "--output"),
    ):
        code, out, err = cli("export", "--db", db, *args)
        assert code == 2, args
        errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert len(errors) == 1
        assert field in errors[0]


def test_names_become_dns_subdomains_and_stay_distinct() -> None:
    """Valid names are kept; others are lowered with a hash, so Team_A and team-a differ."""
    for name in ("acme", "a.b-c", "x" * 63):
        assert k8s_name(name) == name
    names = ["Team_A", "team-a", "team_a", "A.", "a_-", "9-", "_x" * 31 + "z"]
    mapped = [k8s_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    for m in mapped:
        jsonschema.validate(m, {"type": "string", "pattern": SUBDOMAIN, "maxLength": 253})


def _gov(q: Quota, held_gpus: list[int], in_cohort: bool) -> tuple[Governance, dict[str, Any]]:
    """One tenant leasing one node of each model with ``held_gpus[i]`` GPUs of model i."""
    node_gpus = {f"n{i}": {f"M{i}": k} for i, k in enumerate(held_gpus) if k}
    node_gpus["spare"] = {f"M{i}": 1 for i in range(len(held_gpus))}
    terms = LeaseTerms(dt.date(2020, 1, 1), duration_days=36_000)
    lease = Lease(1, "l", "t", None, tuple(n for n in node_gpus if n != "spare"), terms)
    gov = Governance(
        tenants={"t": "c" if in_cohort else None},
        cohorts={"c"} if in_cohort else set(),
        quotas={("t", "gpus"): TenantQuota(q)},
        leases=[lease] if lease.nodes else [],
    )
    return gov, node_gpus


@settings(max_examples=200, deadline=None)
@given(
    nominal=st.integers(0, 1000) | st.floats(0, 1000, allow_nan=False),
    lend=st.floats(0, 1),
    borrow=st.none() | st.integers(0, 100),
    held=st.lists(st.integers(0, 16), min_size=1, max_size=5),
)
# Largest remainder's Alabama paradox: 4 over 1:3:3 is 0, 2, 2 but 3 is 1, 1, 1.
@example(nominal=4, lend=0.75, borrow=None, held=[1, 3, 3])
def test_split_sums_to_the_figure_and_lends_within_nominal(
    nominal: float, lend: float, borrow: int | None, held: list[int]
) -> None:
    """Whatever the models and holdings, the flavors' figures sum to the tenant's, whole
    figures stay whole, and no flavor lends more than its nominal quota."""
    ll = float(int(nominal * lend)) if float(nominal).is_integer() else nominal * lend
    q = Quota(float(nominal), None if borrow is None else float(borrow), ll)
    gov, node_gpus = _gov(q, held, in_cohort=True)
    (_, *_, cq) = kueue_manifests(gov, node_gpus, 1.9e9).objects
    check_object(cq)
    sums = _sums(cq)
    assert sums["nominal"] == pytest.approx(q.nominal, abs=1e-9)
    assert sums["lending_limit"] == pytest.approx(ll, abs=1e-9)
    assert sums["borrowing_limit"] == borrow
    for f in cq["spec"]["resourceGroups"][0]["flavors"]:
        r = f["resources"][0]
        if float(nominal).is_integer():
            assert isinstance(r["nominalQuota"], int)
        assert float(r["lendingLimit"]) <= float(r["nominalQuota"]) + 1e-9


def test_apportion_whole_figures_by_largest_remainder() -> None:
    """10 over 1:1:1 is 4, 3, 3; over no weights equally; a fraction in proportion."""
    assert apportion(10, [1, 1, 1]) == [4.0, 3.0, 3.0]
    assert apportion(3, [0, 0]) == [2.0, 1.0]
    assert apportion(16, [12, 16]) == [7.0, 9.0]
    assert apportion(2.5, [1, 4]) == [0.5, 2.0]


def test_a_stored_gpu_quota_that_is_not_whole_is_named_in_a_warning() -> None:
    """A gpus quota of 1.5 stored before `quota set` took whole GPUs only: the export says
    which tenant holds it (Kubernetes refuses the ClusterQueue), and what to do."""
    gov, node_gpus = _gov(Quota(1.5), [8], in_cohort=False)
    notes = kueue_manifests(gov, node_gpus, 1.9e9).notes
    assert any(
        "tenant t: a gpus figure is not a whole number" in n and "quota set" in n for n in notes
    ), notes
    gov, node_gpus = _gov(Quota(2.0), [8], in_cohort=False)
    assert not any("whole" in n for n in kueue_manifests(gov, node_gpus, 1.9e9).notes)
