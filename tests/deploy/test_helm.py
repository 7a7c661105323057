"""The Helm chart (deploy/helm/capwatch): it lints, it renders the committed plain manifests,
its schema refuses what cannot work, and its values reach the pods.

The facts every rendering must hold (settings, probes, volumes, the Kubernetes API) are
checked in test_kubernetes.py on the chart's output; here, what is the chart's own.
Offline, with the helm binary of the dev extra (tests/deploy/helm.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml

from collector.power.plan import load_plan
from collector.settings import CollectorMqttSettings, CollectorSettings
from shared.settings import load_settings
from shared.topics import SHARE_GROUP_RE
from tests.deploy.helm import (
    CHART,
    CI_VALUES,
    KUBERNETES_VERSION,
    ROOT,
    helm,
    render,
    run_helm,
)
from tests.deploy.manifests import (
    MANIFESTS,
    PLAIN,
    Manifests,
    container,
    manifests,
    pod_spec,
)

PLAIN_VALUES: Final = CI_VALUES / "plain-manifests-values.yaml"


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _names_field(message: str, field: str) -> bool:
    """Whether helm's schema error names ``field`` (``collector.replicas``), as Helm 3.17
    writes it or as a JSON pointer (``/collector/replicas``, later Helm 3 releases)."""
    return field in message or "/" + field.replace(".", "/") in message


@pytest.mark.parametrize("values", sorted(p.name for p in CI_VALUES.glob("*-values.yaml")))
def test_chart_lints_clean_with_each_ci_values_file(values: str) -> None:
    """``helm lint --strict`` (warnings are failures) with each values file the tests use."""
    done = run_helm("lint", CHART, "--strict", "--values", CI_VALUES / values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_plain_manifests_are_the_chart_rendered(tmp_path: Path) -> None:
    """deploy/kubernetes/*.yaml (but the hand-written namespace.yaml) is exactly what
    deploy/kubernetes/render.sh makes of the chart: the two cannot drift."""
    env = {**os.environ, "HELM": str(helm())}
    subprocess.run(
        [ROOT / "deploy" / "kubernetes" / "render.sh", tmp_path], env=env, check=True, timeout=120
    )
    rendered = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in MANIFESTS.glob("*.yaml")}
    assert committed.pop("namespace.yaml")
    assert rendered.keys() == committed.keys()
    stale = sorted(name for name in rendered if rendered[name] != committed[name])
    assert not stale, f"{stale} differ from the chart: run deploy/kubernetes/render.sh"


BAD_VALUES: Final = [
    pytest.param(
        {"collector": {"replicas": 2, "shareGroup": "site"}},
        "collector.replicas",
        id="several-collectors-on-sqlite",
    ),
    pytest.param({"collector": {"shareGroup": "site"}}, "collector.shareGroup", id="sqlite-group"),
    pytest.param(
        {
            "collector": {
                "replicas": 2,
                "store": {"kind": "postgresql", "postgresql": {"url": "postgresql://c@db/c"}},
            }
        },
        "collector.shareGroup",
        id="several-collectors-without-a-share-group",
    ),
    pytest.param({"collector": {"replica": 2}}, "replica", id="misspelled-key"),
    pytest.param({"mqtt": {"host": ""}}, "mqtt.host", id="no-broker"),
    pytest.param(
        {"collector": {"shareGroup": "$share/x"}}, "collector.shareGroup", id="bad-group-name"
    ),
    pytest.param({"mqtt": {"port": 70000}}, "mqtt.port", id="port-out-of-range"),
    pytest.param({"mqtt": {"tls": {"caConfigMap": "site-ca"}}}, "mqtt.tls.caCert", id="two-cas"),
    pytest.param({"agent": {"mqtt": {"password": ""}}}, "agent.mqtt.password", id="no-password"),
    pytest.param(
        {"collector": {"store": {"kind": "postgresql"}}},
        "collector.store.postgresql.url",
        id="postgresql-without-url",
    ),
    pytest.param({"collector": {"store": {"kind": "mysql"}}}, "collector.store.kind", id="mysql"),
    pytest.param(
        {"collector": {"config": {"toml": "retention_s = 1", "existingConfigMap": "site"}}},
        "collector.config",
        id="config-text-and-configmap",
    ),
    pytest.param(
        {"collector": {"config": {"toml": "x = 1", "files": {"collector.toml": "y = 2"}}}},
        "collector.config.files",
        id="config-file-named-collector-toml",
    ),
    pytest.param({"collector": {"maxUnavailable": -1}}, "collector.maxUnavailable", id="pdb"),
    pytest.param(
        {
            "collector": {
                "store": {
                    "postgresql": {
                        "caConfigMap": "site-db-ca",
                        "caCert": "-----BEGIN CERTIFICATE-----\nx\n",
                    }
                }
            }
        },
        "collector.store.postgresql.caCert",
        id="two-database-cas",
    ),
]


@pytest.mark.parametrize(("bad", "field"), BAD_VALUES)
def test_schema_refuses_a_bad_values_file_naming_the_value(
    tmp_path: Path, bad: dict[str, Any], field: str
) -> None:
    """``helm template`` (and so ``install``) stops on the schema, naming the value; the same
    values without the bad one render."""
    done = run_helm(
        "template", "capwatch", CHART, "--values", PLAIN_VALUES, "--values",
        _values_file(tmp_path, bad),
    )  # fmt: skip
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert _names_field(done.stderr, field), done.stderr
    assert render(PLAIN_VALUES)


def test_several_collectors_on_postgresql_in_a_share_group_pass_the_schema() -> None:
    """What the schema refuses on SQLite renders on PostgreSQL with a share group."""
    statefulset = manifests("postgresql-share-group").one("StatefulSet", "capwatch-collector")
    assert statefulset["spec"]["replicas"] == 3


def test_schema_share_group_pattern_is_the_collectors() -> None:
    """collector.shareGroup is checked with the pattern of the setting mqtt.share_group."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = schema["properties"]["collector"]["properties"]["shareGroup"]["pattern"]
    # The setting checks with shared.topics.SHARE_GROUP_RE (Python's \Z: no newline after
    # the end); JSON Schema's ECMA-262 $ has none either.
    assert pattern == "^$|" + SHARE_GROUP_RE.pattern.removesuffix("\\Z") + "$"
    assert CollectorMqttSettings.model_validate({"share_group": "a.b"}).share_group == "a.b"


def test_app_version_is_capwatchs() -> None:
    """The chart's appVersion (the images' default tag) is capwatch's version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == importlib.metadata.version("capwatch")


def _pod_names_fit(tmp_path: Path, fullname: str) -> subprocess.CompletedProcess[str]:
    values = yaml.safe_load((CI_VALUES / "postgresql-share-group-values.yaml").read_text())
    values["fullnameOverride"] = fullname
    return run_helm("template", "x", CHART, "--values", _values_file(tmp_path, values))


def test_a_member_pod_name_longer_than_an_instance_name_is_refused(tmp_path: Path) -> None:
    """A member's instance is its pod name: one longer than the setting allows fails the
    rendering with one line saying what to do; the longest accepted one the setting takes."""
    replicas = 3
    (pattern,) = CollectorSettings.model_fields["instance"].metadata
    longest = int(pattern.pattern.rsplit(",", 1)[1].split("}")[0]) + 1  # {0,31}: 32
    suffix = f"-collector-{replicas - 1}"
    fits = "c" * (longest - len(suffix))
    CollectorSettings(instance=fits + suffix)
    assert _pod_names_fit(tmp_path, fits).returncode == 0
    done = _pod_names_fit(tmp_path, fits + "c")
    assert done.returncode != 0
    assert f"longer than the {longest} characters" in done.stderr
    assert "fullnameOverride" in done.stderr


def test_existing_secrets_and_ca_are_referenced_not_created() -> None:
    """With existing Secrets and ConfigMap named, the chart creates none and the pods read
    those."""
    docs = render(
        sets=(
            "mqtt.host=broker.example",
            "mqtt.tls.caConfigMap=site-ca",
            "agent.mqtt.existingSecret=site-agent",
            "collector.mqtt.existingSecret=site-collector",
            "collector.store.kind=postgresql",
            "collector.store.postgresql.existingSecret=site-db",
            "collector.config.existingConfigMap=site-config",
            "collector.store.postgresql.caConfigMap=site-db-ca",
        )
    )
    assert {d["kind"] for d in docs} == {"DaemonSet", "StatefulSet", "Service"}
    refs: set[tuple[str, str]] = set()
    for workload in (d for d in docs if d["kind"] != "Service"):
        for c in pod_spec(workload)["containers"]:
            for var in c["env"]:
                if "secretKeyRef" in var.get("valueFrom", {}):
                    ref = var["valueFrom"]["secretKeyRef"]
                    refs.add((ref["name"], ref["key"]))
        for volume in pod_spec(workload)["volumes"]:
            if "configMap" in volume:
                key = "collector.toml" if volume["name"] == "config" else "ca.crt"
                refs.add((volume["configMap"]["name"], key))
            if "secret" in volume:
                refs.add((volume["secret"]["secretName"], volume["secret"]["items"][0]["key"]))
    assert refs == {
        ("site-agent", "password"),
        ("site-collector", "username"),
        ("site-collector", "password"),
        ("site-db", "url"),
        ("site-db", "password"),
        ("site-ca", "ca.crt"),
        ("site-config", "collector.toml"),
        ("site-db-ca", "ca.crt"),
    }


def test_image_repository_and_tag_reach_every_container() -> None:
    """The agent (and its init container) run <repository>:<tag>, the collector
    <repository>:<tag>-collector: the Dockerfile's two targets."""
    docs = Manifests(
        "custom image",
        tuple(
            render(
                PLAIN_VALUES,
                sets=("image.repository=registry.example/hpc/capwatch", "image.tag=1.4.2"),
            )
        ),
    )
    agent = pod_spec(docs.one("DaemonSet", "capwatch-agent"))
    assert {c["image"] for c in agent["initContainers"] + agent["containers"]} == {
        "registry.example/hpc/capwatch:1.4.2"
    }
    collector = container(docs.one("StatefulSet", "capwatch-collector"), "collector")
    assert collector["image"] == "registry.example/hpc/capwatch:1.4.2-collector"
    dockerfile = (MANIFESTS / "Dockerfile").read_text()
    assert "AS agent\n" in dockerfile
    assert "AS collector\n" in dockerfile


def test_agent_scheduling_and_resources_come_from_the_values(tmp_path: Path) -> None:
    """Node selector, tolerations, runtime class and resources are the site's to set, and
    the result is still a valid DaemonSet."""
    values: dict[str, Any] = {
        "agent": {
            # Helm merges maps with the defaults: null removes the default label.
            "nodeSelector": {"node-role.example/gpu": "a100", "nvidia.com/gpu.present": None},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "hpc"}],
            "runtimeClassName": "",
            "resources": {"requests": {"cpu": "20m"}, "limits": {"memory": "200Mi"}},
        }
    }
    docs = Manifests("agent values", tuple(render(PLAIN_VALUES, _values_file(tmp_path, values))))
    daemonset = docs.one("DaemonSet", "capwatch-agent")
    pod = pod_spec(daemonset)
    assert pod["nodeSelector"] == {"node-role.example/gpu": "a100"}
    assert pod["tolerations"] == values["agent"]["tolerations"]
    assert "runtimeClassName" not in pod
    assert container(daemonset, "agent")["resources"] == {  # merged with the defaults too
        "requests": {"cpu": "20m", "memory": "128Mi"},
        "limits": {"cpu": "200m", "memory": "200Mi"},
    }
    kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_web_config_is_mounted_and_the_probes_follow_it() -> None:
    """The web config's Secret is mounted read-only and named by --web-config-file's setting;
    the probes use HTTPS when it has TLS, and only connect when it asks for credentials."""
    values = yaml.safe_load((CI_VALUES / "web-config-values.yaml").read_text())
    docs = manifests("web-config")
    for kind, name, component in (
        ("DaemonSet", "capwatch-agent", "agent"),
        ("StatefulSet", "capwatch-collector", "collector"),
    ):
        web = values[component]["webConfig"]
        workload = docs.one(kind, name)
        spec = container(workload, component)
        env = docs.env(workload, component)
        (volume,) = [v for v in pod_spec(workload)["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == web["secretName"]
        (mount,) = [m for m in spec["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        assert Path(env["CAPWATCH_WEB_CONFIG_FILE"]).parent == Path(mount["mountPath"])
        for kind_of_probe in ("livenessProbe", "readinessProbe"):
            probe = spec[kind_of_probe]
            if web["auth"]:
                assert probe["tcpSocket"]["port"] == "metrics"
            else:
                assert probe["httpGet"]["scheme"] == ("HTTPS" if web["tls"] else "HTTP")


def _notes(tmp_path: Path, values: Path) -> str:
    """NOTES.txt as ``helm install`` prints it. helm renders it only against a cluster, so a
    copy of the chart carries it in a ConfigMap that ``helm template`` renders."""
    chart = tmp_path / "capwatch"
    shutil.copytree(CHART, chart)
    # .Files cannot read templates/: the copy keeps NOTES.txt beside Chart.yaml too.
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
        '{{ tpl (.Files.Get "notes.txt") . | indent 4 }}\n'
    )
    (doc,) = render(values, chart=chart, show_only="templates/notes-test.yaml")
    text: str = doc["data"]["notes"]
    return text


def test_notes_list_the_broker_users_to_create(tmp_path: Path) -> None:
    """After install: every collector member's two MQTT users, and where to look."""
    notes = _notes(tmp_path, CI_VALUES / "postgresql-share-group-values.yaml")
    for ordinal in range(3):
        assert f"capwatch-collector-{ordinal} (reads" in notes
        assert f"capwatch-collector-{ordinal}-live (reads" in notes
    assert "capwatch-collector-3" not in notes
    assert "kubectl get nodes -l nvidia.com/gpu.present=true -o name" in notes
    assert "http://capwatch-collector.capwatch.svc:9474/metrics" in notes
    assert "kubectl -n capwatch rollout status statefulset/capwatch-collector" in notes


def test_the_collectors_toml_and_its_files_reach_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collector.config: the chart's ConfigMap is mounted where --config and the TOML's own
    paths look, and what it holds loads into the collector's settings (the pod's variables
    too) and names a plan the capacity check can read."""
    docs = manifests("postgresql-share-group")
    statefulset = docs.one("StatefulSet", "capwatch-collector")
    spec = container(statefulset, "collector")
    (volume,) = [v for v in pod_spec(statefulset)["volumes"] if v["name"] == "config"]
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == "config"]
    assert mount["readOnly"] is True
    flag, path = spec["args"]
    assert flag == "--config"
    assert Path(path).parent == Path(mount["mountPath"])
    data = docs.one("ConfigMap", volume["configMap"]["name"])["data"]
    assert Path(path).name in data
    for name, text in data.items():  # the mount, here
        (tmp_path / name).write_text(text.replace(mount["mountPath"], str(tmp_path)))
    for name in [n for n in os.environ if n.upper().startswith("CAPWATCH_")]:
        monkeypatch.delenv(name)
    for name, value in docs.env(statefulset, "collector").items():
        if name.startswith("CAPWATCH_") and name != "CAPWATCH_STORE__PASSWORD_FILE":
            monkeypatch.setenv(name, value)
    settings = load_settings(CollectorSettings, config_file=tmp_path / Path(path).name)
    assert settings.alerts.gpu_temp_c == 85.0  # from the TOML
    assert settings.retention_s == 172800.0  # extraEnv overrides the TOML's 86400
    assert settings.capacity.plan is not None
    assert load_plan(settings.capacity.plan).site.it_cap_mw == 5.0


def test_a_share_group_gets_a_disruption_budget_over_its_members() -> None:
    """replicas > 1: a PodDisruptionBudget whose selector picks exactly the collector's pods;
    one collector (the plain manifests): none."""
    docs = manifests("postgresql-share-group")
    statefulset = docs.one("StatefulSet", "capwatch-collector")
    (pdb,) = [d for d in docs.docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"] == statefulset["spec"]["selector"]
    assert not [d for d in manifests(PLAIN).docs if d["kind"] == "PodDisruptionBudget"]


def test_the_database_ca_is_mounted_where_libpq_looks_and_verifies_the_name() -> None:
    """collector.store.postgresql.caCert: PGSSLROOTCERT names the CA's file on a read-only
    mount of the ConfigMap that holds it, and PGSSLMODE asks libpq to verify the server's
    certificate and name; without a CA neither variable is set."""
    docs = manifests("postgresql-share-group")
    values = yaml.safe_load((CI_VALUES / "postgresql-share-group-values.yaml").read_text())
    statefulset = docs.one("StatefulSet", "capwatch-collector")
    env = docs.env(statefulset, "collector")
    assert env["PGSSLMODE"] == "verify-full"
    ca = Path(env["PGSSLROOTCERT"])
    spec = container(statefulset, "collector")
    (mount,) = [m for m in spec["volumeMounts"] if Path(m["mountPath"]) == ca.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(statefulset)["volumes"] if v["name"] == mount["name"]]
    data = docs.one("ConfigMap", volume["configMap"]["name"])["data"]
    assert data[ca.name].strip() == values["collector"]["store"]["postgresql"]["caCert"].strip()
    plain = manifests(PLAIN)
    plain_env = plain.env(plain.one("StatefulSet", "capwatch-collector"), "collector")
    assert not {"PGSSLMODE", "PGSSLROOTCERT"} & plain_env.keys()
