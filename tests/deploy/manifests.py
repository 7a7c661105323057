"""capwatch's Kubernetes objects as the tests read them: the plain manifests committed in
deploy/kubernetes, or the Helm chart rendered with one of its ``ci/`` values files.

:class:`Manifests` answers what the kubelet would: an object by kind and name, a Secret's
value, a container's environment as the pod would see it (downward API, Secrets, ``$(VAR)``
references).
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from tests.deploy.helm import CI_VALUES, ROOT, render

__all__ = [
    "MANIFESTS",
    "NODE_NAME",
    "PLAIN",
    "RENDERINGS",
    "Doc",
    "Manifests",
    "container",
    "manifests",
    "pod_spec",
]

Doc = dict[str, Any]

MANIFESTS: Final = ROOT / "deploy" / "kubernetes"
PLAIN: Final = "plain"
"""The committed deploy/kubernetes/*.yaml (no helm needed to read them)."""
RENDERINGS: Final = (PLAIN, "postgresql-share-group", "web-config")
"""What the tests check: the plain manifests, and the chart with each of these values files
(deploy/helm/capwatch/ci/NAME-values.yaml)."""
NODE_NAME: Final = "gpu-node-017"
"""What the downward API's ``spec.nodeName`` gives in these tests."""

_VAR_REF: Final = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_spec(workload: Doc) -> Doc:
    """A workload's pod template's spec."""
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Doc, name: str) -> Doc:
    """The container (or init container) ``name`` of a workload's pods."""
    spec = pod_spec(workload)
    containers: list[Doc] = spec.get("initContainers", []) + spec["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def _expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` as the kubelet expands it in an env value: a variable defined earlier in the
    container, else left as written; ``$$`` is one ``$`` (EnvVar.value in the Kubernetes API
    reference)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_REF.sub(one, value)


@dataclass(frozen=True)
class Manifests:
    """The objects of one rendering; ``source`` names it in failures."""

    source: str
    docs: tuple[Doc, ...]

    def one(self, kind: str, name: str) -> Doc:
        """The one object of ``kind`` named ``name``."""
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name} in {self.source}, found {len(found)}"
        return found[0]

    def secret_value(self, name: str, key: str) -> str:
        """A key of a Secret of this rendering, as the pod reads it."""
        secret = self.one("Secret", name)
        if key in secret.get("stringData", {}):
            value: str = secret["stringData"][key]
            return value
        return base64.b64decode(secret["data"][key]).decode()

    def pod_name(self, workload: Doc, ordinal: int = 0) -> str:
        """The name of a pod of ``workload``: a StatefulSet's ``<name>-<ordinal>``."""
        name: str = workload["metadata"]["name"]
        if workload["kind"] == "StatefulSet":
            return f"{name}-{ordinal}"
        return f"{name}-x7k2p"

    def env(self, workload: Doc, name: str, ordinal: int = 0) -> dict[str, str]:
        """Container ``name``'s variables as the kubelet sets them in pod ``ordinal`` (a
        StatefulSet's) on node :data:`NODE_NAME`."""
        fields = {"spec.nodeName": NODE_NAME, "metadata.name": self.pod_name(workload, ordinal)}
        out: dict[str, str] = {}
        for var in container(workload, name).get("env", []):
            if "value" in var:
                out[var["name"]] = _expand(var["value"], out)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                assert path in fields, f"{var['name']}: fieldPath {path} is not simulated here"
                out[var["name"]] = fields[path]
            else:
                ref = source["secretKeyRef"]
                out[var["name"]] = self.secret_value(ref["name"], ref["key"])
        return out


def _committed() -> list[Doc]:
    out: list[Doc] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def ci_values(name: str) -> Path:
    """The chart's values file ``ci/NAME-values.yaml``."""
    return CI_VALUES / f"{name}-values.yaml"


@functools.cache
def manifests(name: str) -> Manifests:
    """The rendering ``name`` of :data:`RENDERINGS` (the chart's skip the test without helm)."""
    if name == PLAIN:
        return Manifests("deploy/kubernetes", tuple(_committed()))
    return Manifests(f"the chart with ci/{name}-values.yaml", tuple(render(ci_values(name))))
