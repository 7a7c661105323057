"""The two installs: size on disk, ``agent --help`` time, ``agent run`` first-sample time.

    .venv/bin/python bench/bench_install.py [--keep DIR]

Builds two virtualenvs from a copy of this tree with the environment's pip configuration
(the index ``scripts/bootstrap.sh`` uses): ``pip install .`` (the agent) and
``pip install '.[collector]'`` (agent and collector). Size: every file under the venv
(apparent bytes), and how much of it is the venv's own pip and setuptools. ``agent --help``:
wall time of the console script, median of 5 runs after one warm-up (page cache warm).
First sample: wall time from starting ``agent run --gpu-backend fake --fake-gpus 8`` to its
first sample arriving on a Mosquitto on a free loopback port (subscribed before the start).
Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt

from collector.localbroker import MosquittoBroker
from shared.topics import sample_topic

REPO = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "*.egg-info", "build", "__pycache__", ".*_cache", ".hypothesis", "demo-run"
)

TOOLING = ("pip", "pip-*", "setuptools", "setuptools-*", "pkg_resources", "_distutils_hack")
"""What ``python -m venv`` puts in every venv (3.11: pip and setuptools)."""


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAPWATCH_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


def build(base: Path, name: str, extra: str) -> Path:
    """A venv at ``base/name`` with this tree installed (``extra``: e.g. ``[collector]``)."""
    src = base / f"src-{name}"
    shutil.copytree(REPO, src, ignore=IGNORED)
    venv = base / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", f"{src}{extra}"],
        check=True,
        env=_env(),
    )
    shutil.rmtree(src)
    return venv


def size_mb(path: Path) -> float:
    """Apparent size of every regular file under ``path``, in MB (10^6 bytes)."""
    total = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def help_s(venv: Path) -> float:
    """Median wall time of ``agent --help`` (5 runs after a warm-up)."""
    argv = [str(venv / "bin/agent"), "--help"]
    subprocess.run(argv, check=True, capture_output=True, env=_env())
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=_env())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def first_sample_s(venv: Path, broker: MosquittoBroker) -> float:
    """Seconds from starting ``agent run`` to its first sample at the broker."""
    node = "bench-install"
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(sample_topic(node), qos=1)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            str(venv / "bin/agent"),
            "run",
            "--node-id",
            node,
            "--gpu-backend",
            "fake",
            "--fake-gpus",
            "8",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
        )
        try:
            await asyncio.wait_for(anext(aiter(client.messages)), timeout=60)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            await proc.wait()


def main() -> None:
    """Build both installs and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="build the venvs here and keep them")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="capwatch-install-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        for name, extra in (("agent", ""), ("full", "[collector]")):
            venv = build(base, name, extra)
            site = next((venv / "lib").glob("python3*/site-packages"))
            tooling = sum(size_mb(p) for g in TOOLING for p in site.glob(g))
            print(
                f"{name:6} install: venv {size_mb(venv):6.1f} MB, of which the venv's own pip "
                f"and setuptools {tooling:.1f} MB",
                flush=True,
            )
            if name == "agent":
                print(f"agent --help: {help_s(venv) * 1e3:.0f} ms (median of 5)", flush=True)
                with MosquittoBroker(base / "broker") as broker:
                    took = asyncio.run(first_sample_s(venv, broker))
                print(f"agent run: first sample at the broker after {took:.2f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
