#!/usr/bin/env bash
# Run the agent's tests against the oldest nvidia-ml-py the agent supports.
#
#   scripts/test-nvml-min.sh [pytest args...]      (default: tests/agent -q)
#
# Keeps its own venv, .venv-nvml-min (gitignored), created on first use: the project
# (editable, so the working tree is what runs), pytest, and nvidia-ml-py pinned at the floor.
# The floor is the oldest release with every pynvml name the agent reads unconditionally
# (agent/nvml.py NvmlModule, agent/fake_nvml.py); the names in agent.nvml.OPTIONAL_NVML_SYMBOLS
# may be missing. Keep NVML_FLOOR equal to the lower bound in pyproject.toml.
# NVML_FLOOR=<version> tries another release; PYTHON picks the interpreter (3.11+).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

floor="${NVML_FLOOR:-11.525.84}"
venv=.venv-nvml-min
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        { echo "test-nvml-min: $python is older than 3.11; set PYTHON" >&2; exit 2; }
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The plain install (no collector extra): the agent's tests need only what it ships.
    "$venv/bin/python" -m pip install --quiet -e . "pytest>=8" "pytest-asyncio>=0.24" "psutil>=6"
fi

installed="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("nvidia-ml-py"))')"
if [[ "$installed" != "$floor" ]]; then
    # --no-deps: only the binding changes. pip warns while pyproject's bound is above the floor.
    "$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "nvidia-ml-py==$floor"
fi
"$venv/bin/python" -c 'from importlib.metadata import version; import pynvml
print("nvidia-ml-py", version("nvidia-ml-py"), "from", pynvml.__file__)'

if [[ $# -eq 0 ]]; then
    set -- tests/agent -q
fi
exec "$venv/bin/python" -m pytest "$@"
