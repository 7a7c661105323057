#!/usr/bin/env bash
# The agent's NVML path on a real NVIDIA GPU in one short command (bench/bench_nvml.py:
# inventory, NVML's raw answers, samples under load with NVLink, MIG and processes, costs).
#
#   scripts/nvml-device-check.sh prepare       # here, with network: wheels for the GPU box
#   scripts/nvml-device-check.sh run [ARGS]    # on the GPU machine; ARGS go to the bench
#
# The GPU machines lent to sessions (H100/H200 image: python3 3.12 with PyTorch,
# nvidia-ml-py and prometheus-client; no network) lack msgspec and structlog. `prepare`
# downloads them as wheels into build/device-wheels (git-ignored); carry that folder:
#   device run: command "scripts/nvml-device-check.sh run", carry ["build/device-wheels"],
#               timeout_s 300 (about a minute of work)
# On a GPU node with the project's .venv, `run` uses the .venv and needs no wheels.
# The report also goes to $OUT/nvml-check.txt when $OUT is set. PYVER picks the target
# Python of `prepare` (default 3.12).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
wheels=build/device-wheels

case "${1:-}" in
prepare)
    py="${PYTHON:-.venv/bin/python}"
    pins="$("$py" -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("msgspec", "structlog")))')"
    mkdir -p "$wheels"
    # shellcheck disable=SC2086  # two requirement words
    "$py" -m pip download --quiet --only-binary=:all: --implementation cp \
        --python-version "${PYVER:-3.12}" --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --dest "$wheels" $pins
    ls -1 "$wheels"
    ;;
run)
    shift
    py=python3
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import msgspec, structlog, pynvml' 2>/dev/null; then
        py=.venv/bin/python
    elif ! "$py" -c 'import msgspec, structlog' 2>/dev/null; then
        [[ -d "$wheels" ]] || { echo "nvml-device-check: no msgspec/structlog and no $wheels: run 'prepare' first and carry it" >&2; exit 2; }
        site="$(mktemp -d)"
        "$py" -m pip install --quiet --no-index --find-links "$wheels" --target "$site" msgspec structlog
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$py" -c 'import pynvml, prometheus_client' || { echo "nvml-device-check: $py lacks nvidia-ml-py or prometheus-client" >&2; exit 2; }
    nvidia-smi -L 2>/dev/null || true
    if [[ -n "${OUT:-}" ]]; then
        "$py" bench/bench_nvml.py "$@" 2>&1 | tee "$OUT/nvml-check.txt"
        exit "${PIPESTATUS[0]}"
    fi
    exec "$py" bench/bench_nvml.py "$@"
    ;;
*)
    echo "usage: scripts/nvml-device-check.sh prepare | run [--seconds N] [--no-load]" >&2
    exit 2
    ;;
esac
