"""deploy/kubernetes: valid for a pinned Kubernetes API, and in step with capwatch's settings.

Offline: the API check is kubernetes-validate's bundled OpenAPI schemas (strict: an unknown or
misspelled field is an error, as ``kubectl apply --validate=strict`` makes it), and the rest
reads the YAML. No cluster, no kubectl.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from agent.settings import AgentSettings
from collector.settings import CollectorSettings
from shared.metrics_http import parse_listen
from shared.settings import CapwatchSettings, load_settings

KUBERNETES_VERSION: Final = "1.30.0"
"""The API the manifests must be valid for: the oldest Kubernetes deploy/kubernetes/README.md
promises. A field added after it fails here, so the manifests stay usable on older clusters."""

MANIFESTS: Final = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
NAMESPACE: Final = "capwatch"
NODE_NAME: Final = "gpu-node-017"
"""What the downward API's ``spec.nodeName`` gives in these tests."""

Doc = dict[str, Any]


def _documents() -> list[tuple[str, Doc]]:
    out: list[tuple[str, Doc]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


DOCS: Final = _documents()


def _one(kind: str, name: str) -> Doc:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def _container(workload: Doc, name: str) -> Doc:
    containers: list[Doc] = _pod_spec(workload)["containers"]
    (container,) = [c for c in containers if c["name"] == name]
    return container


def _secret_value(name: str, key: str) -> str:
    value: str = _one("Secret", name)["stringData"][key]
    return value


def _env(container: Doc) -> dict[str, str]:
    """The container's variables as the kubelet would set them on node ``NODE_NAME``."""
    out: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "spec.nodeName", var
            out[var["name"]] = NODE_NAME
        else:
            ref = source["secretKeyRef"]
            out[var["name"]] = _secret_value(ref["name"], ref["key"])
    return out


def _settings(
    monkeypatch: pytest.MonkeyPatch, cls: type[CapwatchSettings], env: dict[str, str]
) -> CapwatchSettings:
    """``cls`` built from ``env`` alone, as the entry point builds it in the pod."""
    for name in [n for n in os.environ if n.upper().startswith("CAPWATCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(cls)


def _setting(settings: CapwatchSettings, env_name: str) -> Any:
    """The value of the setting ``env_name`` names (``CAPWATCH_MQTT__HOST`` -> mqtt.host)."""
    value: Any = settings
    for part in env_name.removeprefix("CAPWATCH_").lower().split("__"):
        assert part in getattr(type(value), "model_fields", {}), (
            f"{env_name} names no setting of {type(settings).__name__} (no {part!r}): "
            "renamed or misspelled? The daemon would ignore it."
        )
        value = getattr(value, part)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _mount_of(container: Doc, path: PurePosixPath) -> Doc:
    """The volume mount whose mountPath is ``path`` or holds it."""
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if path == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in path.parents
    ]
    assert mounts, f"{path} is on no volume of container {container['name']!r}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def _volume(workload: Doc, name: str) -> Doc:
    volumes: list[Doc] = _pod_spec(workload).get("volumes", [])
    (volume,) = [v for v in volumes if v["name"] == name]
    return volume


def _port(container: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert isinstance(number, int)
    return number


def _probes(container: Doc) -> Iterator[tuple[str, Doc]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]


DAEMONS: Final = [
    pytest.param("DaemonSet", "capwatch-agent", "agent", AgentSettings, id="agent"),
    pytest.param(
        "StatefulSet", "capwatch-collector", "collector", CollectorSettings, id="collector"
    ),
]


@pytest.mark.parametrize(
    "doc", [d for _, d in DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]
)
def test_manifest_is_valid_for_the_pinned_kubernetes_api(doc: Doc) -> None:
    """Each object passes the strict schema of Kubernetes 1.30 (unknown fields are errors)."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_manifests_hold_the_namespace_daemonset_statefulset_service_and_secrets() -> None:
    """Every object the README applies is there, namespaced objects in ``capwatch``."""
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    assert {
        ("Namespace", NAMESPACE),
        ("DaemonSet", "capwatch-agent"),
        ("StatefulSet", "capwatch-collector"),
        ("Service", "capwatch-collector"),
        ("Secret", "capwatch-agent-mqtt"),
        ("Secret", "capwatch-collector-mqtt"),
        ("ConfigMap", "capwatch-mqtt-ca"),
    } <= kinds
    for _, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize(("kind", "name", "container", "cls"), DAEMONS)
def test_every_capwatch_variable_is_read_by_the_settings(
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    name: str,
    container: str,
    cls: type[CapwatchSettings],
) -> None:
    """The daemon's settings load from the manifest's env and hold each CAPWATCH_ value.

    pydantic-settings ignores a variable that names no setting, so a renamed setting would
    leave the pod running on a default without a word: here it fails.
    """
    env = _env(_container(_one(kind, name), container))
    capwatch = {k: v for k, v in env.items() if k.startswith("CAPWATCH_")}
    assert capwatch, "no CAPWATCH_ variable: the daemon would run on its defaults"
    settings = _settings(monkeypatch, cls, capwatch)
    for env_name, text in capwatch.items():
        assert _as_text(_setting(settings, env_name)) == text, env_name


@pytest.mark.parametrize(("kind", "name", "container", "cls"), DAEMONS)
def test_probes_and_ports_use_the_metrics_listen_port(
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    name: str,
    container: str,
    cls: type[CapwatchSettings],
) -> None:
    """Probes hit /healthz and /readyz on the port ``metrics_listen`` binds, on all addresses."""
    spec = _container(_one(kind, name), container)
    settings = _settings(monkeypatch, cls, _env(spec))
    listen = _setting(settings, "CAPWATCH_METRICS_LISTEN")
    host, port = parse_listen(listen, field="metrics_listen")
    assert host in ("0.0.0.0", "::"), "a probe comes from the kubelet, not from loopback"
    probes = dict(_probes(spec))
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe_kind, probe in probes.items():
        assert _port(spec, probe["httpGet"]["port"]) == port, probe_kind
        assert probe["httpGet"].get("scheme", "HTTP") == "HTTP", "no web config file: plain HTTP"


def test_collector_service_targets_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Service reaches the collector's /metrics and /sd where it listens."""
    spec = _container(_one("StatefulSet", "capwatch-collector"), "collector")
    settings = _settings(monkeypatch, CollectorSettings, _env(spec))
    _, port = parse_listen(_setting(settings, "CAPWATCH_METRICS_LISTEN"), field="metrics_listen")
    service = _one("Service", "capwatch-collector")
    (service_port,) = service["spec"]["ports"]
    assert _port(spec, service_port["targetPort"]) == port
    template_labels = _one("StatefulSet", "capwatch-collector")["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= template_labels["labels"].items()


def test_agent_spool_is_a_writable_host_directory_it_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    """spool_dir is a hostPath under /var/lib/capwatch-agent, writable, chowned to the agent."""
    daemonset = _one("DaemonSet", "capwatch-agent")
    agent = _container(daemonset, "agent")
    settings = _settings(monkeypatch, AgentSettings, _env(agent))
    assert isinstance(settings, AgentSettings)
    assert settings.spool_dir is not None, "unset: $HOME, on the read-only root filesystem"
    spool = PurePosixPath(settings.spool_dir)
    mount = _mount_of(agent, spool)
    assert not mount.get("readOnly", False)
    host_path = _volume(daemonset, mount["name"])["hostPath"]["path"]
    host_spool = PurePosixPath(host_path) / spool.relative_to(mount["mountPath"])
    assert host_spool == PurePosixPath("/var/lib/capwatch-agent") or (
        PurePosixPath("/var/lib/capwatch-agent") in host_spool.parents
    )
    # The init container makes the agent's user own that same directory.
    uid = _pod_spec(daemonset)["securityContext"]["runAsUser"]
    (init,) = _pod_spec(daemonset)["initContainers"]
    assert _mount_of(init, spool)["name"] == mount["name"]
    assert f"chown {uid}:{uid} {spool}" in " ".join(init["command"])


def test_agent_reads_the_host_proc_and_sys_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """proc_root and sysfs_root are the host's /proc and /sys, mounted read-only."""
    daemonset = _one("DaemonSet", "capwatch-agent")
    agent = _container(daemonset, "agent")
    settings = _settings(monkeypatch, AgentSettings, _env(agent))
    assert isinstance(settings, AgentSettings)
    for root, host in ((settings.proc_root, "/proc"), (settings.sysfs_root, "/sys")):
        mount = _mount_of(agent, PurePosixPath(root))
        assert mount["mountPath"] == str(root)
        assert mount["readOnly"] is True
        assert _volume(daemonset, mount["name"])["hostPath"]["path"] == host


def test_agent_node_id_and_mqtt_user_are_the_node_name() -> None:
    """Both come from spec.nodeName: the broker's ACL needs user name == node id."""
    env = _container(_one("DaemonSet", "capwatch-agent"), "agent")["env"]
    by_name = {v["name"]: v for v in env}
    for name in ("CAPWATCH_NODE_ID", "CAPWATCH_MQTT__USERNAME"):
        assert by_name[name]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", name
    assert "secretKeyRef" in by_name["CAPWATCH_MQTT__PASSWORD"]["valueFrom"]


def test_agent_runs_on_gpu_nodes_with_the_nvidia_runtime() -> None:
    """GPU nodes only, tolerating their taint; NVML through the runtime, no GPU allocated."""
    daemonset = _one("DaemonSet", "capwatch-agent")
    pod = _pod_spec(daemonset)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["hostPID"] is True
    agent = _container(daemonset, "agent")
    env = _env(agent)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    for bound in ("requests", "limits"):
        assert "nvidia.com/gpu" not in agent["resources"][bound]


def test_collector_is_one_replica_with_its_database_on_the_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One writer; db_path's directory is the volume claim, writable."""
    statefulset = _one("StatefulSet", "capwatch-collector")
    assert statefulset["spec"]["replicas"] == 1
    collector = _container(statefulset, "collector")
    settings = _settings(monkeypatch, CollectorSettings, _env(collector))
    assert isinstance(settings, CollectorSettings)
    mount = _mount_of(collector, PurePosixPath(settings.db_path))
    # SQLite writes -wal and -shm beside the database: the whole directory must be the claim.
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(settings.db_path).parent
    assert not mount.get("readOnly", False)
    claims = [c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]]
    assert mount["name"] in claims


@pytest.mark.parametrize(("kind", "name", "container", "cls"), DAEMONS)
def test_file_settings_name_files_on_read_only_volumes(
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    name: str,
    container: str,
    cls: type[CapwatchSettings],
) -> None:
    """The broker's CA file is in a mounted ConfigMap under the name the setting gives."""
    workload = _one(kind, name)
    spec = _container(workload, container)
    settings = _settings(monkeypatch, cls, _env(spec))
    ca = settings.mqtt.tls_ca_file
    assert ca is not None, "agents and collector verify the broker's certificate"
    mount = _mount_of(spec, PurePosixPath(ca))
    assert mount["readOnly"] is True
    config_map = _volume(workload, mount["name"])["configMap"]["name"]
    key = str(PurePosixPath(ca).relative_to(mount["mountPath"]))
    assert key in _one("ConfigMap", config_map)["data"]


@pytest.mark.parametrize(("kind", "name", "container", "cls"), DAEMONS)
def test_containers_run_non_root_read_only_without_capabilities(
    kind: str, name: str, container: str, cls: type[CapwatchSettings]
) -> None:
    """The daemon's container: non-root, read-only root, no capabilities, no escalation."""
    workload = _one(kind, name)
    pod = _pod_spec(workload)
    spec = _container(workload, container)
    context = spec["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert context.get("runAsNonRoot", True) is True
    assert "runAsUser" not in context, "the pod's non-root user"
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= spec["resources"].keys()
