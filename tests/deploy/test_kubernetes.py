"""capwatch's Kubernetes objects: valid for a pinned Kubernetes API, and in step with
capwatch's settings.

Each check runs on the plain manifests committed in deploy/kubernetes and on the Helm chart
rendered with its ``ci/`` values files (a PostgreSQL share group, a web config): what the
chart produces for any of them must hold the same facts. Offline: the API check is
kubernetes-validate's bundled OpenAPI schemas (strict: an unknown or misspelled field is an
error, as ``kubectl apply --validate=strict`` makes it), and the rest reads the YAML. No
cluster, no kubectl.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final

import kubernetes_validate
import pytest
from pydantic import SecretStr

from agent.settings import AgentSettings
from collector.settings import CollectorSettings
from shared.metrics_http import parse_listen
from shared.settings import CapwatchSettings, load_settings
from tests.deploy.helm import KUBERNETES_VERSION, NAMESPACE
from tests.deploy.manifests import (
    PLAIN,
    RENDERINGS,
    Doc,
    Manifests,
    container,
    manifests,
    pod_spec,
)

SQLITE: Final = tuple(r for r in RENDERINGS if r != "postgresql-share-group")
"""The renderings with one collector on SQLite."""
SHARE_GROUP: Final = "postgresql-share-group"


@pytest.fixture(params=RENDERINGS)
def rendered(request: pytest.FixtureRequest) -> Manifests:
    """Each rendering in turn."""
    return manifests(request.param)


@pytest.fixture(params=SQLITE)
def rendered_sqlite(request: pytest.FixtureRequest) -> Manifests:
    """The renderings with the SQLite store."""
    return manifests(request.param)


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


def _holds(value: Any, text: str) -> bool:
    """Whether the setting's value is what the variable's text says."""
    if isinstance(value, SecretStr):
        return value.get_secret_value() == text
    if isinstance(value, bool):
        return str(value).lower() == text
    if isinstance(value, int | float):
        return value == float(text)  # "2" is 2.0 for a float setting
    return str(value) == text


def _mount_of(spec: Doc, path: PurePosixPath) -> Doc:
    """The volume mount whose mountPath is ``path`` or holds it."""
    mounts = [
        m
        for m in spec.get("volumeMounts", [])
        if path == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in path.parents
    ]
    assert mounts, f"{path} is on no volume of container {spec['name']!r}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def _volume(workload: Doc, name: str) -> Doc:
    volumes: list[Doc] = pod_spec(workload).get("volumes", [])
    (volume,) = [v for v in volumes if v["name"] == name]
    return volume


def _port(spec: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec["ports"] if p.get("name") == port]
    assert isinstance(number, int)
    return number


def _probes(spec: Doc) -> Iterator[tuple[str, Doc]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in spec:
            yield kind, spec[kind]


@dataclass(frozen=True)
class Daemon:
    """A daemon's workload, its container and its settings class."""

    kind: str
    name: str
    container: str
    settings: type[CapwatchSettings]

    def workload(self, rendered: Manifests) -> Doc:
        """Its DaemonSet or StatefulSet in ``rendered``."""
        return rendered.one(self.kind, self.name)

    def load(
        self, monkeypatch: pytest.MonkeyPatch, rendered: Manifests
    ) -> tuple[Doc, Doc, CapwatchSettings]:
        """Its workload, its container, and its settings as they load in its first pod."""
        workload = self.workload(rendered)
        env = rendered.env(workload, self.container)
        return (
            workload,
            container(workload, self.container),
            _settings(monkeypatch, self.settings, env),
        )


AGENT: Final = Daemon("DaemonSet", "capwatch-agent", "agent", AgentSettings)
COLLECTOR: Final = Daemon("StatefulSet", "capwatch-collector", "collector", CollectorSettings)
DAEMONS: Final = [pytest.param(AGENT, id="agent"), pytest.param(COLLECTOR, id="collector")]


def test_every_object_is_valid_for_the_pinned_kubernetes_api(rendered: Manifests) -> None:
    """Each object passes the strict schema of the oldest Kubernetes the chart supports
    (unknown fields are errors)."""
    assert rendered.docs
    for doc in rendered.docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{rendered.source}: {name}: {exc.message} at {list(exc.path)}")


def test_manifests_hold_the_namespace_daemonset_statefulset_service_and_secrets() -> None:
    """Every object deploy/kubernetes/README.md applies is there, in namespace ``capwatch``."""
    plain = manifests(PLAIN)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in plain.docs}
    assert {
        ("Namespace", NAMESPACE),
        ("DaemonSet", "capwatch-agent"),
        ("StatefulSet", "capwatch-collector"),
        ("Service", "capwatch-collector"),
        ("Secret", "capwatch-agent-mqtt"),
        ("Secret", "capwatch-collector-mqtt"),
        ("ConfigMap", "capwatch-mqtt-ca"),
    } <= kinds


def test_objects_are_in_the_namespace_and_what_they_use_is_there(rendered: Manifests) -> None:
    """Namespaced objects are in ``capwatch``; every Secret and ConfigMap a pod reads is one
    of the rendering's own (these values create them all)."""
    for doc in rendered.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    for workload in (d for d in rendered.docs if d["kind"] in ("DaemonSet", "StatefulSet")):
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            rendered.env(workload, c["name"])  # every secretKeyRef resolves
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                rendered.one("ConfigMap", volume["configMap"]["name"])
            elif "secret" in volume and volume["name"] != "web-config":
                # The web config's Secret is always the site's (certificates, hashes).
                secret = volume["secret"]["secretName"]
                for item in volume["secret"].get("items", []):
                    rendered.secret_value(secret, item["key"])


@pytest.mark.parametrize("daemon", DAEMONS)
def test_every_capwatch_variable_is_read_by_the_settings(
    monkeypatch: pytest.MonkeyPatch,
    rendered: Manifests,
    daemon: Daemon,
) -> None:
    """The daemon's settings load from the pod's env and hold each CAPWATCH_ value.

    pydantic-settings ignores a variable that names no setting, so a renamed setting would
    leave the pod running on a default without a word: here it fails.
    """
    env = rendered.env(daemon.workload(rendered), daemon.container)
    capwatch = {k: v for k, v in env.items() if k.startswith("CAPWATCH_")}
    assert capwatch, "no CAPWATCH_ variable: the daemon would run on its defaults"
    settings = _settings(monkeypatch, daemon.settings, capwatch)
    for env_name, text in capwatch.items():
        assert _holds(_setting(settings, env_name), text), env_name


@pytest.mark.parametrize("daemon", DAEMONS)
def test_probes_and_ports_use_the_metrics_listen_port(
    monkeypatch: pytest.MonkeyPatch,
    rendered: Manifests,
    daemon: Daemon,
) -> None:
    """Probes reach the port ``metrics_listen`` binds, on all addresses: /healthz for
    liveness and start-up, /readyz for readiness; plain HTTP without a web config file."""
    _, spec, settings = daemon.load(monkeypatch, rendered)
    host, port = parse_listen(_setting(settings, "CAPWATCH_METRICS_LISTEN"), field="metrics_listen")
    assert host in ("0.0.0.0", "::"), "a probe comes from the kubelet, not from loopback"
    probes = dict(_probes(spec))
    assert {"livenessProbe", "readinessProbe"} <= probes.keys()
    for probe_kind, probe in probes.items():
        target = probe.get("httpGet") or probe["tcpSocket"]
        assert _port(spec, target["port"]) == port, probe_kind
        if "httpGet" in probe:
            path = "/readyz" if probe_kind == "readinessProbe" else "/healthz"
            assert target["path"] == path, probe_kind
        if _setting(settings, "CAPWATCH_WEB_CONFIG_FILE") is None:
            assert target.get("scheme", "HTTP") == "HTTP", "no web config file: plain HTTP"
            assert "httpGet" in probe, f"{probe_kind}: plain HTTP can be probed for real"


def test_collector_service_targets_the_metrics_port(
    monkeypatch: pytest.MonkeyPatch, rendered: Manifests
) -> None:
    """The Service reaches the collector's /metrics and /sd where it listens."""
    statefulset, spec, settings = COLLECTOR.load(monkeypatch, rendered)
    _, port = parse_listen(_setting(settings, "CAPWATCH_METRICS_LISTEN"), field="metrics_listen")
    service = rendered.one("Service", "capwatch-collector")
    (service_port,) = service["spec"]["ports"]
    assert _port(spec, service_port["targetPort"]) == port
    template_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_agent_spool_is_a_writable_host_directory_it_owns(
    monkeypatch: pytest.MonkeyPatch, rendered: Manifests
) -> None:
    """spool_dir is a hostPath under /var/lib/capwatch-agent, writable, chowned to the agent."""
    daemonset, agent, settings = AGENT.load(monkeypatch, rendered)
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
    uid = pod_spec(daemonset)["securityContext"]["runAsUser"]
    (init,) = pod_spec(daemonset)["initContainers"]
    assert _mount_of(init, spool)["name"] == mount["name"]
    assert f"chown {uid}:{uid} {spool}" in " ".join(init["command"])


def test_agent_reads_the_host_proc_and_sys_read_only(
    monkeypatch: pytest.MonkeyPatch, rendered: Manifests
) -> None:
    """proc_root and sysfs_root are the host's /proc and /sys, mounted read-only."""
    daemonset, agent, settings = AGENT.load(monkeypatch, rendered)
    assert isinstance(settings, AgentSettings)
    for root, host in ((settings.proc_root, "/proc"), (settings.sysfs_root, "/sys")):
        mount = _mount_of(agent, PurePosixPath(root))
        assert mount["mountPath"] == str(root)
        assert mount["readOnly"] is True
        assert _volume(daemonset, mount["name"])["hostPath"]["path"] == host


def test_agent_node_id_and_mqtt_user_are_the_node_name(rendered: Manifests) -> None:
    """Both come from spec.nodeName: the broker's ACL needs user name == node id."""
    env = container(rendered.one("DaemonSet", "capwatch-agent"), "agent")["env"]
    by_name = {v["name"]: v for v in env}
    for name in ("CAPWATCH_NODE_ID", "CAPWATCH_MQTT__USERNAME"):
        assert by_name[name]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", name
    assert "secretKeyRef" in by_name["CAPWATCH_MQTT__PASSWORD"]["valueFrom"]


def test_agent_runs_on_gpu_nodes_with_the_nvidia_runtime(rendered: Manifests) -> None:
    """GPU nodes only, tolerating their taint; NVML through the runtime, no GPU allocated."""
    daemonset = rendered.one("DaemonSet", "capwatch-agent")
    pod = pod_spec(daemonset)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["hostPID"] is True
    agent = container(daemonset, "agent")
    env = rendered.env(daemonset, "agent")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    for bound in ("requests", "limits"):
        assert "nvidia.com/gpu" not in agent["resources"][bound]


def test_collector_is_one_replica_with_its_database_on_the_claim(
    monkeypatch: pytest.MonkeyPatch, rendered_sqlite: Manifests
) -> None:
    """On SQLite: one writer; db_path's directory is the volume claim, writable."""
    statefulset, collector, settings = COLLECTOR.load(monkeypatch, rendered_sqlite)
    assert statefulset["spec"]["replicas"] == 1
    assert isinstance(settings, CollectorSettings)
    assert settings.store.url is None
    assert settings.mqtt.share_group is None
    mount = _mount_of(collector, PurePosixPath(settings.db_path))
    # SQLite writes -wal and -shm beside the database: the whole directory must be the claim.
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(settings.db_path).parent
    assert not mount.get("readOnly", False)
    claims = [c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]]
    assert mount["name"] in claims


def test_share_group_members_have_their_own_sessions_and_one_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several collectors: each its own MQTT user, client id, live-feed user and instance
    (its pod name), all in one share group, storing into and electing through one
    PostgreSQL database; no volume claim."""
    rendered = manifests(SHARE_GROUP)
    statefulset = rendered.one("StatefulSet", "capwatch-collector")
    replicas = statefulset["spec"]["replicas"]
    assert replicas > 1
    assert "volumeClaimTemplates" not in statefulset["spec"]
    members: list[CollectorSettings] = []
    for ordinal in range(replicas):
        env = rendered.env(statefulset, "collector", ordinal)
        settings = _settings(monkeypatch, CollectorSettings, env)
        assert isinstance(settings, CollectorSettings)
        pod = rendered.pod_name(statefulset, ordinal)
        assert settings.mqtt.username == settings.session_client_id == pod
        assert settings.instance == pod
        assert settings.mqtt.live_username == f"{pod}-live"
        members.append(settings)
    assert len({m.session_client_id for m in members}) == replicas
    assert len({m.mqtt.share_group for m in members}) == 1
    assert members[0].mqtt.share_group is not None
    urls = {m.election_url() for m in members}
    assert len(urls) == 1
    assert next(iter(urls)) == members[0].store.url is not None
    assert members[0].store.url.startswith("postgresql://")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_file_settings_name_files_on_read_only_volumes(
    monkeypatch: pytest.MonkeyPatch,
    rendered: Manifests,
    daemon: Daemon,
) -> None:
    """Every file a setting names (the broker's CA, the web config, the database password)
    is in a mounted ConfigMap or Secret, read-only, under the name the setting gives; the
    broker is always reached over TLS."""
    workload, spec, settings = daemon.load(monkeypatch, rendered)
    assert settings.mqtt.tls_enabled, "agents and collector verify the broker's certificate"
    files = [settings.mqtt.tls_ca_file, _setting(settings, "CAPWATCH_WEB_CONFIG_FILE")]
    if isinstance(settings, CollectorSettings):
        files.append(settings.store.password_file)
    assert any(f is not None for f in files)
    for path in (PurePosixPath(f) for f in files if f is not None):
        mount = _mount_of(spec, path)
        assert mount["readOnly"] is True, path
        volume = _volume(workload, mount["name"])
        key = str(path.relative_to(mount["mountPath"]))
        if "configMap" in volume:
            assert key in rendered.one("ConfigMap", volume["configMap"]["name"])["data"]
        else:
            items = volume["secret"].get("items")
            assert items is None or key in [i["path"] for i in items], path
            # A secret: not for others; for the daemon through the pod's fsGroup.
            assert volume["secret"]["defaultMode"] & 0o077 == 0o040, path
            assert pod_spec(workload)["securityContext"].get("fsGroup") is not None


@pytest.mark.parametrize("daemon", DAEMONS)
def test_containers_run_non_root_read_only_without_capabilities(
    rendered: Manifests, daemon: Daemon
) -> None:
    """The daemon's container: non-root, read-only root, no capabilities, no escalation."""
    workload = daemon.workload(rendered)
    pod = pod_spec(workload)
    spec = container(workload, daemon.container)
    context = spec["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert context.get("runAsNonRoot", True) is True
    assert "runAsUser" not in context, "the pod's non-root user"
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= spec["resources"].keys()
